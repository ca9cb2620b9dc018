"""Every statement of a service's engine is bounded in time, on both backends (common/db.py).

A runaway statement (a recursive query with no end) can only stop by the bound: it fails with
an error `is_statement_timeout` recognises, the connection stays usable, and on PostgreSQL no
backend is left running it.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from common.db import is_statement_timeout, make_engine

RUNAWAY = "WITH RECURSIVE runaway(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM runaway) SELECT count(*) FROM runaway"


async def test_a_runaway_statement_is_stopped_and_the_connection_stays_usable(database_url: str) -> None:
    engine = make_engine(database_url, pool_size=1, statement_timeout=0.2)
    try:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as stopped:
                await conn.execute(text(RUNAWAY))
            assert is_statement_timeout(stopped.value)
            await conn.rollback()
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            if engine.dialect.name == "postgresql":
                running = await conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%runaway%' AND pid <> pg_backend_pid()"
                    )
                )
                assert running.scalar_one() == 0
    finally:
        await engine.dispose()


async def test_other_database_errors_are_not_taken_for_a_timeout(database_url: str) -> None:
    engine = make_engine(database_url, pool_size=1, statement_timeout=5)
    try:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as failed:
                await conn.execute(text("SELECT * FROM no_such_table"))
            assert not is_statement_timeout(failed.value)
    finally:
        await engine.dispose()
