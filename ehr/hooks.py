"""The hooks this EHR fires and their contexts (CDS Hooks 2.0 §Hooks; the hook definitions at
cds-hooks.org/hooks), validated before anything is sent to a CDS Service.

Context identifiers follow the hook definitions exactly: `patientId` and `encounterId` are
*logical ids* (`123`, never `Patient/123`), `userId` is a relative reference whose type says who
the user is (Practitioner, PractitionerRole, Patient, RelatedPerson), `selections` and
`dispatchedOrders` are relative references. FHIR resources carried in the context (draftOrders,
appointments, fulfillmentTasks) are checked with fhir.resources' R4B models, plus the required
`status` binding of the order types (fhir.resources does not check code bindings), and must be
about the patient in context (a `subject`/`patient`/`for` or an Appointment participant naming
another Patient is refused).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

# FHIR R4 datatypes §id: [A-Za-z0-9\-\.]{1,64}.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
USER_TYPES = ("Practitioner", "PractitionerRole", "Patient", "RelatedPerson")
# Resources and references one context may carry: each resource is validated with the R4B models
# (CPU on the event loop), so an unbounded Bundle would let one caller stall the EHR.
MAX_CONTEXT_ITEMS = 100

# Required bindings of `status` on the request resources a draft order can be (FHIR R4 value sets
# request-status / medicationrequest-status), which the pydantic models do not enforce.
_REQUEST_STATUS = frozenset({"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"})
ORDER_STATUS: dict[str, frozenset[str]] = {
    "MedicationRequest": frozenset(
        {"active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"}
    ),
    "ServiceRequest": _REQUEST_STATUS,
    "DeviceRequest": _REQUEST_STATUS,
    "CommunicationRequest": _REQUEST_STATUS,
    "NutritionOrder": frozenset({"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}),
    "VisionPrescription": frozenset({"active", "cancelled", "draft", "entered-in-error"}),
    "ImmunizationRecommendation": frozenset(),  # no status element
}


class HookContextError(ValueError):
    """The context does not satisfy the hook's definition; `reason` says which rule failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _fhir_id(value: str) -> str:
    if "/" in value:
        raise ValueError(f"must be a logical id, not a reference ({value!r})")
    if not FHIR_ID.fullmatch(value):
        raise ValueError(f"is not a FHIR id ({value!r})")
    return value


def _reference(value: str) -> str:
    kind, _, ident = value.partition("/")
    if not RESOURCE_TYPE.fullmatch(kind) or not FHIR_ID.fullmatch(ident):
        raise ValueError(f"must be a relative reference Type/id ({value!r})")
    return value


def _user_reference(value: str) -> str:
    _reference(value)
    if value.partition("/")[0] not in USER_TYPES:
        raise ValueError(f"must reference a {', '.join(USER_TYPES)} ({value!r})")
    return value


FhirId = Annotated[str, AfterValidator(_fhir_id)]
Reference = Annotated[str, AfterValidator(_reference)]
UserReference = Annotated[str, AfterValidator(_user_reference)]


def check_resource(resource: Any, where: str) -> dict[str, Any]:
    """A FHIR R4 resource (R4B models) with the required order status bindings."""
    from fhir.resources.R4B import get_fhir_model_class

    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise ValueError(f"{where} is not a FHIR resource")
    kind = resource["resourceType"]
    try:
        model = get_fhir_model_class(kind)
    except KeyError:
        raise ValueError(f"{where}: unknown resourceType {kind!r}") from None
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where} ({kind}) is not valid FHIR R4: {path}: {first['msg']}") from None
    allowed = ORDER_STATUS.get(kind)
    if allowed and resource.get("status") not in allowed:
        raise ValueError(f"{where} ({kind}) has a status outside its required value set: {resource.get('status')!r}")
    return resource


def check_bundle(bundle: Any, where: str, *, entry_types: frozenset[str] | None = None) -> dict[str, Any]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ValueError(f"{where} must be a FHIR Bundle")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise ValueError(f"{where}.entry must be an array")
    if len(entries) > MAX_CONTEXT_ITEMS:
        raise ValueError(f"{where} has more than {MAX_CONTEXT_ITEMS} entries")
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        checked = check_resource(resource, f"{where}.entry[{i}].resource")
        if entry_types is not None and checked["resourceType"] not in entry_types:
            expected = "an Appointment" if entry_types == APPOINTMENT_TYPES else "an order"
            raise ValueError(f"{where}.entry[{i}] is a {checked['resourceType']}, not {expected}")
    check_resource({k: v for k, v in bundle.items() if k != "entry"}, where)
    return bundle


def _patient_references(resource: dict[str, Any]) -> list[str]:
    """The Patient references a resource of a hook's context makes about whom it is for:
    `subject`/`patient` (orders, Task `for`), and an Appointment's participant actors."""
    refs: list[Any] = [resource.get(k) for k in ("subject", "patient", "for")]
    if resource.get("resourceType") == "Appointment":
        refs += [p.get("actor") for p in resource.get("participant") or [] if isinstance(p, dict)]
    found = [r.get("reference") for r in refs if isinstance(r, dict)]
    return [r for r in found if isinstance(r, str) and r.startswith("Patient/")]


