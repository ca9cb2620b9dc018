"""The search index follows writes: updates, deletes, queued rows, and the less common value types.

Each test writes a few hand-made resources into a fresh database of each backend.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fhirserver import storage
from fhirserver.compartments import Restriction, in_compartment, patients_of_practitioner
from fhirserver.models import DateIndexRow, SearchReferenceRow, TokenIndexRow
from fhirserver.search import search

Sessions = async_sessionmaker[AsyncSession]
BASE = "https://ehr.example/fhir"
NOW = dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.UTC)
LOINC = "http://loinc.org"


def _observation(oid: str, patient: str, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }


async def _put(sessions: Sessions, *resources: dict[str, Any]) -> None:
    async with sessions() as session, session.begin():
        for resource in resources:
            await storage.write(session, resource, method="PUT", now=NOW)


async def _ids(sessions: Sessions, rtype: str, params: list[tuple[str, str]], **kw: Any) -> set[str]:
    async with sessions() as session:
        found = await search(session, rtype, params, base_url=BASE, **kw)
    assert found.total == len(found.resources)
    return {r["id"] for r in found.resources}


async def test_an_update_reindexes_and_a_delete_unindexes(sessions: Sessions) -> None:
    await _put(sessions, {"resourceType": "Patient", "id": "p1"}, _observation("o1", "p1", "1111-1"))
    assert await _ids(sessions, "Observation", [("code", "1111-1")]) == {"o1"}
    await _put(sessions, _observation("o1", "p1", "2222-2"))
    assert await _ids(sessions, "Observation", [("code", "1111-1")]) == set()
    assert await _ids(sessions, "Observation", [("code", "2222-2")]) == {"o1"}
    async with sessions() as session, session.begin():
        await storage.delete(session, "Observation", "o1", now=NOW)
    assert await _ids(sessions, "Observation", [("code", "2222-2")]) == set()
    assert await _ids(sessions, "Observation", [("patient", "p1")]) == set()


async def test_rows_queued_in_a_session_are_seen_by_its_next_query(sessions: Sessions) -> None:
    async with sessions() as session:
        await storage.write(session, {"resourceType": "Patient", "id": "p1"}, method="PUT", now=NOW, is_new=True)
        await storage.write(session, _observation("o1", "p1", "1111-1"), method="PUT", now=NOW, is_new=True)
        assert await in_compartment(session, "Observation", "o1", frozenset({"p1"}))
        found = await search(session, "Observation", [("code", "1111-1")], base_url=BASE)
        assert [r["id"] for r in found.resources] == ["o1"]
        await session.rollback()
    assert await _ids(sessions, "Observation", []) == set()


async def test_a_rolled_back_write_leaves_no_rows_for_the_next_transaction(sessions: Sessions) -> None:
    async with sessions() as session:
        with contextlib.suppress(RuntimeError):
            async with session.begin():
                await storage.write(session, _observation("o1", "p1", "1111-1"), method="PUT", now=NOW, is_new=True)
                raise RuntimeError("abandon the transaction")
        async with session.begin():
            await storage.write(session, _observation("o2", "p1", "2222-2"), method="PUT", now=NOW, is_new=True)
    assert await _ids(sessions, "Observation", [("code", "1111-1,2222-2")]) == {"o2"}


async def test_patients_of_a_practitioner_come_from_general_practitioner_and_care_teams(sessions: Sessions) -> None:
    def patient(pid: str, gp: str | None) -> dict[str, Any]:
        resource: dict[str, Any] = {"resourceType": "Patient", "id": pid}
        if gp:
            resource["generalPractitioner"] = [{"reference": f"Practitioner/{gp}"}]
        return resource

    def team(tid: str, member: str, subject: str) -> dict[str, Any]:
        return {
            "resourceType": "CareTeam",
            "id": tid,
            "subject": {"reference": f"Patient/{subject}"},
            "participant": [{"member": {"reference": f"Practitioner/{member}"}}],
        }

    await _put(
        sessions,
        patient("p1", "dr-a"),
        patient("p2", "dr-b"),
        patient("p3", None),
        patient("p4", None),
        team("t1", "dr-a", "p3"),
        team("t2", "dr-b", "p4"),
    )
    async with sessions() as session:
        assert await patients_of_practitioner(session, "dr-a") == {"p1", "p3"}
        assert await patients_of_practitioner(session, "dr-b") == {"p2", "p4"}
        assert await patients_of_practitioner(session, "dr-c") == frozenset()
        assert await storage.referencing(session, "Practitioner", "dr-a", "Patient", ("generalPractitioner",)) == ["p1"]


async def test_accents_and_case_are_ignored_except_by_exact(sessions: Sessions) -> None:
    await _put(sessions, {"resourceType": "Patient", "id": "p1", "name": [{"family": "Ångström", "given": ["Zoë"]}]})
    assert await _ids(sessions, "Patient", [("name", "zoe")]) == {"p1"}
    assert await _ids(sessions, "Patient", [("family", "ANGST")]) == {"p1"}
    assert await _ids(sessions, "Patient", [("given:exact", "Zoë")]) == {"p1"}
    assert await _ids(sessions, "Patient", [("given:exact", "Zoe")]) == set()
    assert await _ids(sessions, "Patient", [("name:contains", "STRÖ")]) == {"p1"}
    assert await _ids(sessions, "Patient", [("name", "ström")]) == set()  # not the start of a part


async def test_escaped_commas_and_pipes_belong_to_the_value(sessions: Sessions) -> None:
    await _put(
        sessions,
        {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:x", "value": "a,b|c"}]},
        {"resourceType": "Patient", "id": "p2", "identifier": [{"system": "urn:x", "value": "a"}]},
    )
    assert await _ids(sessions, "Patient", [("identifier", r"urn:x|a\,b\|c")]) == {"p1"}
    assert await _ids(sessions, "Patient", [("identifier", r"urn:x|a,urn:x|zzz")]) == {"p2"}


async def test_tags_profiles_and_sources_are_searchable(sessions: Sessions) -> None:
    meta: dict[str, Any] = {
        "tag": [{"system": "urn:tags", "code": "demo"}],
        "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"],
        "source": "urn:source:a",
    }
    await _put(sessions, {"resourceType": "Patient", "id": "p1", "meta": meta}, {"resourceType": "Patient", "id": "p2"})
    assert await _ids(sessions, "Patient", [("_tag", "urn:tags|demo")]) == {"p1"}
    assert await _ids(sessions, "Patient", [("_profile", meta["profile"][0])]) == {"p1"}
    assert await _ids(sessions, "Patient", [("_source", "urn:source:a")]) == {"p1"}
    assert await _ids(sessions, "Patient", [("_tag:missing", "true")]) == {"p2"}


async def test_quantities_use_the_precision_of_the_search_value_and_ranges_their_bounds(sessions: Sessions) -> None:
    def weight(oid: str, value: float) -> dict[str, Any]:
        quantity = {"value": value, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
        return _observation(oid, "p1", "29463-7", valueQuantity=quantity)

    onset = {"low": {"value": 10, "unit": "a"}, "high": {"value": 20, "unit": "a"}}
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}, "onsetRange": onset}
    await _put(sessions, weight("o1", 100.4), weight("o2", 100.6), weight("o3", 99.0), condition)
    assert await _ids(sessions, "Observation", [("value-quantity", "100")]) == {"o1"}
    assert await _ids(sessions, "Observation", [("value-quantity", "100.0")]) == set()
    assert await _ids(sessions, "Observation", [("value-quantity", "ne100")]) == {"o2", "o3"}
    assert await _ids(sessions, "Observation", [("value-quantity", "ge100.4|http://unitsofmeasure.org|kg")]) == {
        "o1",
        "o2",
    }
    assert await _ids(sessions, "Condition", [("onset-age", "gt15")]) == {"c1"}
    assert await _ids(sessions, "Condition", [("onset-age", "lt5")]) == set()
    assert await _ids(sessions, "Condition", [("onset-age", "sa9")]) == {"c1"}


async def test_an_open_period_is_ongoing(sessions: Sessions) -> None:
    plan = {
        "resourceType": "CarePlan",
        "id": "cp1",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2020-05-01"},
    }
    await _put(sessions, plan)
    assert await _ids(sessions, "CarePlan", [("date", "ge2030-01-01")]) == {"cp1"}
    assert await _ids(sessions, "CarePlan", [("date", "lt2020-05-01")]) == set()
    assert await _ids(sessions, "CarePlan", [("date", "sa2020-04-30")]) == {"cp1"}


async def test_deceased_comes_from_the_fhirpath_fallback(sessions: Sessions) -> None:
    await _put(
        sessions,
        {"resourceType": "Patient", "id": "alive"},
        {"resourceType": "Patient", "id": "gone", "deceasedDateTime": "2020-01-01"},
        {"resourceType": "Patient", "id": "also-gone", "deceasedBoolean": True},
        {"resourceType": "Patient", "id": "not-gone", "deceasedBoolean": False},
    )
    assert await _ids(sessions, "Patient", [("deceased", "true")]) == {"gone", "also-gone"}
    assert await _ids(sessions, "Patient", [("deceased", "false")]) == {"alive", "not-gone"}


async def test_include_star_and_summary_data(sessions: Sessions) -> None:
    encounter = {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"}}
    observation = _observation("o1", "p1", "1111-1", encounter={"reference": "Encounter/e1"}, text={"div": "<div/>"})
    await _put(sessions, {"resourceType": "Patient", "id": "p1"}, encounter, observation)
    async with sessions() as session:
        found = await search(session, "Observation", [("_include", "*"), ("_summary", "data")], base_url=BASE)
    assert sorted((r["resourceType"], r["id"]) for r in found.included) == [("Encounter", "e1"), ("Patient", "p1")]
    assert "text" not in found.resources[0]


async def test_references_by_bare_id_and_to_canonical_urls(sessions: Sessions) -> None:
    plan = {
        "resourceType": "CarePlan",
        "id": "cp1",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/p1"},
        "instantiatesCanonical": ["http://example.org/PlanDefinition/diabetes|1.0"],
    }
    await _put(sessions, plan)
    assert await _ids(sessions, "CarePlan", [("subject", "p1")]) == {"cp1"}
    assert await _ids(sessions, "CarePlan", [("subject:Group", "p1")]) == set()
    canonical = "http://example.org/PlanDefinition/diabetes|1.0"
    assert await _ids(sessions, "CarePlan", [("instantiates-canonical", canonical)]) == {"cp1"}


async def test_the_compartment_of_a_coverage_comes_from_its_beneficiary(sessions: Sessions) -> None:
    coverage = {
        "resourceType": "Coverage",
        "id": "cov1",
        "status": "active",
        "beneficiary": {"reference": "Patient/p1"},
        "payor": [{"reference": "Organization/o1"}],
    }
    await _put(sessions, coverage)
    only = Restriction(allowed_patient_ids=frozenset({"p1"}))
    other = Restriction(allowed_patient_ids=frozenset({"p2"}))
    assert await _ids(sessions, "Coverage", [], restriction=only) == {"cov1"}
    assert await _ids(sessions, "Coverage", [], restriction=other) == set()


async def test_reindex_all_rebuilds_every_row(sessions: Sessions) -> None:
    await _put(sessions, {"resourceType": "Patient", "id": "p1"}, _observation("o1", "p1", "1111-1"))
    async with sessions() as session, session.begin():
        for table in (TokenIndexRow, SearchReferenceRow, DateIndexRow):
            await session.execute(delete(table))
    assert await _ids(sessions, "Observation", [("code", "1111-1")]) == set()
    async with sessions() as session, session.begin():
        assert await storage.reindex_all(session) == 2
    assert await _ids(sessions, "Observation", [("code", "1111-1"), ("patient", "p1")]) == {"o1"}
