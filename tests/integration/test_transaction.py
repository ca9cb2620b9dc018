"""Transaction Bundles: all or nothing, urn:uuid and conditional references, validation first."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fhirserver import storage
from fhirserver.errors import FhirError, InvalidResourceError, PreconditionFailedError, UnsupportedTypeError
from fhirserver.models import ReferenceIndexRow, ResourceRow, ResourceVersionRow
from fhirserver.transaction import process_transaction
from mockehr.loader import load_files

Sessions = async_sessionmaker[AsyncSession]
NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
NPI = "http://hl7.org/fhir/sid/us-npi"


def _bundle(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def _post(resource: dict[str, Any], full_url: str | None = None, if_none_exist: str | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"method": "POST", "url": resource["resourceType"]}
    if if_none_exist:
        request["ifNoneExist"] = if_none_exist
    entry: dict[str, Any] = {"resource": resource, "request": request}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def _practitioner(npi: str) -> dict[str, Any]:
    return {"resourceType": "Practitioner", "identifier": [{"system": NPI, "value": npi}], "name": [{"family": "Who"}]}


async def _apply(sessions: Sessions, bundle: dict[str, Any]) -> dict[str, Any]:
    async with sessions() as session, session.begin():
        return await process_transaction(session, bundle, now=NOW)


async def _count(sessions: Sessions, table: Any = ResourceRow) -> int:
    async with sessions() as session:
        return int((await session.execute(select(func.count()).select_from(table))).scalar_one())


async def _read(sessions: Sessions, location: str) -> dict[str, Any]:
    rtype, rid = location.split("/")[:2]
    async with sessions() as session:
        row = await storage.read_current(session, rtype, rid)
    assert row is not None and row.content is not None
    return json.loads(row.content)  # type: ignore[no-any-return]


async def test_urn_uuid_references_are_rewritten_to_the_assigned_ids(sessions: Sessions) -> None:
    bundle = _bundle(
        _post({"resourceType": "Patient", "name": [{"family": "Doe"}], "gender": "female"}, "urn:uuid:p1"),
        _post(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "hr"},
                "subject": {"reference": "urn:uuid:p1"},
            },
            "urn:uuid:o1",
        ),
    )
    response = await _apply(sessions, bundle)
    patient_loc, obs_loc = (e["response"]["location"] for e in response["entry"])
    assert [e["response"]["status"] for e in response["entry"]] == ["201 Created", "201 Created"]
    patient_id = patient_loc.split("/")[1]
    observation = await _read(sessions, obs_loc)
    assert observation["subject"] == {"reference": f"Patient/{patient_id}"}
    assert observation["meta"]["versionId"] == "1"
    assert observation["meta"]["lastUpdated"] == "2026-11-01T12:00:00.000Z"
    async with sessions() as session:
        refs = (await session.execute(select(ReferenceIndexRow))).scalars().all()
    assert [(r.resource_type, r.path, r.target_type, r.target_id) for r in refs] == [
        ("Observation", "subject", "Patient", patient_id)
    ]


async def test_conditional_create_matches_the_existing_resource_instead_of_duplicating(sessions: Sessions) -> None:
    first = await _apply(sessions, _bundle(_post(_practitioner("42"), if_none_exist=f"identifier={NPI}|42")))
    again = await _apply(sessions, _bundle(_post(_practitioner("42"), if_none_exist=f"identifier={NPI}|42")))
    assert first["entry"][0]["response"]["status"] == "201 Created"
    assert again["entry"][0]["response"]["status"] == "200 OK"
    assert again["entry"][0]["response"]["location"] == first["entry"][0]["response"]["location"]
    assert await _count(sessions) == 1


async def test_a_conditional_reference_resolves_to_the_one_matching_resource(sessions: Sessions) -> None:
    created = await _apply(sessions, _bundle(_post(_practitioner("7"))))
    practitioner = created["entry"][0]["response"]["location"].rsplit("/_history", 1)[0]
    patient = {
        "resourceType": "Patient",
        "generalPractitioner": [{"reference": f"Practitioner?identifier={NPI}|7"}],
    }
    response = await _apply(sessions, _bundle(_post(patient)))
    stored = await _read(sessions, response["entry"][0]["response"]["location"])
    assert stored["generalPractitioner"] == [{"reference": practitioner}]


async def test_an_ambiguous_conditional_reference_fails_the_whole_transaction(sessions: Sessions) -> None:
    await _apply(sessions, _bundle(_post(_practitioner("9")), _post(_practitioner("9"))))
    before = await _count(sessions)
    bundle = _bundle(
        _post({"resourceType": "Patient", "name": [{"family": "Kept-out"}]}),
        _post({"resourceType": "Patient", "generalPractitioner": [{"reference": f"Practitioner?identifier={NPI}|9"}]}),
    )
    with pytest.raises(PreconditionFailedError) as caught:
        await _apply(sessions, bundle)
    assert caught.value.status == 412
    assert caught.value.issues[0].code == "multiple-matches"
    assert await _count(sessions) == before


async def test_an_invalid_resource_anywhere_means_nothing_is_stored(sessions: Sessions) -> None:
    bundle = _bundle(
        _post({"resourceType": "Patient", "name": [{"family": "Fine"}]}),
        _post({"resourceType": "Patient", "birthDate": "not-a-date"}),
    )
    with pytest.raises(InvalidResourceError) as caught:
        await _apply(sessions, bundle)
    assert caught.value.issues[0].expression == ("Patient.birthDate",)
    assert caught.value.issues[0].diagnostics.startswith("Bundle.entry[1]: ")
    assert caught.value.outcome()["resourceType"] == "OperationOutcome"
    assert await _count(sessions) == 0
    assert await _count(sessions, ResourceVersionRow) == 0


async def test_a_required_binding_is_enforced(sessions: Sessions) -> None:
    with pytest.raises(InvalidResourceError) as caught:
        await _apply(sessions, _bundle(_post({"resourceType": "Patient", "gender": "robot"})))
    issue = caught.value.issues[0]
    assert (issue.code, issue.expression) == ("code-invalid", ("Patient.gender",))


async def test_a_type_the_r4b_models_lack_is_refused_clearly(sessions: Sessions) -> None:
    with pytest.raises(UnsupportedTypeError) as caught:
        await _apply(sessions, _bundle(_post({"resourceType": "MedicinalProduct"})))
    assert caught.value.issues[0].code == "not-supported"
    assert "MedicinalProduct" in caught.value.issues[0].diagnostics


async def test_a_dangling_urn_uuid_reference_is_refused(sessions: Sessions) -> None:
    bundle = _bundle(
        _post({"resourceType": "Patient", "link": [{"other": {"reference": "urn:uuid:nowhere"}, "type": "seealso"}]})
    )
    with pytest.raises(InvalidResourceError):
        await _apply(sessions, bundle)
    assert await _count(sessions) == 0


async def test_unsupported_conditional_criteria_are_refused_not_ignored(sessions: Sessions) -> None:
    with pytest.raises(FhirError) as caught:
        await _apply(sessions, _bundle(_post(_practitioner("1"), if_none_exist="frobnicate=Who")))
    assert caught.value.issues[0].code == "not-supported"


async def test_conditional_criteria_can_use_any_supported_search_parameter(sessions: Sessions) -> None:
    first = await _apply(
        sessions, _bundle(_post(_practitioner("5"), if_none_exist="family=Who&identifier=" + NPI + "|5"))
    )
    again = await _apply(
        sessions, _bundle(_post(_practitioner("5"), if_none_exist="family=Who&identifier=" + NPI + "|5"))
    )
    assert first["entry"][0]["response"]["status"] == "201 Created"
    assert again["entry"][0]["response"]["location"] == first["entry"][0]["response"]["location"]


async def test_put_updates_with_a_new_version_and_delete_leaves_a_tombstone(sessions: Sessions) -> None:
    put = {
        "resource": {"resourceType": "Patient", "id": "p-1", "gender": "male"},
        "request": {"method": "PUT", "url": "Patient/p-1"},
    }
    first = await _apply(sessions, _bundle(put))
    second = await _apply(sessions, _bundle(put))
    assert first["entry"][0]["response"]["status"] == "201 Created"
    assert second["entry"][0]["response"]["etag"] == 'W/"2"'
    deleted = await _apply(sessions, _bundle({"request": {"method": "DELETE", "url": "Patient/p-1"}}))
    assert deleted["entry"][0]["response"]["status"] == "204 No Content"
    async with sessions() as session:
        row = await storage.read_current(session, "Patient", "p-1")
        versions = (
            (await session.execute(select(ResourceVersionRow.method).order_by(ResourceVersionRow.version_id)))
            .scalars()
            .all()
        )
    assert row is not None and row.deleted and row.version_id == 3
    assert versions == ["PUT", "PUT", "DELETE"]


async def test_a_bundle_over_the_entry_cap_is_refused_before_any_work(sessions: Sessions) -> None:
    bundle = _bundle(*[_post({"resourceType": "Patient"}) for _ in range(3)])
    async with sessions() as session, session.begin():
        with pytest.raises(FhirError) as caught:
            await process_transaction(session, bundle, now=NOW, max_entries=2)
    assert caught.value.status == 413


async def test_every_synthea_bundle_loads_with_practitioners_and_hospitals_first(
    sessions: Sessions, fixtures_dir: Path
) -> None:
    folder = fixtures_dir / "synthea-r4"
    files = sorted(folder.glob("*.json"), key=lambda p: (0 if "Information" in p.name else 1, p.name))
    results = await load_files(sessions, files)
    assert [r.message for r in results if not r.ok] == []
    expected = sum(len(json.loads(p.read_bytes())["entry"]) for p in files)
    assert sum(r.created for r in results) == expected
    assert await _count(sessions) == expected
    async with sessions() as session:
        contents = (await session.execute(select(ResourceRow.content).limit(500))).scalars().all()
    assert not any("urn:uuid:" in (c or "") for c in contents)


async def test_loading_a_malformed_file_reports_it_and_stores_nothing(sessions: Sessions, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(_bundle(_post({"resourceType": "Observation", "status": "guess", "code": {"text": "x"}})))
    )
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    results = await load_files(sessions, [bad, broken])
    assert [r.ok for r in results] == [False, False]
    assert "Observation.status" in results[0].message and "nothing was stored" in results[0].message
    assert results[1].message == "not valid JSON"
    assert await _count(sessions) == 0


async def test_deleting_an_absent_resource_succeeds_without_effect(sessions: Sessions) -> None:
    response = await _apply(sessions, _bundle({"request": {"method": "DELETE", "url": "Patient/never-was"}}))
    assert response["entry"][0]["response"] == {"status": "204 No Content"}
    assert await _count(sessions) == 0
