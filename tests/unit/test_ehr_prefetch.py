"""ehr.prefetch: allowed query forms, token substitution with encoding, and outcome mapping.

The FHIR server is an httpx.MockTransport that records exactly what was asked (raw path and
query), so the tests show which request a hostile context value produced.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx
import pytest

from ehr.prefetch import TokenValues, check_template, fetch, render

TODAY = dt.date(2026, 11, 30)
CONTEXT = {"userId": "Practitioner/doc-1", "patientId": "p1", "encounterId": "e1"}


def values(context: dict[str, Any] | None = None, user: str | None = "Practitioner/doc-1") -> TokenValues:
    return TokenValues(context=context if context is not None else CONTEXT, user_ref=user, today=TODAY)


@pytest.mark.parametrize(
    "template",
    [
        "Patient/{{context.patientId}}",
        "Patient/example",
        "Encounter/{{context.encounterId}}",
        "Practitioner/{{userPractitionerId}}",
        "Observation?patient={{context.patientId}}",
        "Observation?subject=Patient/{{context.patientId}}&code=http://loinc.org|4548-4&_sort=-date&_count=1",
        "Observation?patient={{context.patientId}}&date=ge{{today() - 90 days}}",
        "Condition?patient={{context.patientId}}&recorded-date=lt2020-01-01",
        "MedicationRequest?patient={{context.patientId}}&status=active,on-hold",
        "Condition?patient={{context.patientId}}&code:in=https://vsac.example.org/ValueSet/diabetes",
        "Immunization?patient={{context.patientId}}&date=le{{today()}}",
        "MedicationRequest?_id={{context.selections}}",
        # Da Vinci CRD STU 2.0.1 forms: context resource ids and named includes.
        "ServiceRequest?_id={{context.draftOrders.ServiceRequest.id}}&_include=ServiceRequest:patient",
        "MedicationRequest?_id={{context.selections.MedicationRequest.id}}",
        "MedicationRequest?_id=1&_include=MedicationRequest:requester:PractitionerRole",
        "ServiceRequest?_id=1&_include=ServiceRequest:requester&_include:iterate=PractitionerRole:organization",
        "Patient?_id={{context.patientId}}&_revinclude=Coverage:patient",
        "Coverage?patient={{context.patientId}}&status=active",
    ],
)
def test_allowed_query_forms_are_accepted(template: str) -> None:
    assert check_template(template) is None


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("https://evil.example.org/fhir/Patient/1", "relative"),
        ("/Patient/{{context.patientId}}", "relative"),
        ("../admin", "relative"),
        ("Patient/{{context.patientId}}/$everything", "only an instance read"),
        ("Patient/{{context.patientId}}/_history", "only an instance read"),
        ("Patient/{{context.patientId}}/Observation", "only an instance read"),
        ("Patient/..", "instance read"),
        ("patient/1", "not a resource type"),
        ("Observation?patient={{context.patientId}}&_include=*", "no wildcard"),
        ("Observation?patient={{context.patientId}}&_include=Observation:*", "no wildcard"),
        ("Observation?patient={{context.patientId}}&_revinclude=*", "no wildcard"),
        ("Observation?_id=1&_include={{context.patientId}}", "no wildcard or token"),
        ("Observation?_id=1&_include:recurse=Observation:subject", "only :iterate"),
        ("Observation?_id=1&_include=Observation:subject.name", "Type:parameter"),
        ("ServiceRequest?_id={{context.draftOrders.ServiceRequest.code}}", "unsupported prefetch token"),
        ("ServiceRequest?_id={{context.draftOrders.serviceRequest.id}}", "unsupported prefetch token"),
        ("https://payer.example.org/fhir/ServiceRequest?_id={{context.draftOrders.ServiceRequest.id}}", "relative"),
        ("ServiceRequest/{{context.draftOrders.ServiceRequest.id}}/$submit", "only an instance read"),
        ("Observation?_has:Condition:patient:code=x", "'_has'"),
        ("Observation?patient.name=Smith", "'patient.name'"),
        ("Patient?name:contains=smi", "modifier :contains"),
        ("Observation?code:missing=true", "modifier :missing"),
        ("Observation?patient={{context.patientId}}&_count=100000", "_count"),
        ("Observation?patient={{context.patientId.name}}", "unsupported prefetch token"),
        ("Observation?patient={{%   system('x') %}}", "unsupported prefetch token"),
        ("Observation?patient={{userName}}", "unsupported prefetch token"),
        ("Observation?patient={{today() + 1 year}}", "unsupported prefetch token"),
        ("Observation?name=a b", "whitespace"),
        ("Observation?patient", "no value"),
        ("Observation?", "at least one parameter"),
        ("Observation?patient={{context.patientId}#", "fragment"),
        ("Observation?code=*", "not a reference, token or date"),
        ("", "non-empty"),
    ],
)
def test_templates_outside_the_allowed_forms_are_refused_with_a_reason(template: str, reason: str) -> None:
    refusal = check_template(template)
    assert refusal is not None
    assert reason in refusal


def test_context_and_user_tokens_are_substituted() -> None:
    assert render("Patient/{{context.patientId}}", values()) == "Patient/p1"
    assert render("Practitioner/{{userPractitionerId}}", values()) == "Practitioner/doc-1"
    assert render("Observation?encounter={{context.encounterId}}", values()) == "Observation?encounter=e1"


def test_today_plus_or_minus_days_is_substituted_from_the_clock_date() -> None:
    assert render("Observation?date=ge{{today() - 90 days}}", values()) == "Observation?date=ge2026-09-01"
    assert render("Observation?date=le{{today()}}", values()) == "Observation?date=le2026-11-30"
    assert render("Appointment?date=lt{{today() + 1 day}}", values()) == "Appointment?date=lt2026-12-01"


@pytest.mark.parametrize("hostile", ["1&_id=2", "1&patient=someone-else", "x#frag", "a=b", "1%26_id%3D2", "p?x=1"])
def test_a_context_value_cannot_add_a_query_parameter(hostile: str) -> None:
    rendered = render("Observation?patient={{context.patientId}}&_count=5", values({"patientId": hostile}))
    assert rendered is not None
    query = rendered.partition("?")[2]
    assert [p.split("=", 1)[0] for p in query.split("&")] == ["patient", "_count"]
    assert httpx.URL(f"https://fhir.test/fhir/{rendered}").params.get_list("patient") == [hostile]


@pytest.mark.parametrize("hostile", ["../x", "..", ".", "../../admin", "1&_id=2", "a/b"])
def test_a_context_value_cannot_change_the_path_of_a_read(hostile: str) -> None:
    assert render("Patient/{{context.patientId}}", values({"patientId": hostile})) is None


def test_a_hostile_value_in_a_search_stays_one_encoded_value_on_the_wire() -> None:
    rendered = render("Observation?patient={{context.patientId}}", values({"patientId": "../x"}))
    assert rendered == "Observation?patient=..%2Fx"
    url = httpx.URL(f"https://fhir.test/fhir/{rendered}")
    assert url.raw_path == b"/fhir/Observation?patient=..%2Fx"


def test_unresolvable_tokens_make_the_template_unresolvable() -> None:
    assert render("Encounter/{{context.encounterId}}", values({"patientId": "p1"})) is None
    assert render("PractitionerRole/{{userPractitionerRoleId}}", values()) is None
    assert render("Patient/{{userPatientId}}", values(user=None)) is None
    assert (
        render("Observation?patient={{context.draftOrders}}", values({"draftOrders": {"resourceType": "Bundle"}}))
        is None
    )
    assert render("Patient?_id={{context.patientId}}", values({"patientId": ""})) is None


def test_a_list_context_value_becomes_an_or_list_of_encoded_values() -> None:
    context = {"selections": ["MedicationRequest/a", "MedicationRequest/b&x=1"]}
    rendered = render("MedicationRequest?subject={{context.selections}}", values(context))
    assert rendered == "MedicationRequest?subject=MedicationRequest%2Fa,MedicationRequest%2Fb%26x%3D1"


DRAFT_ORDERS = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [
        {"resource": {"resourceType": "ServiceRequest", "id": "sr-1"}},
        {"resource": {"resourceType": "MedicationRequest", "id": "mr-1"}},
        {"resource": {"resourceType": "ServiceRequest", "id": "sr-2"}},
        {"resource": {"resourceType": "ServiceRequest", "id": "sr-1"}},
    ],
}


def test_a_draft_orders_id_token_becomes_the_comma_separated_ids_of_that_type() -> None:
    context = {"patientId": "p1", "draftOrders": DRAFT_ORDERS}
    template = "ServiceRequest?_id={{context.draftOrders.ServiceRequest.id}}&_include=ServiceRequest:patient"
    assert render(template, values(context)) == "ServiceRequest?_id=sr-1,sr-2&_include=ServiceRequest:patient"
    assert render("MedicationRequest/{{context.draftOrders.MedicationRequest.id}}", values(context)) == (
        "MedicationRequest/mr-1"
    )


def test_a_draft_orders_id_token_with_no_order_of_that_type_leaves_the_template_unrun() -> None:
    context = {"patientId": "p1", "draftOrders": DRAFT_ORDERS}
    assert render("DeviceRequest?_id={{context.draftOrders.DeviceRequest.id}}", values(context)) is None
    assert render("DeviceRequest?_id={{context.draftOrders.DeviceRequest.id}}", values({"patientId": "p1"})) is None
    # Several ids cannot be one instance read.
    assert render("ServiceRequest/{{context.draftOrders.ServiceRequest.id}}", values(context)) is None


def test_a_selections_id_token_becomes_the_ids_of_the_selected_orders_of_that_type() -> None:
    context = {"selections": ["ServiceRequest/sr-2", "MedicationRequest/mr-1", "ServiceRequest/sr-9"]}
    rendered = render("ServiceRequest?_id={{context.selections.ServiceRequest.id}}", values(context))
    assert rendered == "ServiceRequest?_id=sr-2,sr-9"


@pytest.mark.parametrize("hostile", ["1&_id=2", "../x", "a,b", "x#y"])
def test_an_order_id_that_is_not_a_fhir_id_is_never_substituted(hostile: str) -> None:
    bundle = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "ServiceRequest", "id": hostile}}]}
    context = {"draftOrders": bundle, "selections": [f"ServiceRequest/{hostile}"]}
    assert render("ServiceRequest?_id={{context.draftOrders.ServiceRequest.id}}", values(context)) is None
    assert render("ServiceRequest?_id={{context.selections.ServiceRequest.id}}", values(context)) is None


def test_a_template_that_fails_the_check_is_never_rendered() -> None:
    assert render("Observation?patient={{context.patientId}}&_include=*", values()) is None


# --- fetch: outcomes -------------------------------------------------------------------------


class FakeFhir:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.url.raw_path.decode(), request.headers.get("authorization")))
        path = request.url.path
        if path == "/fhir/Patient/p1":
            return httpx.Response(200, json={"resourceType": "Patient", "id": "p1"})
        if path == "/fhir/Patient/gone":
            return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": []})
        if path == "/fhir/Observation":
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "total": 0})
        if path == "/fhir/Condition":
            outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden"}]}
            return httpx.Response(403, json=outcome)
        if path == "/fhir/Encounter":
            return httpx.Response(500, text="boom")
        if path == "/fhir/Procedure":
            raise httpx.ConnectError("refused")
        return httpx.Response(404, text="no")


async def test_fetch_maps_each_outcome_as_the_spec_says() -> None:
    fake = FakeFhir()
    templates = {
        "patient": "Patient/{{context.patientId}}",
        "missing": "Patient/gone",
        "labs": "Observation?patient={{context.patientId}}",
        "forbidden": "Condition?patient={{context.patientId}}",
        "broken": "Encounter?patient={{context.patientId}}",
        "down": "Procedure?patient={{context.patientId}}",
        "unresolvable": "Encounter/{{context.encounterId}}",
    }
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as http:
        result = await fetch(http, "https://fhir.test/fhir/", "tok-1", templates, values({"patientId": "p1"}))
    assert result.data == {
        "patient": {"resourceType": "Patient", "id": "p1"},
        "missing": None,
        "labs": {"resourceType": "Bundle", "type": "searchset", "total": 0},
        "forbidden": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden"}]},
    }
    assert set(result.notes) == {"forbidden", "broken", "down", "unresolvable"}
    assert result.notes["broken"] == "FHIR server answered 500 without detail"
    assert result.notes["down"] == "FHIR server unreachable (ConnectError)"
    assert {auth for _, auth in fake.seen} == {"Bearer tok-1"}
    assert len(fake.seen) == 6  # the unresolvable template was never asked


async def test_fetch_sends_hostile_values_encoded() -> None:
    fake = FakeFhir()
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as http:
        await fetch(
            http,
            "https://fhir.test/fhir",
            "t",
            {"labs": "Observation?patient={{context.patientId}}&_count=5"},
            values({"patientId": "1&_id=2"}),
        )
    assert fake.seen == [("/fhir/Observation?patient=1%26_id%3D2&_count=5", "Bearer t")]


async def test_fetch_is_fresh_every_invocation() -> None:
    fake = FakeFhir()
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as http:
        for _ in range(3):
            result = await fetch(http, "https://fhir.test/fhir", "t", {"p": "Patient/{{context.patientId}}"}, values())
            assert json.dumps(result.data) == '{"p": {"resourceType": "Patient", "id": "p1"}}'
    assert len(fake.seen) == 3
