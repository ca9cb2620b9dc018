"""Concurrent writes of one resource answer as FHIR R4 http.html "Managing Resource Contention" says.

Sixteen requests race through the in-process FHIR server on a real database of each backend:
every answer is a success, a 412 (If-Match named a version that is no longer current) or a 409
(a plain update lost the race); never a 500. No update is lost: the final version counts exactly
the successes, and the history holds every version once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.integration.fhirharness import FhirHarness

RACERS = 16


@pytest.fixture
def fhir_patients() -> int:
    return 1


async def _observation(fhir: FhirHarness, headers: dict[str, str]) -> dict[str, Any]:
    patient = fhir.data.practitioners[0].patient_ids[0]
    body = {
        "resourceType": "Observation",
        "id": "contended",
        "status": "preliminary",
        "code": {"text": "contended"},
        "subject": {"reference": f"Patient/{patient}"},
    }
    created = await fhir.client.put("/fhir/Observation/contended", json=body, headers=headers)
    assert created.status_code == 201, created.text
    return body


async def _history_versions(fhir: FhirHarness, headers: dict[str, str]) -> list[int]:
    history = await fhir.client.get("/fhir/Observation/contended/_history", headers=headers)
    assert history.status_code == 200
    return sorted(int(e["resource"]["meta"]["versionId"]) for e in history.json()["entry"])


def _assert_protocol_shaped(responses: list[httpx.Response], refused: int) -> Counter[int]:
    statuses = Counter(r.status_code for r in responses)
    for response in responses:
        assert response.headers.get("connection", "").lower() != "close"
        if response.status_code == refused:
            outcome = response.json()
            assert outcome["resourceType"] == "OperationOutcome"
            assert outcome["issue"][0]["code"] == "conflict"
    return statuses


async def test_racing_if_match_updates_answer_412_and_lose_no_update(fhir: FhirHarness) -> None:
    headers = {"Authorization": f"Bearer {await fhir.token('system/Observation.cruds')}"}
    body = await _observation(fhir, headers)

    async def read_then_update(n: int) -> httpx.Response:
        current = await fhir.client.get("/fhir/Observation/contended", headers=headers)
        change = dict(body, status="final", valueString=f"racer {n}")
        return await fhir.client.put(
            "/fhir/Observation/contended", json=change, headers={**headers, "If-Match": current.headers["etag"]}
        )

    responses = await asyncio.gather(*(read_then_update(n) for n in range(RACERS)))

    statuses = _assert_protocol_shaped(list(responses), 412)
    assert statuses[200] + statuses[412] == RACERS, statuses
    assert statuses[200] >= 1
    final = await fhir.client.get("/fhir/Observation/contended", headers=headers)
    assert int(final.json()["meta"]["versionId"]) == statuses[200] + 1
    assert await _history_versions(fhir, headers) == list(range(1, statuses[200] + 2))


async def test_racing_plain_updates_answer_200_or_409_and_lose_no_update(fhir: FhirHarness) -> None:
    headers = {"Authorization": f"Bearer {await fhir.token('system/Observation.cruds')}"}
    body = await _observation(fhir, headers)

    responses = await asyncio.gather(
        *(
            fhir.client.put("/fhir/Observation/contended", json=dict(body, valueString=f"racer {n}"), headers=headers)
            for n in range(RACERS)
        )
    )

    statuses = _assert_protocol_shaped(list(responses), 409)
    assert statuses[200] + statuses[409] == RACERS, statuses
    final = await fhir.client.get("/fhir/Observation/contended", headers=headers)
    assert int(final.json()["meta"]["versionId"]) == statuses[200] + 1
    assert final.json()["valueString"] in {r.json()["valueString"] for r in responses if r.status_code == 200}
    assert await _history_versions(fhir, headers) == list(range(1, statuses[200] + 2))


async def test_racing_creates_of_one_client_named_id_never_answer_500(fhir: FhirHarness) -> None:
    headers = {"Authorization": f"Bearer {await fhir.token('system/Observation.cruds')}"}
    patient = fhir.data.practitioners[0].patient_ids[0]
    body = {
        "resourceType": "Observation",
        "id": "contended",
        "status": "final",
        "code": {"text": "contended"},
        "subject": {"reference": f"Patient/{patient}"},
    }

    responses = await asyncio.gather(
        *(fhir.client.put("/fhir/Observation/contended", json=body, headers=headers) for _ in range(RACERS))
    )

    statuses = _assert_protocol_shaped(list(responses), 409)
    assert statuses[201] == 1, statuses
    assert statuses[200] + statuses[201] + statuses[409] == RACERS, statuses
    assert await _history_versions(fhir, headers) == list(range(1, statuses[200] + statuses[201] + 1))
