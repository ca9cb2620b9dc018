"""ehr.hooks and ehr.cds_request: hook contexts and the request body, against the CDS Hooks samples.

Each -bad sample breaks several rules; the tests repair them one at a time and assert that the
next rule then names the next defect, so every defect is shown to be caught on its own.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from ehr.cds_request import CdsRequestError, parse_request
from ehr.hooks import HOOKS, HookContextError, validate_context


def load(fixtures_dir: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((fixtures_dir / "cds-hooks" / name).read_text())
    return data


def unwrap_prefetch(request: dict[str, Any]) -> None:
    for key, value in request["prefetch"].items():
        if isinstance(value, dict) and "resource" in value:
            request["prefetch"][key] = value["resource"]


def reason(request: dict[str, Any], *, outbound: bool = False) -> str:
    with pytest.raises(CdsRequestError) as caught:
        parse_request(request, outbound=outbound)
    return caught.value.reason


@pytest.mark.parametrize(
    "name",
    [
        "cdshooks-request-patient-view-good.json",
        "cdshooks-request-order-select-good.json",
        "cdshooks-request-order-sign-good.json",
        "cdshooks-request-pv-good.json",
    ],
)
def test_the_good_request_samples_are_accepted(fixtures_dir: Path, name: str) -> None:
    sample = load(fixtures_dir, name)
    parsed = parse_request(sample)
    assert parsed.hook == sample["hook"]
    assert parsed.context == sample["context"]


def test_patient_view_bad_wraps_prefetch_in_bundle_entries_and_uses_references_as_ids(fixtures_dir: Path) -> None:
    bad = load(fixtures_dir, "cdshooks-request-patient-view-bad.json")
    assert reason(bad) == "prefetch: prefetch['item1'] must be a FHIR resource or null (a Bundle entry)"
    unwrap_prefetch(bad)
    assert reason(bad).startswith("context.patientId: must be a logical id, not a reference ('Patient/")
    bad["context"]["patientId"] = bad["context"]["patientId"].removeprefix("Patient/")
    assert reason(bad).startswith("context.encounterId: must be a logical id, not a reference ('Encounter/")
    bad["context"]["encounterId"] = bad["context"]["encounterId"].removeprefix("Encounter/")
    assert parse_request(bad).context["patientId"] == "example-rec-04-not-long-acting-opioid"


def test_order_select_bad_has_selections_that_are_not_references_to_draft_orders(fixtures_dir: Path) -> None:
    bad = load(fixtures_dir, "cdshooks-request-order-select-bad.json")
    assert reason(bad) == "prefetch: prefetch['item1'] must be a FHIR resource or null (a Bundle entry)"
    unwrap_prefetch(bad)
    bad["context"]["patientId"] = bad["context"]["patientId"].removeprefix("Patient/")
    bad["context"]["encounterId"] = bad["context"]["encounterId"].removeprefix("Encounter/")
    assert reason(bad) == (
        "context.selections.0: must be a relative reference Type/id "
        "('example-rec-11-benzo-trigger-without-opioid-context')"
    )
    bad["context"]["selections"] = ["MedicationRequest/not-in-the-bundle"]
    assert reason(bad) == "context: selections not found in draftOrders: ['MedicationRequest/not-in-the-bundle']"
    bad["context"]["selections"] = ["MedicationRequest/example-rec-11-benzo-trigger-without-opioid-context"]
    assert parse_request(bad).hook == "order-select"


def test_order_sign_bad_1_has_an_invalid_order_status_and_a_reference_as_patient_id(fixtures_dir: Path) -> None:
    bad = load(fixtures_dir, "cdshooks-request-order-sign-bad-1.json")
    assert reason(bad).startswith("context.patientId: must be a logical id, not a reference")
    bad["context"]["patientId"] = bad["context"]["patientId"].removeprefix("Patient/")
    assert reason(bad) == (
        "context: draftOrders.entry[0].resource (MedicationRequest) has a status outside its required value set: "
        "'Xactive'"
    )
    bad["context"]["draftOrders"]["entry"][0]["resource"]["status"] = "active"
    assert parse_request(bad).hook == "order-sign"


def test_order_sign_bad_2_wraps_prefetch_in_bundle_entries(fixtures_dir: Path) -> None:
    bad = load(fixtures_dir, "cdshooks-request-order-sign-bad-2.json")
    assert reason(bad) == "prefetch: prefetch['item1'] must be a FHIR resource or null (a Bundle entry)"
    unwrap_prefetch(bad)
    assert reason(bad).startswith("context.patientId: must be a logical id, not a reference")


def test_an_order_select_without_draft_orders_is_refused(fixtures_dir: Path) -> None:
    sample = load(fixtures_dir, "cdshooks-request-order-select-extensions.json")
    assert reason(sample) == "context.draftOrders: Field required"


def test_a_draft_order_that_is_not_valid_fhir_is_refused(fixtures_dir: Path) -> None:
    good = load(fixtures_dir, "cdshooks-request-order-sign-good.json")
    bad = copy.deepcopy(good)
    bad["context"]["draftOrders"]["entry"][0]["resource"]["authoredOn"] = "yesterday"
    assert "draftOrders.entry[0].resource (MedicationRequest) is not valid FHIR R4: authoredOn" in reason(bad)
    not_an_order = copy.deepcopy(good)
    not_an_order["context"]["draftOrders"]["entry"][0]["resource"] = {"resourceType": "Patient", "id": "p"}
    assert reason(not_an_order) == "context: draftOrders.entry[0] is a Patient, not an order"


def test_a_token_without_fhir_server_is_refused_and_outbound_it_must_be_https(fixtures_dir: Path) -> None:
    sample = load(fixtures_dir, "cdshooks-request-pv-good.json")
    assert reason(sample, outbound=True) == "fhirServer must be https when fhirAuthorization is sent"
    no_server = {k: v for k, v in sample.items() if k != "fhirServer"}
    assert reason(no_server) == "fhirServer is required when fhirAuthorization is sent"
    sample["fhirServer"] = "https://fhir.example.org/fhir"
    assert parse_request(sample, outbound=True).fhirServer == "https://fhir.example.org/fhir"


def test_fhir_authorization_must_be_complete_and_bearer(fixtures_dir: Path) -> None:
    sample = load(fixtures_dir, "cdshooks-request-pv-good.json")
    for field in ("access_token", "token_type", "expires_in", "scope", "subject"):
        broken = copy.deepcopy(sample)
        del broken["fhirAuthorization"][field]
        assert reason(broken) == f"fhirAuthorization.{field}: Field required"
    mac = copy.deepcopy(sample)
    mac["fhirAuthorization"]["token_type"] = "MAC"
    assert reason(mac).startswith("fhirAuthorization.token_type: Input should be 'Bearer'")
    patient_scope = copy.deepcopy(sample)
    patient_scope["fhirAuthorization"]["scope"] = "patient/Patient.read"
    assert reason(patient_scope) == (
        "fhirAuthorization: fhirAuthorization.patient is required when patient/ scopes are granted"
    )


def test_hook_instance_must_be_a_uuid_and_null_optional_fields_are_refused(fixtures_dir: Path) -> None:
    sample = load(fixtures_dir, "cdshooks-request-patient-view-good.json")
    fixed = copy.deepcopy(sample)
    fixed["hookInstance"] = "1"
    assert reason(fixed) == "hookInstance: hookInstance must be a UUID"
    unknown = copy.deepcopy(sample)
    unknown["hook"] = "patient-delete"
    assert reason(unknown) == "hook 'patient-delete' is not one this EHR fires"
    extra = copy.deepcopy(sample)
    extra["context"]["sqlQuery"] = "select 1"
    assert reason(extra) == "context.sqlQuery: Extra inputs are not permitted"


@pytest.mark.parametrize(
    ("hook", "context", "expected"),
    [
        ("patient-view", {"userId": "Device/1", "patientId": "p"}, "context.userId: must reference a Practitioner"),
        ("patient-view", {"userId": "Practitioner/1", "patientId": "../x"}, "context.patientId: must be a logical id"),
        ("patient-view", {"userId": "Practitioner/1", "patientId": "1&_id=2"}, "context.patientId: is not a FHIR id"),
        ("patient-view", {"patientId": "p"}, "context.userId: Field required"),
        ("encounter-start", {"userId": "Practitioner/1", "patientId": "p"}, "context.encounterId: Field required"),
        ("encounter-discharge", {"userId": "Practitioner/1", "patientId": "p"}, "context.encounterId: Field required"),
        (
            "order-dispatch",
            {
                "patientId": "p",
                "dispatchedOrders": ["ServiceRequest/1"],
                "performer": "Organization/o",
                "fulfillmentTasks": [{"resourceType": "Patient"}],
            },
            "context: fulfillmentTasks[0] is not a Task",
        ),
        (
            "appointment-book",
            {
                "userId": "Practitioner/1",
                "patientId": "p",
                "appointments": {
                    "resourceType": "Bundle",
                    "type": "collection",
                    "entry": [{"resource": {"resourceType": "Patient", "id": "x"}}],
                },
            },
            "context: appointments.entry[0] is a Patient, not an Appointment",
        ),
        (
            "patient-view",
            {"userId": "Practitioner/1", "patientId": 12},
            "context.patientId: Input should be a valid string",
        ),
    ],
)
def test_contexts_that_break_their_hook_definition_are_refused(
    hook: str, context: dict[str, Any], expected: str
) -> None:
    with pytest.raises(HookContextError) as caught:
        validate_context(hook, context)
    assert caught.value.reason.startswith(expected)


def test_every_hook_accepts_its_minimal_context() -> None:
    task = {"resourceType": "Task", "status": "requested", "intent": "order"}
    appointment = {
        "resourceType": "Appointment",
        "id": "a1",
        "status": "proposed",
        "participant": [{"status": "needs-action"}],
    }
    order = {
        "resourceType": "ServiceRequest",
        "id": "s1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p"},
    }
    minimal: dict[str, dict[str, Any]] = {
        "patient-view": {"userId": "Practitioner/1", "patientId": "p"},
        "order-select": {
            "userId": "Practitioner/1",
            "patientId": "p",
            "selections": ["ServiceRequest/s1"],
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": order}]},
        },
        "order-sign": {
            "userId": "PractitionerRole/1",
            "patientId": "p",
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": order}]},
        },
        "order-dispatch": {
            "patientId": "p",
            "dispatchedOrders": ["ServiceRequest/s1"],
            "performer": "Organization/o",
            "fulfillmentTasks": [task],
        },
        "encounter-start": {"userId": "Practitioner/1", "patientId": "p", "encounterId": "e"},
        "encounter-discharge": {"userId": "Practitioner/1", "patientId": "p", "encounterId": "e"},
        "appointment-book": {
            "userId": "Patient/p",
            "patientId": "p",
            "appointments": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": appointment}]},
        },
    }
    assert set(minimal) == set(HOOKS)
    for hook, context in minimal.items():
        assert validate_context(hook, context) == context


def test_absent_optional_fields_are_omitted_not_null() -> None:
    sent = validate_context("patient-view", {"userId": "Practitioner/1", "patientId": "p", "encounterId": None})
    assert sent == {"userId": "Practitioner/1", "patientId": "p"}


def test_context_resources_about_another_patient_are_refused() -> None:
    # A draft order, appointment or task for someone else would have the service reason (and
    # suggest) about the wrong person while the EHR shows the patient in context.
    def order(patient: str) -> dict[str, Any]:
        return {
            "resourceType": "MedicationRequest",
            "id": "m1",
            "status": "draft",
            "intent": "order",
            "medicationCodeableConcept": {"text": "warfarin"},
            "subject": {"reference": f"Patient/{patient}"},
        }

    def bundle(resource: dict[str, Any]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": resource}]}

    appointment = {
        "resourceType": "Appointment",
        "id": "a1",
        "status": "proposed",
        "participant": [{"status": "needs-action", "actor": {"reference": "Patient/other"}}],
    }
    task = {"resourceType": "Task", "status": "requested", "intent": "order", "for": {"reference": "Patient/other"}}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("order-sign", {"userId": "Practitioner/1", "patientId": "p", "draftOrders": bundle(order("other"))},
         "context: draftOrders.entry[0] is for Patient/other, not the patient in context"),
        ("order-select", {"userId": "Practitioner/1", "patientId": "p", "selections": ["MedicationRequest/m1"],
                          "draftOrders": bundle(order("other"))},
         "context: draftOrders.entry[0] is for Patient/other, not the patient in context"),
        ("appointment-book", {"userId": "Practitioner/1", "patientId": "p", "appointments": bundle(appointment)},
         "context: appointments.entry[0] is for Patient/other, not the patient in context"),
        ("order-dispatch", {"patientId": "p", "dispatchedOrders": ["MedicationRequest/m1"],
                            "performer": "Organization/o", "fulfillmentTasks": [task]},
         "context: fulfillmentTasks[0] is for Patient/other, not the patient in context"),
    ]  # fmt: skip
    for hook, context, reason in cases:
        with pytest.raises(HookContextError) as caught:
            validate_context(hook, context)
        assert caught.value.reason == reason, hook
    same = {"userId": "Practitioner/1", "patientId": "p", "draftOrders": bundle(order("p"))}
    assert validate_context("order-sign", same) == same


def test_a_context_carrying_too_many_resources_is_refused_before_validating_them() -> None:
    from ehr.hooks import MAX_CONTEXT_ITEMS

    order = {"resourceType": "ServiceRequest", "status": "draft", "intent": "order"}
    entries = [{"resource": {**order, "id": f"s{i}"}} for i in range(MAX_CONTEXT_ITEMS + 1)]
    context = {
        "userId": "Practitioner/1",
        "patientId": "p",
        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": entries},
    }
    with pytest.raises(HookContextError) as caught:
        validate_context("order-sign", context)
    assert caught.value.reason == f"context: draftOrders has more than {MAX_CONTEXT_ITEMS} entries"
    dispatch = {
        "patientId": "p",
        "dispatchedOrders": [f"ServiceRequest/s{i}" for i in range(MAX_CONTEXT_ITEMS + 1)],
        "performer": "Organization/o",
    }
    with pytest.raises(HookContextError, match="dispatchedOrders"):
        validate_context("order-dispatch", dispatch)
