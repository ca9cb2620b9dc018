"""The example CDS Service's cards — from prefetch, from the FHIR server as a fallback, or a 412 — and feedback.

The data is the demo data set (mockehr.seed) — as prefetch, or loaded into a real FHIR server
behind its guard (fhirharness) — so what is tested is what a demo user sees. Every outbound
request of the service is recorded: the tests assert which servers were (and were not) called.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from common.clock import FrozenClock
from common.jose import new_jti, sign_jwt
from examples.cds_service.app import create_app as create_cds
from examples.cds_service.settings import CdsSettings
from examples.cds_service.state import cds_state
from mockehr.seed import DIABETES, SeedResult, generate
from tests.integration.apps import serving
from tests.integration.fhirharness import FHIR, FhirHarness
from tests.integration.test_cds_example import CDS, EHR, JWKS_URL, _jwks, _key

SMART_LAUNCH = "https://smart.test/launch"
EVIL = "https://evil.test/fhir"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SCOPE = "patient/Patient.rs patient/Observation.rs patient/MedicationRequest.rs patient/AllergyIntolerance.rs"


def resources(data: SeedResult, rtype: str, patient_id: str) -> list[dict[str, Any]]:
    found = []
    for entry in data.bundle["entry"]:
        res = entry["resource"]
        ref = (res.get("subject") or res.get("patient") or {}).get("reference")
        if res["resourceType"] == rtype and ref == f"Patient/{patient_id}":
            found.append(res)
    return found


def searchset(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(items),
        "entry": [{"resource": r} for r in items],
    }


def observations(data: SeedResult, patient_id: str, category: str) -> dict[str, Any]:
    obs = resources(data, "Observation", patient_id)
    return searchset([o for o in obs if o["category"][0]["coding"][0]["code"] == category])


def diabetic_patient(data: SeedResult) -> str:
    for entry in data.bundle["entry"]:
        res = entry["resource"]
        if res["resourceType"] == "Condition" and res["code"]["coding"][0]["code"] == DIABETES:
            return str(res["subject"]["reference"].split("/")[1])
    raise AssertionError("the seed has no diabetic patient")


def medication(code: str, text: str) -> dict[str, Any]:
    return {"coding": [{"system": RXNORM, "code": code, "display": text}], "text": text}


def draft(rid: str, code: str, text: str, patient: str = "p1") -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": medication(code, text),
        "subject": {"reference": f"Patient/{patient}"},
    }


def drafts(*orders: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": o} for o in orders]}


PENICILLIN_ALLERGY = {
    "resourceType": "AllergyIntolerance",
    "id": "a1",
    "clinicalStatus": {"coding": [{"code": "active"}]},
    "verificationStatus": {"coding": [{"code": "confirmed"}]},
    "criticality": "high",
    "code": medication("7980", "penicillin G"),
    "patient": {"reference": "Patient/p1"},
    "reaction": [{"manifestation": [{"text": "Anaphylaxis (disorder)"}], "severity": "severe"}],
}
ACTIVE_LISINOPRIL = {
    "resourceType": "MedicationRequest",
    "id": "m1",
    "status": "active",
    "intent": "order",
    "medicationCodeableConcept": medication("314076", "lisinopril 10 MG Oral Tablet"),
    "subject": {"reference": "Patient/p1"},
    "authoredOn": "2025-10-01T09:30:00+00:00",
}


class Cds:
    """The example service in-process, its outbound requests recorded."""

    def __init__(self, client: httpx.AsyncClient, app: Any, clock: FrozenClock, outbound: list[httpx.Request]) -> None:
        self.client, self.app, self.clock, self.outbound = client, app, clock, outbound
        self.key = _key("ehr-1")

    def token(self, url: str) -> str:
        now = int(self.clock())
        claims = {"iss": EHR, "aud": url, "iat": now, "exp": now + 300, "jti": new_jti()}
        return sign_jwt(claims, self.key, typ="JWT")

    async def hook(self, service: str, body: dict[str, Any]) -> httpx.Response:
        url = f"{CDS}/cds-services/{service}"
        return await self.client.post(url, json=body, headers={"Authorization": f"Bearer {self.token(url)}"})

    async def feedback(self, service: str, body: Any) -> httpx.Response:
        url = f"{CDS}/cds-services/{service}/feedback"
        return await self.client.post(url, json=body, headers={"Authorization": f"Bearer {self.token(url)}"})

    def called(self, host: str) -> list[httpx.Request]:
        return [r for r in self.outbound if r.url.host == host]


def body(hook: str, patient: str, **extra: Any) -> dict[str, Any]:
    """A hook request; a patient-view prefetch without the Patient gets a living one."""
    context = {"userId": "Practitioner/u1", "patientId": patient}
    context.update(extra.pop("context", {}))
    prefetch = extra.get("prefetch")
    if hook == "patient-view" and isinstance(prefetch, dict) and "patient" not in prefetch:
        extra["prefetch"] = {"patient": {"resourceType": "Patient", "id": patient}, **prefetch}
    return {"hook": hook, "hookInstance": new_jti(), "context": context, **extra}


@pytest.fixture
async def make_cds(tmp_path: Path) -> AsyncIterator[Any]:
    """A factory: the service with the FHIR server `fhir` (or none) reachable at its real URL."""
    stack: list[Any] = []

    async def make(fhir: FhirHarness | None = None, **more_settings: Any) -> Cds:
        clock = fhir.clock if fhir is not None else FrozenClock(time.time())
        outbound: list[httpx.Request] = []
        holder: dict[str, Cds] = {}

        def jwks(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json=_jwks(holder["cds"].key))

        def anything_else(request: httpx.Request) -> httpx.Response:
            # What an attacker's server would love to answer: a plausible Patient read or FHIR Bundle.
            rtype, _, rid = request.url.path.rpartition("/")
            if rtype.endswith("/Patient") and rid:
                return httpx.Response(200, json={"resourceType": "Patient", "id": rid})
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": []})

        async def record(request: httpx.Request) -> None:
            if request.url.host != "ehr.test":  # key fetches are not data calls
                outbound.append(request)

        mounts: dict[str, httpx.AsyncBaseTransport] = {
            "https://ehr.test": httpx.MockTransport(jwks),
            "all://": httpx.MockTransport(anything_else),
        }
        if fhir is not None:
            mounts["https://fhir.test"] = httpx.ASGITransport(app=fhir.fhir_app)
        http = httpx.AsyncClient(mounts=mounts, event_hooks={"request": [record]})
        settings = CdsSettings(
            data_dir=tmp_path,
            public_url=CDS,
            ehr_issuer=EHR,
            ehr_jwks_url=JWKS_URL,
            fhir_servers=[FHIR],
            smart_launch_url=SMART_LAUNCH,
            **more_settings,
        )
        app = create_cds(settings, clock=clock, http_client=http)
        context = serving(app, CDS)
        client = await context.__aenter__()
        stack.append((context, http))
        holder["cds"] = Cds(client, app, clock, outbound)
        return holder["cds"]

    yield make
    for context, http in reversed(stack):
        await context.__aexit__(None, None, None)
        await http.aclose()


def assert_valid_cards(cards: list[dict[str, Any]]) -> None:
    """CDS Hooks 2.0 §Card Attributes, as an EHR validating the response would check."""
    uuids = [c["uuid"] for c in cards] + [s["uuid"] for c in cards for s in c.get("suggestions", [])]
    assert len(uuids) == len(set(uuids))
    for card in cards:
        assert 0 < len(card["summary"]) < 140
        assert card["indicator"] in ("info", "warning", "critical")
        assert card["source"]["label"]
        if card.get("suggestions"):
            assert card["selectionBehavior"] in ("at-most-one", "any")
            assert all(s["label"] and s["actions"] for s in card["suggestions"])
        for reason in card.get("overrideReasons", []):
            assert reason["system"] and reason["code"] and reason["display"]
        for link in card.get("links", []):
            assert link["type"] in ("absolute", "smart") and link["url"].startswith("https://")
        assert None not in card.values()


# --- discovery --------------------------------------------------------------------------------


async def test_discovery_lists_every_service_with_prefetch_in_the_allowed_query_forms(make_cds: Any) -> None:
    cds = await make_cds()
    url = f"{CDS}/cds-services"
    response = await cds.client.get(url, headers={"Authorization": f"Bearer {cds.token(url)}"})
    services = {s["id"]: s for s in response.json()["services"]}
    assert {(k, s["hook"]) for k, s in services.items()} == {
        ("patient-greeting", "patient-view"),
        ("abnormal-results", "patient-view"),
        ("medication-safety", "order-sign"),
        ("medication-safety-select", "order-select"),
    }
    for service in services.values():
        assert service["description"] and service["title"]
        for template in service["prefetch"].values():
            path, _, query = template.partition("?")
            assert "{{context.patientId}}" in template and ".." not in template
            for param in filter(None, query.split("&")):
                name, _, _ = param.partition("=")
                assert name in ("patient", "category", "status", "_sort", "_count"), template
            assert path.count("/") <= 1


# --- patient-view: abnormal-results ---------------------------------------------------------


async def test_abnormal_results_come_from_prefetch_with_a_suggestion_to_order_the_follow_up(make_cds: Any) -> None:
    cds = await make_cds()
    data = generate(9)
    patient = diabetic_patient(data)
    prefetch = {"labs": observations(data, patient, "laboratory"), "vitals": observations(data, patient, "vital-signs")}
    response = await cds.hook("abnormal-results", body("patient-view", patient, prefetch=prefetch))
    assert response.status_code == 200
    cards = response.json()["cards"]
    assert_valid_cards(cards)
    hba1c = next(c for c in cards if c["summary"].startswith("HbA1c "))
    assert hba1c["indicator"] in ("warning", "critical") and "repeat overdue" in hba1c["summary"]
    assert hba1c["selectionBehavior"] == "at-most-one" and len(hba1c["overrideReasons"]) == 3
    (suggestion,) = hba1c["suggestions"]
    (action,) = suggestion["actions"]
    order = action["resource"]
    assert action["type"] == "create" and order["resourceType"] == "ServiceRequest"
    assert order["code"]["coding"][0]["code"] == "4548-4" and order["status"] == "draft"
    assert order["subject"] == {"reference": f"Patient/{patient}"}
    assert order["requester"] == {"reference": "Practitioner/u1"}
    assert order["reasonReference"][0]["reference"].startswith("Observation/")
    assert cds.outbound == []  # everything came from prefetch


async def test_every_demo_users_first_patient_gets_a_card_with_a_suggestion(make_cds: Any) -> None:
    cds = await make_cds()
    data = generate(30)  # what `mockehr up` seeds
    for practitioner in data.practitioners:
        patient = practitioner.patient_ids[0]  # the patient `up` prints next to the login
        prefetch = {
            "labs": observations(data, patient, "laboratory"),
            "vitals": observations(data, patient, "vital-signs"),
        }
        response = await cds.hook("abnormal-results", body("patient-view", patient, prefetch=prefetch))
        cards = response.json()["cards"]
        assert any(c.get("suggestions") for c in cards), practitioner.username
        assert_valid_cards(cards)


def synthea_prefetch(fixtures_dir: Path, name: str) -> dict[str, Any]:
    """A Synthea patient's record as the EHR would prefetch it for patient-view."""
    (path,) = (fixtures_dir / "synthea-r4").glob(f"{name}_*.json")
    found = [e["resource"] for e in json.loads(path.read_text())["entry"]]
    (patient,) = [r for r in found if r["resourceType"] == "Patient"]

    def category(obs: dict[str, Any]) -> str:
        return str(obs.get("category", [{}])[0].get("coding", [{}])[0].get("code"))

    obs = [r for r in found if r["resourceType"] == "Observation"]
    return {
        "patient": patient,
        "labs": searchset([o for o in obs if category(o) == "laboratory"]),
        "vitals": searchset([o for o in obs if category(o) == "vital-signs"]),
    }


