"""Shared fixtures: reference data from ../shared/fixtures, databases migrated by alembic.

Database tests run twice, on SQLite (the embedded default) and on PostgreSQL. Each test gets a
fresh PostgreSQL database cloned from a template migrated once per session. With CI=true a
missing PostgreSQL (or missing reference data) is a failure, not a skip.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.db import make_engine, make_sessionmaker
from mockehr import migrate
from tests.needs import missing

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("MOCKEHR_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _fixtures_dir() -> Path | None:
    candidates = [
        os.environ.get("MOCKEHR_FIXTURES", ""),
        str(ROOT.parent / "shared" / "fixtures"),
        "/work/shared/fixtures",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "synthea-r4").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    found = _fixtures_dir()
    if found is None:
        missing("reference data ../shared/fixtures not found (set MOCKEHR_FIXTURES)")
    assert found is not None
    return found


# --- PostgreSQL --------------------------------------------------------------------------------


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL.replace("postgresql://", "postgres://", 1), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_url(database: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A PostgreSQL database migrated to head, used as the template of every test database."""
    name = f"mockehr_tmpl_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, Exception) as exc:  # noqa: BLE001 - any failure to reach PostgreSQL
        missing(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(exc).__name__}")
    migrate.upgrade(_pg_url(name))
    yield name
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated database of each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
        migrate.upgrade(url)
        yield url
        return
    template = request.getfixturevalue("pg_template")
    name = f"mockehr_t_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield _pg_url(name)
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(database_url, pool_size=5)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()
