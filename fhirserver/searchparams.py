"""The official FHIR R4 search parameters of the supported resource types, and the patient compartment.

Both tables are package data derived from the R4 definitions (fhirserver/data/derive.py):
`search-parameters.json` holds, per resource type, each parameter's type, FHIRPath expression
(restricted to that type) and reference targets; `compartment-patient.json` holds the
parameters that put a resource in a Patient's compartment (CompartmentDefinition-patient).

Indexed parameter types: token, string, reference, date, quantity, uri and number. Composite
and special parameters (e.g. `near`, `_text`, `_content`, `_filter`, `_query`) are not indexed
and therefore not searchable; neither are parameters defined by extensions.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

SUPPORTED_TYPES: frozenset[str] = frozenset(
    {
        "AllergyIntolerance",
        "Appointment",
        "AuditEvent",
        "CarePlan",
        "CareTeam",
        "Claim",
        "Condition",
        "Coverage",
        "Device",
        "DiagnosticReport",
        "DocumentReference",
        "Encounter",
        "ExplanationOfBenefit",
        "Goal",
        "Immunization",
        "Location",
        "Medication",
        "MedicationRequest",
        "Observation",
        "Organization",
        "Patient",
        "Practitioner",
        "PractitionerRole",
        "Procedure",
        "Provenance",
        "RelatedPerson",
        "ServiceRequest",
        "Task",
    }
)
INDEXED_TYPES = frozenset({"token", "string", "reference", "date", "quantity", "uri", "number"})
# Served from columns of fhir_resources, not from index rows.
COLUMN_PARAMS = frozenset({"_id", "_lastUpdated"})


@dataclass(frozen=True)
class SearchLimits:
    """How much one search may ask for (MOCKEHR_FHIR_SEARCH_MAX_*; defaults here and in README).

    Each parameter, OR value, link and include adds a subquery or a term to the statement: a
    query of 1,000 OR values or 1,000 parameters is an expression tree SQLite refuses ("too
    large") and PostgreSQL spends seconds planning. Past a limit the search is refused with a
    400 OperationOutcome (`too-costly`) that names the limit and its setting.
    """

    max_parameters: int = 40  # name=value pairs in one search, result parameters included
    max_values: int = 100  # comma-separated values of one parameter (OR), _sort keys, _elements
    max_chain_depth: int = 2  # links followed by chains (a.b.c = 2) and nested _has, together
    max_includes: int = 10  # _include and _revinclude parameters


@dataclass(frozen=True)
class SearchParam:
    code: str
    type: str  # token | string | reference | date | quantity | uri | number
    expression: str
    targets: tuple[str, ...]  # reference targets among SUPPORTED_TYPES (empty for other types)


def _load(name: str) -> Any:
    return json.loads(resources.files("fhirserver.data").joinpath(name).read_text(encoding="utf-8"))


def _targets(raw: list[str]) -> tuple[str, ...]:
    if raw == ["*"]:
        return tuple(sorted(SUPPORTED_TYPES))
    return tuple(t for t in raw if t in SUPPORTED_TYPES)


@functools.cache
def _table() -> dict[str, dict[str, SearchParam]]:
    raw: dict[str, dict[str, list[Any]]] = _load("search-parameters.json")
    return {
        rtype: {
            code: SearchParam(code, ptype, expression, _targets(targets))
            for code, (ptype, expression, targets) in params.items()
        }
        for rtype, params in raw.items()
        if rtype in SUPPORTED_TYPES
    }


def params(rtype: str) -> dict[str, SearchParam]:
    """Every searchable parameter of `rtype` by code (empty for unsupported types)."""
    return _table().get(rtype, {})


def get(rtype: str, code: str) -> SearchParam | None:
    return params(rtype).get(code)


@functools.cache
def indexed_params(rtype: str) -> tuple[SearchParam, ...]:
    """The parameters whose values are extracted into index rows at write time."""
    return tuple(p for p in params(rtype).values() if p.code not in COLUMN_PARAMS)


@functools.cache
def _compartment() -> dict[str, tuple[str, ...]]:
    raw: dict[str, list[str]] = _load("compartment-patient.json")
    return {rtype: tuple(codes) for rtype, codes in raw.items()}


def compartment_params(rtype: str) -> tuple[str, ...] | None:
    """Parameters linking `rtype` to the Patient compartment; None when `rtype` is not in it.

    A Patient is also in its own compartment (CompartmentDefinition-patient, "the Patient itself").
    """
    return _compartment().get(rtype)


def reference_params(rtype: str) -> tuple[SearchParam, ...]:
    return tuple(p for p in params(rtype).values() if p.type == "reference")
