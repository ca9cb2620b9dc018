"""Da Vinci CRD prefetch as payers' CRD Services announce it: discovered, approved by the review,
resolved against the FHIR server with draft orders (and selections) in context, with the
service's own per-call token bounding what `_include` brings back.

The templates are copied from the CRD IG, STU 2.0.1 (hl7.org/fhir/us/davinci-crd/STU2), §"Prefetch"
table of the Additional Data Retrieval section. That table writes the Coverage query with
`{{context.patient}}`, a field no hook defines; the IG's own prose and later versions write
`{{context.patientId}}`, which is used here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from tests.integration.ehrharness import CdsDouble, EhrHarness, Router, ehr_harness

CRD_ORDER_SIGN_PREFETCH = {
    "serviceRequestBundle": "ServiceRequest?_id={{context.draftOrders.ServiceRequest.id}}"
    "&_include=ServiceRequest:patient&_include=ServiceRequest:performer&_include=ServiceRequest:requester"
    "&_include:iterate=PractitionerRole:organization&_include:iterate=PractitionerRole:practitioner",
    "deviceRequestBundle": "DeviceRequest?_id={{context.draftOrders.DeviceRequest.id}}"
    "&_include=DeviceRequest:patient&_include=DeviceRequest:performer&_include=DeviceRequest:requester"
    "&_include=DeviceRequest:device&_include:iterate=PractitionerRole:organization"
    "&_include:iterate=PractitionerRole:practitioner",
    "medicationRequestBundle": "MedicationRequest?_id={{context.draftOrders.MedicationRequest.id}}"
    "&_include=MedicationRequest:patient&_include=MedicationRequest:intended-dispenser"
    "&_include=MedicationRequest:requester:PractitionerRole&_include=MedicationRequest:medication"
    "&_include:iterate=PractitionerRole:organization&_include:iterate=PractitionerRole:practitioner",
    "nutritionOrderBundle": "NutritionOrder?_id={{context.draftOrders.NutritionOrder.id}}"
    "&_include=NutritionOrder:patient&_include=NutritionOrder:provider&_include=NutritionOrder:requester"
    "&_include:iterate=PractitionerRole:organization&_include:iterate=PractitionerRole:practitioner"
    "&_include=NutritionOrder:encounter&_include:iterate=Encounter:location",
    "encounterBundle": "Encounter?_id={{context.encounterId}}&_include=Encounter:patient"
    "&_include=Encounter:service-provider&_include=Encounter:practitioner&_include=Encounter:location",
    "coverage": "Coverage?patient={{context.patientId}}&status=active",
}
CRD_ORDER_SELECT_PREFETCH = {
    "selectedServiceRequests": "ServiceRequest?_id={{context.selections.ServiceRequest.id}}"
    "&_include=ServiceRequest:requester",
}
SERVICES = [
    {"hook": "order-sign", "id": "crd-order-sign", "description": "CRD", "prefetch": CRD_ORDER_SIGN_PREFETCH},
    {"hook": "order-select", "id": "crd-order-select", "description": "CRD", "prefetch": CRD_ORDER_SELECT_PREFETCH},
]
# Read scopes for the requests and what the CRD includes bring back.
SCOPE = [
    "patient/ServiceRequest.rs", "patient/DeviceRequest.rs", "patient/MedicationRequest.rs",
    "patient/NutritionOrder.rs", "patient/Encounter.rs", "patient/Coverage.rs", "patient/Patient.rs",
    "user/Practitioner.rs", "user/PractitionerRole.rs", "user/Organization.rs",
]  # fmt: skip


@pytest.fixture
def cds() -> CdsDouble:
    return CdsDouble(services=SERVICES)


def _fhir_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The path and query of every GET the FHIR server receives from here on."""
    seen: list[str] = []
    forward = Router.handle_async_request

    async def spy(self: Router, request: httpx.Request) -> httpx.Response:
        if request.url.host == "fhir.test" and request.method == "GET":
            seen.append(unquote(request.url.raw_path.decode()).removeprefix("/fhir/"))
        return await forward(self, request)

    monkeypatch.setattr(Router, "handle_async_request", spy)
    return seen


async def _create(h: EhrHarness, resource: dict[str, Any]) -> dict[str, Any]:
    token = await h.fhir.token("system/*.cruds")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    created = await h.fhir.client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=headers)
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


def _service_request(patient: str, requester: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "code": {"text": "MRI lumbar spine"},
        "subject": {"reference": f"Patient/{patient}"},
        "requester": {"reference": requester},
        **extra,
    }


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def _matches(bundle: dict[str, Any], mode: str) -> list[tuple[str, str]]:
    return sorted(
        (e["resource"]["resourceType"], e["resource"]["id"])
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode") == mode
    )


