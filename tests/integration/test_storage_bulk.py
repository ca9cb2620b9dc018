"""Bulk loading (storage.bulk_create): what it stores is searchable, versioned and updatable
like anything `storage.write` stores, and an existing id fails the whole load."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fhirserver import storage
from fhirserver.compartments import Restriction
from fhirserver.models import ResourceRow, ResourceVersionRow, SearchReferenceRow
from fhirserver.search import search
from mockehr.seed import generate

Sessions = async_sessionmaker[AsyncSession]
NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
BASE = "https://fhir.test/fhir"


def _resources() -> list[dict[str, Any]]:
    return [entry["resource"] for entry in generate(3, seed=5).bundle["entry"]]


async def _count(sessions: Sessions, table: Any) -> int:
    async with sessions() as session:
        return int((await session.execute(select(func.count()).select_from(table))).scalar_one())


async def test_bulk_created_resources_are_found_by_compartment_search_like_written_ones(sessions: Sessions) -> None:
    resources = _resources()
    async with sessions() as session, session.begin():
        assert await storage.bulk_create(session, resources, now=NOW, batch=50) == len(resources)

    patient = next(r for r in resources if r["resourceType"] == "Patient")["id"]
    expected = {
        r["id"]
        for r in resources
        if r["resourceType"] == "Observation" and r["subject"]["reference"] == f"Patient/{patient}"
    }
    async with sessions() as session:
        found = await search(
            session,
            "Observation",
            [("patient", patient), ("_count", "200")],
            restriction=Restriction(allowed_patient_ids=frozenset({patient})),
            base_url=BASE,
        )
    assert expected and {r["id"] for r in found.resources} == expected
    assert all(r["meta"]["versionId"] == "1" for r in found.resources)
    assert await _count(sessions, ResourceRow) == len(resources)
    assert await _count(sessions, ResourceVersionRow) == len(resources)


async def test_a_bulk_created_resource_is_updated_to_version_two_with_its_old_index_rows_gone(
    sessions: Sessions,
) -> None:
    resources = _resources()
    async with sessions() as session, session.begin():
        await storage.bulk_create(session, resources, now=NOW)
    observation = next(r for r in resources if r["resourceType"] == "Observation")
    moved = {**observation, "subject": {"reference": "Patient/someone-else"}}
    async with sessions() as session, session.begin():
        stored, created = await storage.write(session, moved, method="PUT", now=NOW)
    assert (created, stored["meta"]["versionId"]) == (False, "2")
    async with sessions() as session:
        targets = set(
            (
                await session.execute(
                    select(SearchReferenceRow.target_id).where(
                        SearchReferenceRow.resource_id == observation["id"], SearchReferenceRow.param == "subject"
                    )
                )
            ).scalars()
        )
    assert targets == {"someone-else"}


async def test_bulk_creating_an_existing_id_fails_and_stores_nothing_of_that_load(sessions: Sessions) -> None:
    resources = _resources()
    async with sessions() as session, session.begin():
        await storage.bulk_create(session, resources[:5], now=NOW)
    with pytest.raises(IntegrityError):
        async with sessions() as session, session.begin():
            await storage.bulk_create(session, resources[3:], now=NOW)
    assert await _count(sessions, ResourceRow) == 5