async def test_a_deceased_synthea_patient_gets_no_greeting_as_living_and_no_overdue_repeat_or_order(
    make_cds: Any, fixtures_dir: Path
) -> None:
    cds = await make_cds()
    prefetch = synthea_prefetch(fixtures_dir, "Stephen_McLaughlin")
    pid = prefetch["patient"]["id"]
    living = await cds.hook("abnormal-results", body("patient-view", pid, prefetch=prefetch))
    prefetch["patient"]["deceasedDateTime"] = "2020-01-31T09:00:00-05:00"

    results = await cds.hook("abnormal-results", body("patient-view", pid, prefetch=prefetch))
    greeting = await cds.hook("patient-greeting", body("patient-view", pid, prefetch=prefetch))

    # Alive, his last blood pressure (170.8/108.0 mm[Hg]) makes a card with an order to repeat it.
    [card] = living.json()["cards"]
    assert card["summary"] == "Blood pressure 171/108 mmHg on 2019-05-04 is high; repeat overdue"
    assert card["suggestions"][0]["actions"][0]["resource"]["resourceType"] == "ServiceRequest"
    # Deceased: nothing to repeat or order, and the record is described, not greeted.
    assert results.status_code == 200 and results.json() == {"cards": []}
    assert [c["summary"] for c in greeting.json()["cards"]] == [
        "Record of Stephen McLaughlin, deceased 2020-01-31 aged 40"
    ]
    assert cds.outbound == []