async def test_the_crd_prefetch_templates_are_approved_and_resolved_with_the_draft_orders_in_context(
    h: EhrHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    added = await h.add_service(approveAllPrefetch=True, scope=SCOPE)
    assert added.status_code == 201, added.text
    assert added.json()["refusedPrefetch"] == []
    approved = {
        s["id"]: s["approvedPrefetch"] for s in (await h.ehr.get("/api/services", headers=h.admin)).json()["services"]
    }
    assert approved == {"crd-order-sign": CRD_ORDER_SIGN_PREFETCH, "crd-order-select": CRD_ORDER_SELECT_PREFETCH}

    patient, user = h.fhir.patient_of(0), h.fhir.practitioner(0)
    first = await _create(h, _service_request(patient, user))
    second = await _create(h, _service_request(patient, user))
    coverage = await _create(
        h,
        {
            "resourceType": "Coverage",
            "status": "active",
            "beneficiary": {"reference": f"Patient/{patient}"},
            "payor": [{"display": "Payer"}],
        },
    )
    reads = _fhir_reads(monkeypatch)

    response = await h.fire(
        "order-sign", userId=user, patientId=patient, context={"draftOrders": _bundle(first, second)}
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["services"]
    assert result["status"] == "ok", result

    ids = ",".join(sorted([first["id"], second["id"]], key=[first["id"], second["id"]].index))
    # Only the templates whose tokens resolve were run: no DeviceRequest, MedicationRequest or
    # NutritionOrder among the draft orders, no encounter in context.
    prefetch_reads = [r for r in reads if not r.startswith(("metadata", ".well-known"))]
    assert sorted(prefetch_reads) == sorted(
        [
            f"ServiceRequest?_id={ids}&_include=ServiceRequest:patient&_include=ServiceRequest:performer"
            "&_include=ServiceRequest:requester&_include:iterate=PractitionerRole:organization"
            "&_include:iterate=PractitionerRole:practitioner",
            f"Coverage?patient={patient}&status=active",
        ]
    )
    (call,) = h.cds.calls("/cds-services/crd-order-sign")
    prefetch = call.body["prefetch"]
    assert set(prefetch) == {"serviceRequestBundle", "coverage"}
    orders = prefetch["serviceRequestBundle"]
    assert _matches(orders, "match") == sorted([("ServiceRequest", first["id"]), ("ServiceRequest", second["id"])])
    assert _matches(orders, "include") == sorted([("Patient", patient), tuple(user.split("/"))])
    assert _matches(prefetch["coverage"], "match") == [("Coverage", coverage["id"])]
    assert any("deviceRequestBundle" in note for note in result.get("notes", [])), result


async def test_the_selections_of_order_select_resolve_to_the_selected_orders_of_that_type(
    h: EhrHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await h.add_service(approveAllPrefetch=True, scope=SCOPE)).status_code == 201
    patient, user = h.fhir.patient_of(0), h.fhir.practitioner(0)
    chosen = await _create(h, _service_request(patient, user))
    other = await _create(h, _service_request(patient, user))
    reads = _fhir_reads(monkeypatch)

    context = {"draftOrders": _bundle(chosen, other), "selections": [f"ServiceRequest/{chosen['id']}"]}
    response = await h.fire("order-select", userId=user, patientId=patient, context=context)
    assert response.status_code == 200, response.text

    assert f"ServiceRequest?_id={chosen['id']}&_include=ServiceRequest:requester" in reads
    (call,) = h.cds.calls("/cds-services/crd-order-select")
    bundle = call.body["prefetch"]["selectedServiceRequests"]
    assert _matches(bundle, "match") == [("ServiceRequest", chosen["id"])]
    assert _matches(bundle, "include") == [tuple(user.split("/"))]


async def test_an_include_in_an_approved_template_brings_back_nothing_the_services_token_cannot_read(
    tmp_path: Path, database_url: str
) -> None:
    """A draft order that points at another patient's order: `_include` of it is bounded by the
    per-call token (this patient's compartment), as a direct read by the service would be."""
    template = "ServiceRequest?_id={{context.draftOrders.ServiceRequest.id}}&_include=ServiceRequest:based-on"
    services = [{"hook": "order-sign", "id": "crd", "description": "CRD", "prefetch": {"orders": template}}]
    async with ehr_harness(tmp_path, database_url, CdsDouble(services=services)) as h:
        assert (await h.add_service(approveAllPrefetch=True)).status_code == 201
        patient, user = h.fhir.patient_of(0), h.fhir.practitioner(0)
        theirs = await _create(h, _service_request(h.fhir.patient_of(1), user))
        mine = await _create(
            h, _service_request(patient, user, basedOn=[{"reference": f"ServiceRequest/{theirs['id']}"}])
        )
        # The include itself works: with a wide token the other patient's order comes back.
        wide = await h.fhir.token("system/*.rs")
        direct = await h.fhir.get("ServiceRequest", wide, _id=mine["id"], _include="ServiceRequest:based-on")
        assert ("ServiceRequest", theirs["id"]) in _matches(direct.json(), "include")

        context = {"draftOrders": _bundle(mine)}
        response = await h.fire("order-sign", userId=user, patientId=patient, context=context)
        assert response.status_code == 200, response.text

        (call,) = h.cds.calls("/cds-services/crd")
        orders = call.body["prefetch"]["orders"]
        assert _matches(orders, "match") == [("ServiceRequest", mine["id"])]
        assert _matches(orders, "include") == []
