"""Validation of resources on write.

Structure and datatypes: fhir.resources' R4B models (the R4-compatible ones; the package root is
R5 and rejects R4 data). R4 types that R4B lacks are refused with a clear OperationOutcome.
fhir.resources does not check code bindings, so the required bindings that matter are checked
here by hand (FHIR R4 value sets, binding strength "required").
"""

from __future__ import annotations

import functools
from typing import Any

from fhirserver.errors import InvalidResourceError, Issue, UnsupportedTypeError

# (resource type, element) -> allowed codes of its required binding (FHIR R4 value sets).
REQUIRED_CODES: dict[tuple[str, str], frozenset[str]] = {
    ("Patient", "gender"): frozenset({"male", "female", "other", "unknown"}),
    ("Practitioner", "gender"): frozenset({"male", "female", "other", "unknown"}),
    ("Observation", "status"): frozenset(
        {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"}
    ),
    ("MedicationRequest", "status"): frozenset(
        {"active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"}
    ),
    ("MedicationRequest", "intent"): frozenset(
        {"proposal", "plan", "order", "original-order", "reflex-order", "filler-order", "instance-order", "option"}
    ),
    ("Encounter", "status"): frozenset(
        {
            "planned",
            "arrived",
            "triaged",
            "in-progress",
            "onleave",
            "finished",
            "cancelled",
            "entered-in-error",
            "unknown",
        }
    ),
    ("AllergyIntolerance", "criticality"): frozenset({"low", "high", "unable-to-assess"}),
    ("CareTeam", "status"): frozenset({"proposed", "active", "suspended", "inactive", "entered-in-error"}),
}


@functools.lru_cache(maxsize=256)
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class  # lazy: the import costs ~0.4 s

    try:
        return get_fhir_model_class(resource_type)
    except (ValueError, KeyError, AttributeError):
        return None


def _loc(loc: tuple[Any, ...], resource_type: str) -> str:
    path = resource_type
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def validate_resource(resource: Any, *, where: str = "") -> None:
    """Raise InvalidResourceError / UnsupportedTypeError with expression paths, or return."""
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise InvalidResourceError(
            [Issue(f"{where}resource must be a JSON object with resourceType", code="structure")]
        )
    rtype = resource["resourceType"]
    model = _model(rtype)
    # A Bundle or OperationOutcome inside a transaction entry is not something we store.
    if model is None or (where and rtype in {"Bundle", "OperationOutcome"}):
        raise UnsupportedTypeError(
            [
                Issue(
                    f"{where}resource type {rtype!r} is not supported by this server (FHIR R4 via R4B models)",
                    code="not-supported",
                )
            ]
        )
    from pydantic import ValidationError

    try:
        model.model_validate(resource)
    except ValidationError as exc:
        issues = [
            Issue(f"{where}{err['msg']}", code="structure", expression=(_loc(tuple(err["loc"]), rtype),))
            for err in exc.errors()[:20]
        ]
        raise InvalidResourceError(issues) from None
    _check_bindings(resource, rtype, where)


def _check_bindings(resource: dict[str, Any], rtype: str, where: str) -> None:
    issues: list[Issue] = []
    for (btype, element), allowed in REQUIRED_CODES.items():
        if btype != rtype or element not in resource:
            continue
        if resource[element] not in allowed:
            issues.append(
                Issue(
                    f"{where}{rtype}.{element} must be one of {', '.join(sorted(allowed))}",
                    code="code-invalid",
                    expression=(f"{rtype}.{element}",),
                )
            )
    if issues:
        raise InvalidResourceError(issues)
