"""Alembic owns the schema: it builds, tears down and rebuilds it on both backends."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import inspect

from common.db import Base, make_engine
from mockehr import migrate


async def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


def test_migrations_create_every_table_the_models_declare(database_url: str) -> None:
    tables = asyncio.run(_tables(database_url))
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_migrations_downgrade_to_nothing_and_upgrade_again(database_url: str) -> None:
    migrate.downgrade(database_url, "base")
    assert asyncio.run(_tables(database_url)) == {"alembic_version"}
    migrate.upgrade(database_url)
    assert set(Base.metadata.tables) <= asyncio.run(_tables(database_url))


@pytest.mark.parametrize("backend", ["sqlite"])
def test_upgrade_is_idempotent(backend: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'x.db'}"
    migrate.upgrade(url)
    migrate.upgrade(url)
    import sqlite3

    with sqlite3.connect(tmp_path / "x.db") as conn:
        (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert version == migrate.head_revision()


async def test_a_grant_family_with_a_128_character_client_id_fits(sessions) -> None:  # type: ignore[no-untyped-def]
    from authserver.models import IssuedTokenRow

    long_id = "c" * 128
    async with sessions() as session, session.begin():
        session.add(
            IssuedTokenRow(
                jti="j1",
                kind="access",
                client_id=long_id,
                sub=long_id,
                scope="system/*.rs",
                grant=f"client_credentials:{long_id}",
                iat=0,
                exp=1,
            )
        )
    async with sessions() as session:
        row = await session.get(IssuedTokenRow, "j1")
    assert row is not None and row.grant.endswith(long_id)