def _obs(code: str, value: float, unit: str, when: str, status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"o-{code}-{when}",
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def _bp(systolic: int, diastolic: int, when: str) -> dict[str, Any]:
    def component(code: str, value: int) -> dict[str, Any]:
        quantity = {"value": value, "unit": "mmHg", "code": "mm[Hg]"}
        return {"code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "valueQuantity": quantity}

    return {
        "resourceType": "Observation",
        "id": f"bp-{when}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "55284-4"}]},
        "effectiveDateTime": when,
        "component": [component("8480-6", systolic), component("8462-4", diastolic)],
    }


@pytest.mark.parametrize(
    ("labs", "vitals", "expected"),
    [
        pytest.param(
            [_obs("4548-4", 8.1, "%", "2025-01-01"), _obs("4548-4", 5.4, "%", "2025-06-01")], [], [], id="latest-normal"
        ),
        pytest.param(
            [_obs("4548-4", 5.4, "%", "2025-01-01"), _obs("4548-4", 8.1, "%", "2025-06-01")],
            [],
            ["warning"],
            id="latest-high",
        ),
        pytest.param([_obs("4548-4", 9.6, "%", "2025-06-01")], [], ["critical"], id="very-high"),
        pytest.param([_obs("4548-4", 64.0, "mmol/mol", "2025-06-01")], [], [], id="other-unit-not-compared"),
        pytest.param([_obs("4548-4", 9.6, "%", "2025-06-01", status="entered-in-error")], [], [], id="not-final"),
        pytest.param([_obs("18262-6", 195, "mg/dL", "2025-06-01")], [], ["critical"], id="ldl-very-high"),
        pytest.param([], [_bp(128, 78, "2025-06-01")], [], id="bp-normal"),
        pytest.param([], [_bp(128, 95, "2025-06-01")], ["warning"], id="bp-diastolic-high"),
        pytest.param([], [_bp(185, 95, "2025-06-01"), _bp(120, 70, "2025-01-01")], ["critical"], id="bp-crisis"),
    ],
)
async def test_only_a_latest_final_result_above_threshold_makes_a_card(
    make_cds: Any, labs: list[dict[str, Any]], vitals: list[dict[str, Any]], expected: list[str]
) -> None:
    cds = await make_cds()
    prefetch = {"labs": searchset(labs), "vitals": searchset(vitals)}
    response = await cds.hook("abnormal-results", body("patient-view", "p1", prefetch=prefetch))
    assert [c["indicator"] for c in response.json()["cards"]] == expected


async def test_missing_prefetch_is_fetched_from_the_fhir_server_with_the_given_token(
    make_cds: Any, fhir: FhirHarness
) -> None:
    cds = await make_cds(fhir)
    patient = diabetic_patient(fhir.data)
    token = await fhir.token(SCOPE, patient=patient, user=fhir.practitioner(0), client_id="cds-example", act="ehr")
    auth = {"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": SCOPE, "subject": "cds-example"}
    # "labs" arrives as prefetch, "vitals" does not: only "vitals" is fetched.
    prefetch = {"labs": observations(fhir.data, patient, "laboratory")}
    response = await cds.hook(
        "abnormal-results",
        body(
            "patient-view", patient, fhirServer=FHIR, fhirAuthorization={**auth, "patient": patient}, prefetch=prefetch
        ),
    )
    assert response.status_code == 200, response.text
    (call,) = cds.called("fhir.test")
    assert call.url.path == "/fhir/Observation" and call.url.params["patient"] == patient
    assert call.url.params["category"] == "vital-signs" and call.headers["authorization"] == f"Bearer {token}"
    # Same cards as with everything prefetched.
    full = {"labs": prefetch["labs"], "vitals": observations(fhir.data, patient, "vital-signs")}
    expected = await cds.hook("abnormal-results", body("patient-view", patient, prefetch=full))
    assert [c["summary"] for c in response.json()["cards"]] == [c["summary"] for c in expected.json()["cards"]]
    assert any(c["summary"].startswith("HbA1c") for c in response.json()["cards"])


async def test_a_token_the_fhir_server_refuses_gives_412_and_no_card(make_cds: Any, fhir: FhirHarness) -> None:
    cds = await make_cds(fhir)
    mine, other = fhir.patient_of(0), fhir.patient_of(1)
    token = await fhir.token(SCOPE, patient=other, user=fhir.practitioner(1), client_id="cds-example", act="ehr")
    auth = {"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": SCOPE, "subject": "cds-example"}
    response = await cds.hook("patient-greeting", body("patient-view", mine, fhirServer=FHIR, fhirAuthorization=auth))
    assert response.status_code == 412 and "cards" not in response.json()
    assert len(cds.called("fhir.test")) == 1


async def test_without_prefetch_or_fhir_authorization_the_answer_is_412(make_cds: Any) -> None:
    cds = await make_cds()
    for service, hook, extra in (
        ("patient-greeting", "patient-view", {}),
        ("abnormal-results", "patient-view", {"prefetch": {"labs": searchset([])}}),
        ("medication-safety", "order-sign", {"context": {"draftOrders": drafts(draft("d1", "723", "amoxicillin"))}}),
    ):
        response = await cds.hook(service, body(hook, "p1", fhirServer=FHIR, **extra))
        assert response.status_code == 412, service
        assert response.json()["error"] == "precondition_failed"
    assert cds.outbound == []


@pytest.mark.parametrize(
    "server",
    [
        EVIL,
        "https://fhir.test.evil.test/fhir",
        "https://fhir.test/fhir@evil.test/fhir",
        "https://evil.test/fhir?x=https://fhir.test/fhir",
        "http://fhir.test/fhir",
        "https://fhir.test:8443/fhir",
        "https://fhir.test/other",
        "https://169.254.169.254/latest",
    ],
)
async def test_a_fhir_server_not_on_the_allow_list_receives_nothing(make_cds: Any, server: str) -> None:
    cds = await make_cds()  # every host, allowed or not, is a recording server that would answer
    auth = {"access_token": "tok", "token_type": "Bearer", "expires_in": 300, "scope": SCOPE, "subject": "cds-example"}
    response = await cds.hook("abnormal-results", body("patient-view", "p1", fhirServer=server, fhirAuthorization=auth))
    assert response.status_code == 412
    assert cds.outbound == []  # neither the named server nor any other was called
    # The positive control: the allow-listed server is called with the same request.
    response = await cds.hook("abnormal-results", body("patient-view", "p1", fhirServer=FHIR, fhirAuthorization=auth))
    assert response.status_code == 200
    assert {(r.url.host, r.url.path) for r in cds.outbound} == {
        ("fhir.test", "/fhir/Observation"),
        ("fhir.test", "/fhir/Patient/p1"),
    }


async def test_a_trailing_slash_on_an_allowed_fhir_server_is_the_same_server(make_cds: Any, fhir: FhirHarness) -> None:
    cds = await make_cds(fhir)
    patient = fhir.patient_of(0)
    token = await fhir.token(SCOPE, patient=patient, user=fhir.practitioner(0), client_id="cds-example", act="ehr")
    auth = {"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": SCOPE, "subject": "cds-example"}
    response = await cds.hook(
        "patient-greeting", body("patient-view", patient, fhirServer=FHIR + "/", fhirAuthorization=auth)
    )
    assert response.status_code == 200 and response.json()["cards"][0]["summary"].startswith("Now seeing: ")
    assert [r.url.path for r in cds.called("fhir.test")] == [f"/fhir/Patient/{patient}"]


async def test_a_prefetch_error_is_fetched_again_but_a_null_read_is_final(make_cds: Any, fhir: FhirHarness) -> None:
    cds = await make_cds(fhir)
    patient = fhir.patient_of(0)
    token = await fhir.token(SCOPE, patient=patient, user=fhir.practitioner(0), client_id="cds-example", act="ehr")
    auth = {"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": SCOPE, "subject": "cds-example"}
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    request = body("patient-view", patient, fhirServer=FHIR, fhirAuthorization=auth, prefetch={"patient": outcome})
    response = await cds.hook("patient-greeting", request)
    seeded = next(e["resource"] for e in fhir.data.bundle["entry"] if e["resource"]["id"] == patient)
    assert response.status_code == 200
    assert response.json()["cards"][0]["summary"].startswith(f"Now seeing: {seeded['name'][0]['text']}, ")
    assert [r.url.path for r in cds.called("fhir.test")] == [f"/fhir/Patient/{patient}"]
    # §Prefetch: null means the client's read found nothing; asking again would not help.
    request = body("patient-view", patient, fhirServer=FHIR, fhirAuthorization=auth, prefetch={"patient": None})
    assert (await cds.hook("patient-greeting", request)).status_code == 412
    assert len(cds.called("fhir.test")) == 1


@pytest.mark.parametrize(
    ("context", "extra"),
    [
        pytest.param({"patientId": "1&_id=2"}, {}, id="patient-id-with-a-query"),
        pytest.param({"patientId": "../Observation"}, {}, id="patient-id-with-a-path"),
        pytest.param({"patientId": 7}, {}, id="patient-id-not-a-string"),
        pytest.param(
            {"patientId": "p1"},
            {
                "fhirAuthorization": {
                    "access_token": "tok-SECRET",
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "s",
                    "subject": "c",
                    "patient": "p2",
                }
            },
            id="token-for-another-patient",
        ),
        pytest.param(
            {"patientId": "p1"},
            {
                "fhirAuthorization": {
                    "access_token": "tok-SECRET",
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "s",
                    "subject": "c",
                }
            },
            id="token-without-fhir-server",
        ),
    ],
)
async def test_a_context_that_could_steer_a_query_is_refused_before_any_call(
    make_cds: Any, context: dict[str, Any], extra: dict[str, Any]
) -> None:
    cds = await make_cds()
    request = {"hook": "patient-view", "hookInstance": new_jti(), "context": context, **extra}
    if "fhirAuthorization" in extra and extra["fhirAuthorization"].get("patient"):
        request["fhirServer"] = FHIR
    response = await cds.hook("patient-greeting", request)
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert "tok-SECRET" not in response.text  # the token is never echoed
    assert cds.outbound == []


async def test_the_access_token_is_never_logged(
    make_cds: Any, fhir: FhirHarness, caplog: pytest.LogCaptureFixture
) -> None:
    cds = await make_cds(fhir)
    patient = fhir.patient_of(0)
    token = await fhir.token(SCOPE, patient=fhir.patient_of(1), user=fhir.practitioner(1), client_id="cds-example")
    auth = {"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": SCOPE, "subject": "cds-example"}
    with caplog.at_level("DEBUG"):
        for server in (FHIR, EVIL):
            await cds.hook("abnormal-results", body("patient-view", patient, fhirServer=server, fhirAuthorization=auth))
    assert caplog.records and all(token not in r.getMessage() for r in caplog.records)
    assert token.split(".")[2] not in caplog.text


JUNK_RESOURCES: list[Any] = [
    5,
    "x",
    None,
    {"resource": 3},
    {"resource": {"resourceType": "Observation", "status": "final", "code": 7, "component": "x"}},
    {"resource": {"resourceType": "Observation", "status": "final", "code": {"coding": 5}, "effectivePeriod": "x"}},
    {
        "resource": {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
            "effectiveDateTime": "not-a-date",
            "valueQuantity": {"value": "9", "code": "%"},
        }
    },
    {"resource": {"resourceType": "AllergyIntolerance", "code": "penicillin", "reaction": {"a": 1}}},
    {"resource": {"resourceType": "AllergyIntolerance", "code": {"text": 5}, "reaction": [5, {"manifestation": 3}]}},
    {"resource": {"resourceType": "MedicationRequest", "status": "active", "medicationCodeableConcept": []}},
]


@pytest.mark.parametrize(
    "bundle",
    [
        {"resourceType": "Bundle", "entry": 5},
        {"resourceType": "Bundle", "entry": "x"},
        {"resourceType": "Bundle", "entry": JUNK_RESOURCES},
        {"resourceType": "Patient", "name": 3},
        [],
        "x",
    ],
)
async def test_oddly_shaped_data_never_crashes_the_service(make_cds: Any, bundle: Any) -> None:
    cds = await make_cds()
    keys = ("patient", "labs", "vitals", "allergies", "medications")
    prefetch = dict.fromkeys(keys, bundle)
    order = {**draft("d1", "723", "amoxicillin"), "medicationCodeableConcept": {"coding": 5, "text": 7}}
    weird_drafts = {"resourceType": "Bundle", "entry": [5, {"resource": order}, {"resource": draft("d2", "1", "x")}]}
    for service, hook, context in (
        ("patient-greeting", "patient-view", {}),
        ("abnormal-results", "patient-view", {}),
        ("medication-safety", "order-sign", {"draftOrders": weird_drafts}),
        ("medication-safety-select", "order-select", {"draftOrders": weird_drafts, "selections": ["x", 5]}),
    ):
        response = await cds.hook(service, body(hook, "p1", context=context, prefetch=prefetch))
        assert response.status_code in (200, 400, 412), (service, response.text)
        if response.status_code == 200:
            assert_valid_cards(response.json()["cards"])


# --- order-sign / order-select: medication-safety ---------------------------------------------


async def test_a_draft_in_an_allergy_class_gets_a_critical_card_a_removal_and_a_smart_link(make_cds: Any) -> None:
    cds = await make_cds()
    order = draft("d1", "562251", "Amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet")
    prefetch = {"allergies": searchset([PENICILLIN_ALLERGY]), "medications": searchset([])}
    response = await cds.hook(
        "medication-safety", body("order-sign", "p1", context={"draftOrders": drafts(order)}, prefetch=prefetch)
    )
    (card,) = response.json()["cards"]
    assert_valid_cards([card])
    assert card["indicator"] == "critical" and "penicillin G" in card["summary"]
    assert "penicillins" in card["summary"] and "Anaphylaxis" in card["detail"]
    (suggestion,) = card["suggestions"]
    assert suggestion["actions"] == [
        {"type": "delete", "description": suggestion["actions"][0]["description"], "resourceId": "MedicationRequest/d1"}
    ]
    (link,) = card["links"]
    assert link["type"] == "smart" and link["url"] == SMART_LAUNCH
    assert json.loads(link["appContext"]) == {
        "patient": "p1",
        "issue": "drug-allergy",
        "draftOrder": "MedicationRequest/d1",
    }
    assert len(link["appContext"]) < 200


async def test_a_draft_of_an_active_medication_is_duplicate_therapy(make_cds: Any) -> None:
    cds = await make_cds()
    orders = drafts(draft("d1", "314076", "lisinopril 10 MG Oral Tablet"), draft("d2", "197361", "amlodipine 5 MG"))
    prefetch = {"allergies": searchset([]), "medications": searchset([ACTIVE_LISINOPRIL])}
    response = await cds.hook(
        "medication-safety", body("order-sign", "p1", context={"draftOrders": orders}, prefetch=prefetch)
    )
    (card,) = response.json()["cards"]
    assert card["indicator"] == "warning" and card["summary"].startswith("Duplicate therapy: lisinopril")
    assert card["suggestions"][0]["actions"][0]["resourceId"] == "MedicationRequest/d1"
    assert json.loads(card["links"][0]["appContext"])["issue"] == "duplicate-therapy"


async def test_an_inactive_or_refuted_allergy_and_unrelated_drugs_give_no_card(make_cds: Any) -> None:
    cds = await make_cds()
    resolved = {**PENICILLIN_ALLERGY, "clinicalStatus": {"coding": [{"code": "resolved"}]}}
    refuted = {**PENICILLIN_ALLERGY, "id": "a2", "verificationStatus": {"coding": [{"code": "refuted"}]}}
    orders = drafts(draft("d1", "723", "amoxicillin 500 MG Oral Capsule"), draft("d2", "860975", "metformin 500 MG"))
    prefetch = {"allergies": searchset([resolved, refuted]), "medications": searchset([ACTIVE_LISINOPRIL])}
    response = await cds.hook(
        "medication-safety", body("order-sign", "p1", context={"draftOrders": orders}, prefetch=prefetch)
    )
    assert response.status_code == 200 and response.json() == {"cards": []}


async def test_order_select_checks_only_the_selected_drafts(make_cds: Any) -> None:
    cds = await make_cds()
    orders = drafts(draft("d1", "723", "amoxicillin 500 MG"), draft("d2", "314076", "lisinopril 10 MG Oral Tablet"))
    prefetch = {"allergies": searchset([PENICILLIN_ALLERGY]), "medications": searchset([ACTIVE_LISINOPRIL])}
    context = {"draftOrders": orders, "selections": ["MedicationRequest/d2"]}
    response = await cds.hook(
        "medication-safety-select", body("order-select", "p1", context=context, prefetch=prefetch)
    )
    (card,) = response.json()["cards"]
    assert card["summary"].startswith("Duplicate therapy")


async def test_no_draft_medication_means_no_card_and_no_data_needed(make_cds: Any) -> None:
    cds = await make_cds()
    empty = {"resourceType": "Bundle", "type": "collection", "entry": []}
    response = await cds.hook("medication-safety", body("order-sign", "p1", context={"draftOrders": empty}))
    assert response.status_code == 200 and response.json() == {"cards": []}


@pytest.mark.parametrize(
    "context",
    [{}, {"draftOrders": []}, {"draftOrders": {"resourceType": "Patient"}}],
    ids=["missing", "a-list", "not-a-bundle"],
)
async def test_draft_orders_that_are_not_a_bundle_are_a_bad_request(make_cds: Any, context: dict[str, Any]) -> None:
    cds = await make_cds()
    response = await cds.hook("medication-safety", body("order-sign", "p1", context=context))
    assert response.status_code == 400 and "draftOrders" in response.json()["message"]


async def test_order_sign_falls_back_to_the_fhir_server_for_a_seeded_patient(make_cds: Any, fhir: FhirHarness) -> None:
    cds = await make_cds(fhir)
    user, patient, active = next(
        (fhir.practitioner(i), pid, meds[0])
        for i, p in enumerate(fhir.data.practitioners)
        for pid in p.patient_ids
        if (meds := resources(fhir.data, "MedicationRequest", pid))
    )
    token = await fhir.token(SCOPE, patient=patient, user=user, client_id="cds-example", act="ehr")
    auth = {"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": SCOPE, "subject": "cds-example"}
    concept = active["medicationCodeableConcept"]
    order = draft("d1", concept["coding"][0]["code"], concept["text"], patient)
    response = await cds.hook(
        "medication-safety",
        body("order-sign", patient, context={"draftOrders": drafts(order)}, fhirServer=FHIR, fhirAuthorization=auth),
    )
    assert response.status_code == 200, response.text
    summaries = [c["summary"] for c in response.json()["cards"]]
    assert f"Duplicate therapy: {concept['text']} is already active"[:139] in summaries
    assert sorted(r.url.path for r in cds.called("fhir.test")) == [
        "/fhir/AllergyIntolerance",
        "/fhir/MedicationRequest",
    ]


# --- requests from the spec's samples ---------------------------------------------------------


@pytest.mark.parametrize("name", ["order-sign-good", "order-select-good", "patient-view-good", "pv-good"])
async def test_the_spec_sample_requests_are_answered_from_prefetch(
    make_cds: Any, fixtures_dir: Path, name: str
) -> None:
    cds = await make_cds()
    request = json.loads((fixtures_dir / "cds-hooks" / f"cdshooks-request-{name}.json").read_text())
    service = {"order-sign": "medication-safety", "order-select": "medication-safety-select"}.get(request["hook"])
    prefetch = {
        "patient": {"resourceType": "Patient", "id": request["context"]["patientId"]},
        "allergies": searchset([]),
        "medications": searchset([]),
        "labs": searchset([]),
        "vitals": searchset([]),
    }
    request["prefetch"] = prefetch
    response = await cds.hook(service or "abnormal-results", request)
    assert response.status_code == 200, response.text
    assert_valid_cards(response.json()["cards"])
    assert cds.outbound == []  # their fhirServer (http://localhost:8080) is not on the allow-list


@pytest.mark.parametrize("name", ["order-sign-bad-1", "order-sign-bad-2", "order-select-bad", "patient-view-bad"])
async def test_the_spec_sample_bad_requests_are_refused(make_cds: Any, fixtures_dir: Path, name: str) -> None:
    cds = await make_cds()
    request = json.loads((fixtures_dir / "cds-hooks" / f"cdshooks-request-{name}.json").read_text())
    service = {"order-sign": "medication-safety", "order-select": "medication-safety-select"}.get(request["hook"])
    response = await cds.hook(service or "abnormal-results", request)
    assert response.status_code == 400
    assert cds.outbound == []


@pytest.mark.parametrize(
    "request_body",
    [
        pytest.param("not json", id="not-json"),
        pytest.param([], id="a-list"),
        pytest.param({"hook": "order-sign", "hookInstance": "x", "context": {"patientId": "p1"}}, id="wrong-hook"),
        pytest.param({"hook": "patient-view", "context": {"patientId": "p1"}}, id="no-hook-instance"),
        pytest.param({"hook": "patient-view", "hookInstance": "x"}, id="no-context"),
    ],
)
async def test_a_malformed_hook_request_is_a_bad_request(make_cds: Any, request_body: Any) -> None:
    cds = await make_cds()
    url = f"{CDS}/cds-services/patient-greeting"
    headers = {"Authorization": f"Bearer {cds.token(url)}", "Content-Type": "application/json"}
    content = request_body if isinstance(request_body, str) else json.dumps(request_body)
    response = await cds.client.post(url, content=content, headers=headers)
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


async def test_an_oversized_body_is_refused_before_it_is_parsed(make_cds: Any) -> None:
    cds = await make_cds()
    url = f"{CDS}/cds-services/patient-greeting"
    padding = "x" * (5 * 1024 * 1024)
    response = await cds.client.post(
        url,
        json={**body("patient-view", "p1"), "extension": {"pad": padding}},
        headers={"Authorization": f"Bearer {cds.token(url)}"},
    )
    assert response.status_code == 413


async def test_an_unknown_service_is_404_once_authenticated(make_cds: Any) -> None:
    cds = await make_cds()
    response = await cds.hook("no-such-service", body("patient-view", "p1"))
    assert response.status_code == 404


# --- feedback (§Feedback): validated, checked against the card it names, recorded all-or-nothing ---

NOW = "2026-11-30T10:00:00Z"


async def _issued_card(cds: Cds) -> dict[str, Any]:
    labs = searchset(
        [
            {
                "resourceType": "Observation",
                "id": "o1",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                "effectiveDateTime": "2025-06-01",
                "valueQuantity": {"value": 8.2, "unit": "%", "code": "%"},
            }
        ]
    )
    response = await cds.hook(
        "abnormal-results", body("patient-view", "p1", prefetch={"labs": labs, "vitals": searchset([])})
    )
    (card,) = response.json()["cards"]
    return dict(card)


def _recorded(cds: Cds) -> list[dict[str, Any]]:
    return list(cds_state(cds.app).feedback.entries)


async def test_accepted_feedback_for_an_issued_card_and_its_suggestion_is_recorded(make_cds: Any) -> None:
    cds = await make_cds()
    card = await _issued_card(cds)
    suggestion = card["suggestions"][0]["uuid"]
    item = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": suggestion}],
        "outcomeTimestamp": NOW,
    }
    response = await cds.feedback("abnormal-results", {"feedback": [item]})
    assert response.status_code == 200 and response.content == b""
    (entry,) = _recorded(cds)
    assert entry["card"] == card["uuid"] and entry["outcome"] == "accepted" and entry["matched"] is True
    assert entry["acceptedSuggestions"] == [suggestion]


async def test_overridden_feedback_with_an_offered_reason_is_recorded(make_cds: Any) -> None:
    cds = await make_cds()
    card = await _issued_card(cds)
    reason = card["overrideReasons"][1]
    item = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": reason, "userComment": "Discussed today"},
        "outcomeTimestamp": NOW,
    }
    assert (await cds.feedback("abnormal-results", {"feedback": [item]})).status_code == 200
    (entry,) = _recorded(cds)
    assert entry["overrideReason"] == reason["code"] and entry["userComment"] == "Discussed today"


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    url = os.environ.get("MOCKEHR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    client = Redis.from_url(url, socket_connect_timeout=3)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Redis not reachable at {url}: {exc}")
        pytest.skip(f"Redis not reachable at {url}")
    await client.aclose()
    yield url


