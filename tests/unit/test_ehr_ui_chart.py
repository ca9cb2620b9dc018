"""The chart reader: nothing of a patient is read unless the Patient read with the user's token
succeeds; a refused token ends the session; the sections are built from what the server sent."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ehr.ui.chart import FhirReader, FhirUnauthorized, FhirUnavailable

FHIR = "https://fhir.test/fhir"


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


class Server:
    def __init__(self, patient_status: int = 200) -> None:
        self.patient_status = patient_status
        self.paths: list[str] = []
        self.tokens: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path.removeprefix("/fhir/"))
        self.tokens.add(request.headers["authorization"])
        path = request.url.path.removeprefix("/fhir/")
        if path == "Patient/p1":
            if self.patient_status != 200:
                return httpx.Response(self.patient_status)
            return httpx.Response(
                200, json={"resourceType": "Patient", "id": "p1", "name": [{"given": ["Ann"], "family": "Lee"}]}
            )
        if path == "Condition":
            return httpx.Response(
                200,
                json=bundle(
                    {
                        "resourceType": "Condition",
                        "id": "c1",
                        "code": {"coding": [{"display": "Diabetes"}]},
                        "clinicalStatus": {"coding": [{"code": "active"}]},
                        "onsetDateTime": "2021-02-11T00:00:00Z",
                    },
                    {"resourceType": "OperationOutcome"},  # a search outcome entry is not a row
                ),
            )
        if path == "Observation" and request.url.params.get("category") == "laboratory":
            return httpx.Response(
                200,
                json=bundle(
                    {
                        "resourceType": "Observation",
                        "id": "o1",
                        "code": {"text": "HbA1c"},
                        "valueQuantity": {"value": 9.3, "unit": "%"},
                        "effectiveDateTime": "2025-06-04",
                    }
                ),
            )
        return httpx.Response(200, json=bundle())


async def read_chart(server: Server) -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
        return await FhirReader(http, FHIR, "user-token").chart("p1")


async def test_a_patient_the_user_may_not_see_yields_no_chart_and_nothing_else_is_read() -> None:
    server = Server(patient_status=404)
    assert await read_chart(server) is None
    assert server.paths == ["Patient/p1"]


async def test_an_id_that_is_not_a_fhir_id_is_not_even_asked_for() -> None:
    server = Server()
    async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
        assert await FhirReader(http, FHIR, "user-token").chart("../Patient?_id=p1") is None
    assert server.paths == []


async def test_a_refused_token_ends_the_session_and_a_failing_server_is_unavailable() -> None:
    with pytest.raises(FhirUnauthorized):
        await read_chart(Server(patient_status=401))
    with pytest.raises(FhirUnavailable):
        await read_chart(Server(patient_status=500))


async def test_the_chart_is_read_with_the_users_token_and_shows_what_the_server_sent() -> None:
    server = Server()
    chart = await read_chart(server)
    assert server.tokens == {"Bearer user-token"}
    assert chart.name == "Ann Lee"
    assert [(r.text, r.detail, r.date) for r in chart.problems] == [("Diabetes", "active", "2021-02-11T00:00:00Z")]
    assert [(r.text, r.detail) for r in chart.labs] == [("HbA1c", "9.3 %")]
    assert chart.allergies == [] and chart.latest_encounter == ""
