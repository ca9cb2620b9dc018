"""The pure parts of signing an order: the resource the EHR writes, and what blocks a signature."""

from __future__ import annotations

import json

from ehr.models import CdsExchangeRow
from ehr.ui.orders import LOINC, orderable
from ehr.ui.signing import SignRequest, order_resource, review_problem

DRAFT = "draft-0b7c4f0e-5a3d-4c1e-9f2a-6d8e1b2c3a4f"


def request(kind: str = "lab", code: str = "58410-2") -> SignRequest:
    return SignRequest(
        patientId="pat-1",
        hookInstance="h-1",
        draftId=DRAFT,
        kind=kind,
        system=LOINC,
        code=code,
    )


def row(status: str, cards: list[dict[str, object]], draft_ref: str = f"ServiceRequest/{DRAFT}") -> CdsExchangeRow:
    kind, _, ident = draft_ref.partition("/")
    context = {"draftOrders": {"entry": [{"resource": {"resourceType": kind, "id": ident}}]}}
    return CdsExchangeRow(
        service_id="svc", status=status, request=json.dumps({"context": context}), cards=json.dumps(cards)
    )


def test_a_lab_order_is_an_active_service_request_for_the_patient_by_the_user() -> None:
    item = orderable("lab", LOINC, "58410-2")
    assert item is not None
    resource = order_resource(request(), item, "Practitioner/p-1", "2026-11-30", None)
    assert resource["resourceType"] == "ServiceRequest"
    assert (resource["status"], resource["intent"]) == ("active", "order")
    assert resource["subject"] == {"reference": "Patient/pat-1"}
    assert resource["requester"] == {"reference": "Practitioner/p-1"}
    assert resource["code"]["coding"][0] == {"system": LOINC, "code": "58410-2", "display": item.display}
    assert resource["category"][0]["coding"][0]["code"] == "108252007"
    assert resource["authoredOn"] == "2026-11-30" and "encounter" not in resource and "id" not in resource
    assert resource["identifier"] == [{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:" + DRAFT[6:]}]


def test_only_offered_items_of_the_right_kind_can_be_ordered() -> None:
    assert orderable("lab", LOINC, "58410-2") is not None
    assert orderable("medication", LOINC, "58410-2") is None
    assert orderable("lab", "http://example.org", "58410-2") is None
    assert orderable("procedure", LOINC, "58410-2") is None


def test_a_failed_service_has_no_cards_to_decide_and_blocks_nothing() -> None:
    failed = row("error", [], draft_ref="ServiceRequest/another")
    assert review_problem([failed], {}, f"ServiceRequest/{DRAFT}") is None


def test_an_info_card_never_blocks_but_an_undecided_critical_card_does() -> None:
    cards: list[dict[str, object]] = [{"uuid": "i", "indicator": "info"}, {"uuid": "c", "indicator": "critical"}]
    ref = f"ServiceRequest/{DRAFT}"
    assert review_problem([row("ok", cards)], {}, ref) is not None
    assert review_problem([row("ok", cards)], {("svc", "c"): ("overridden", None)}, ref) is None