def check_same_patient(resources: list[Any], patient_id: str, where: str) -> None:
    """Every resource in the context is about the patient in context: an order (or appointment,
    or task) for another patient would have the service reason about the wrong person."""
    for i, resource in enumerate(resources):
        if not isinstance(resource, dict):
            continue
        others = sorted({r for r in _patient_references(resource) if r != f"Patient/{patient_id}"})
        if others:
            raise ValueError(f"{where}[{i}] is for {others[0]}, not the patient in context")


def _entries(bundle: dict[str, Any]) -> list[Any]:
    return [e.get("resource") for e in bundle.get("entry", []) if isinstance(e, dict)]


def bundle_references(bundle: dict[str, Any]) -> set[str]:
    refs: set[str] = set()
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        if isinstance(resource.get("id"), str):
            refs.add(f"{resource['resourceType']}/{resource['id']}")
    return refs


ORDER_TYPES = frozenset(ORDER_STATUS)
APPOINTMENT_TYPES = frozenset({"Appointment"})


class HookContext(BaseModel):
    """Base of the context models: unknown fields are refused, nothing is coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    has_user: ClassVar[bool] = True


class PatientViewContext(HookContext):
    """patient-view 2.0: the user opened a patient's record."""

    userId: UserReference
    patientId: FhirId
    encounterId: FhirId | None = None


class OrderSelectContext(HookContext):
    """order-select 2.0: `selections` reference orders inside `draftOrders`."""

    userId: UserReference
    patientId: FhirId
    encounterId: FhirId | None = None
    selections: list[Reference] = Field(min_length=1, max_length=MAX_CONTEXT_ITEMS)
    draftOrders: dict[str, Any]

    @model_validator(mode="after")
    def _check(self) -> OrderSelectContext:
        check_bundle(self.draftOrders, "draftOrders", entry_types=ORDER_TYPES)
        check_same_patient(_entries(self.draftOrders), self.patientId, "draftOrders.entry")
        missing = set(self.selections) - bundle_references(self.draftOrders)
        if missing:
            raise ValueError(f"selections not found in draftOrders: {sorted(missing)}")
        return self


class OrderSignContext(HookContext):
    """order-sign 2.0: orders about to be signed."""

    userId: UserReference
    patientId: FhirId
    encounterId: FhirId | None = None
    draftOrders: dict[str, Any]

    @model_validator(mode="after")
    def _check(self) -> OrderSignContext:
        check_bundle(self.draftOrders, "draftOrders", entry_types=ORDER_TYPES)
        check_same_patient(_entries(self.draftOrders), self.patientId, "draftOrders.entry")
        return self


class OrderDispatchContext(HookContext):
    """order-dispatch 1.0: orders handed to a performer (no userId in this hook)."""

    has_user: ClassVar[bool] = False
    patientId: FhirId
    dispatchedOrders: list[Reference] = Field(min_length=1, max_length=MAX_CONTEXT_ITEMS)
    performer: Reference
    fulfillmentTasks: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_CONTEXT_ITEMS)

    @model_validator(mode="after")
    def _check(self) -> OrderDispatchContext:
        for i, task in enumerate(self.fulfillmentTasks or []):
            check_resource(task, f"fulfillmentTasks[{i}]")
            if task["resourceType"] != "Task":
                raise ValueError(f"fulfillmentTasks[{i}] is not a Task")
        check_same_patient(list(self.fulfillmentTasks or []), self.patientId, "fulfillmentTasks")
        return self


class EncounterContext(HookContext):
    """encounter-start / encounter-discharge 1.0: encounterId is required."""

    userId: UserReference
    patientId: FhirId
    encounterId: FhirId


class AppointmentBookContext(HookContext):
    """appointment-book 1.0: `appointments` is a Bundle of Appointment resources."""

    userId: UserReference
    patientId: FhirId
    encounterId: FhirId | None = None
    appointments: dict[str, Any]

    @model_validator(mode="after")
    def _check(self) -> AppointmentBookContext:
        check_bundle(self.appointments, "appointments", entry_types=APPOINTMENT_TYPES)
        check_same_patient(_entries(self.appointments), self.patientId, "appointments.entry")
        return self


HOOKS: dict[str, type[HookContext]] = {
    "patient-view": PatientViewContext,
    "order-select": OrderSelectContext,
    "order-sign": OrderSignContext,
    "order-dispatch": OrderDispatchContext,
    "encounter-start": EncounterContext,
    "encounter-discharge": EncounterContext,
    "appointment-book": AppointmentBookContext,
}


def _first_error(exc: ValidationError, prefix: str) -> str:
    first = exc.errors()[0]
    where = ".".join([prefix, *(str(p) for p in first["loc"])])
    message = str(first["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return f"{where}: {message}"


def validate_context(hook: str, context: Any) -> dict[str, Any]:
    """The context for `hook`, checked against its definition (HookContextError otherwise).

    Returns the context as it will be sent: absent optional fields omitted, never null.
    """
    model = HOOKS.get(hook)
    if model is None:
        raise HookContextError(f"hook {hook!r} is not one this EHR fires")
    if not isinstance(context, dict):
        raise HookContextError("context must be a JSON object")
    try:
        parsed = model.model_validate(context)
    except ValidationError as exc:
        raise HookContextError(_first_error(exc, "context")) from None
    return parsed.model_dump(exclude_none=True)


def hook_has_user(hook: str) -> bool:
    model = HOOKS.get(hook)
    return model is None or model.has_user
