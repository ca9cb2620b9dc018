"""Searches stay linear when PostgreSQL's statistics are stale, and bulk writes refresh them.

The planner's statistics are taken on a small table; then tens of thousands of Observations of
one patient, sharing one identifier, are written at once (no ANALYZE, autovacuum off) and
searched straight away by identifier and patient. The statistics say "1 row" for both; a
nested-loop semi-join built on that estimate costs matches × matches. The answer must be right
and the plan must be the INTERSECT shape (hashed or sorted id lists), not a semi-join.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fhirserver import storage
from fhirserver.search import search, statements
from mockehr.loader import load_files

Sessions = async_sessionmaker[AsyncSession]
NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
GROWTH = 30_000
TABLES = ("fhir_resources", "fhir_resource_versions", "fhir_token_index", "fhir_search_reference_index")


def _observation(n: int, patient: str, identifier: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{patient}-{n}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "identifier": [{"system": "urn:load-test", "value": identifier}],
    }


async def _analyze_small_then_grow(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        for table in TABLES:
            await session.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
        small = [{"resourceType": "Patient", "id": f"p{i}"} for i in range(10)]
        small += [_observation(i, f"p{i % 10}", f"id-{i}") for i in range(100)]
        await storage.bulk_create(session, small, now=NOW)
        await session.execute(text(f"ANALYZE {', '.join(TABLES)}"))
    async with sessions() as session, session.begin():
        grown = [{"resourceType": "Patient", "id": "busy"}]
        grown += [_observation(i, "busy", "shared") for i in range(GROWTH)]
        await storage.bulk_create(session, grown, now=NOW)


async def test_identifier_and_patient_search_right_after_a_bulk_write_is_not_a_nested_semi_join(
    sessions: Sessions,
) -> None:
    async with sessions() as session:
        if session.get_bind().dialect.name != "postgresql":
            pytest.skip("the planner's statistics are PostgreSQL's (SQLite plans without them on purpose)")
    await _analyze_small_then_grow(sessions)
    params = [("identifier", "urn:load-test|shared"), ("patient", "Patient/busy")]

    async with sessions() as session:
        stale = (
            await session.execute(text("SELECT reltuples FROM pg_class WHERE relname = 'fhir_token_index'"))
        ).scalar()
        assert stale is not None and stale < GROWTH  # the statistics still describe the small table
        for statement in statements("Observation", params, base_url=""):
            sql = statement.compile(dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True})
            plan = "\n".join(row[0] for row in (await session.execute(text(f"EXPLAIN {sql}"))).all())
            assert "Intersect" in plan, plan
            assert "Semi Join" not in plan, plan
        found = await search(session, "Observation", params, base_url="", page_size_default=5)
    assert found.total == GROWTH
    assert all(r["subject"]["reference"] == "Patient/busy" for r in found.resources)


async def test_mockehr_load_refreshes_the_statistics_of_the_fhir_tables(sessions: Sessions, tmp_path: Path) -> None:
    async with sessions() as session:
        if session.get_bind().dialect.name != "postgresql":
            pytest.skip("ANALYZE is run on PostgreSQL only")
    bundle = tmp_path / "bundle.json"
    bundle.write_text(
        '{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Patient",'
        ' "id": "loaded"}, "request": {"method": "PUT", "url": "Patient/loaded"}}]}'
    )
    results = await load_files(sessions, [bundle])
    assert results[0].ok, results[0].message
    async with sessions() as session:
        analysed = await session.execute(
            text("SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL AND relname = ANY(:t)"),
            {"t": list(TABLES)},
        )
        assert set(analysed.scalars()) == set(TABLES)