async def test_feedback_reaching_another_replica_is_checked_against_the_card_the_first_one_issued(
    make_cds: Any, redis_url: str
) -> None:
    issuer, other = await make_cds(redis_url=redis_url), await make_cds(redis_url=redis_url)
    card = await _issued_card(issuer)
    suggestion = card["suggestions"][0]["uuid"]
    good = {"card": card["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": suggestion}]}
    forged = {"card": card["uuid"], "outcome": "accepted", "acceptedSuggestions": [{"id": "not-offered"}]}
    refused = await other.feedback("abnormal-results", {"feedback": [{**forged, "outcomeTimestamp": NOW}]})
    assert refused.status_code == 400 and "has no suggestion not-offered" in refused.json()["message"]
    accepted = await other.feedback("abnormal-results", {"feedback": [{**good, "outcomeTimestamp": NOW}]})
    assert accepted.status_code == 200
    (entry,) = _recorded(other)
    assert entry["card"] == card["uuid"] and entry["matched"] is True


async def test_feedback_about_a_card_the_service_does_not_remember_is_recorded_as_unmatched(make_cds: Any) -> None:
    cds = await make_cds()
    item = {"card": "d5bf1d2a-unknown", "outcome": "accepted", "outcomeTimestamp": NOW}
    assert (await cds.feedback("patient-greeting", {"feedback": [item]})).status_code == 200
    assert _recorded(cds)[0]["matched"] is False


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            lambda c: {"acceptedSuggestions": [{"id": "not-a-suggestion-of-this-card"}]}, id="unknown-suggestion"
        ),
        pytest.param(
            lambda c: {
                "outcome": "overridden",
                "overrideReason": {"reason": {"system": c["overrideReasons"][0]["system"], "code": "made-up"}},
            },
            id="reason-not-offered",
        ),
        pytest.param(
            lambda c: {
                "outcome": "overridden",
                "overrideReason": {"reason": {"code": c["overrideReasons"][0]["code"]}},
            },
            id="reason-without-its-system",
        ),
    ],
)
async def test_feedback_inconsistent_with_the_card_is_refused_and_nothing_recorded(make_cds: Any, change: Any) -> None:
    cds = await make_cds()
    card = await _issued_card(cds)
    good = {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": NOW}
    item = {**good, **change(card)}
    response = await cds.feedback("abnormal-results", {"feedback": [good, item]})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert _recorded(cds) == []  # all or nothing


async def test_feedback_for_a_card_of_another_service_is_refused(make_cds: Any) -> None:
    cds = await make_cds()
    card = await _issued_card(cds)
    item = {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": NOW}
    response = await cds.feedback("patient-greeting", {"feedback": [item]})
    assert response.status_code == 400 and "not issued by this service" in response.json()["message"]


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({}, id="no-feedback"),
        pytest.param({"feedback": []}, id="empty-list"),
        pytest.param({"feedback": {"card": "x"}}, id="not-a-list"),
        pytest.param({"feedback": [{"outcome": "accepted", "outcomeTimestamp": NOW}]}, id="no-card"),
        pytest.param({"feedback": [{"card": "x", "outcome": "ignored", "outcomeTimestamp": NOW}]}, id="bad-outcome"),
        pytest.param({"feedback": [{"card": "x", "outcome": "accepted"}]}, id="no-timestamp"),
        pytest.param(
            {"feedback": [{"card": "x", "outcome": "accepted", "outcomeTimestamp": "2026-11-30T10:00:00"}]},
            id="timestamp-without-zone",
        ),
        pytest.param(
            {"feedback": [{"card": "x", "outcome": "accepted", "outcomeTimestamp": NOW, "overrideReason": {}}]},
            id="accepted-with-an-override-reason",
        ),
        pytest.param(
            {
                "feedback": [
                    {
                        "card": "x",
                        "outcome": "overridden",
                        "outcomeTimestamp": NOW,
                        "acceptedSuggestions": [{"id": "s"}],
                    }
                ]
            },
            id="overridden-with-accepted-suggestions",
        ),
        pytest.param(
            {"feedback": [{"card": "x", "outcome": "accepted", "outcomeTimestamp": NOW}] * 101}, id="too-many"
        ),
    ],
)
async def test_a_malformed_feedback_body_is_a_bad_request(make_cds: Any, payload: Any) -> None:
    cds = await make_cds()
    response = await cds.feedback("patient-greeting", payload)
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert _recorded(cds) == []


async def test_feedback_for_an_unknown_service_is_404(make_cds: Any) -> None:
    cds = await make_cds()
    item = {"card": "x", "outcome": "accepted", "outcomeTimestamp": NOW}
    assert (await cds.feedback("no-such-service", {"feedback": [item]})).status_code == 404
