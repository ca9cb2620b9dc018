"""Alembic environment: one migration history for the whole stack, on SQLite or PostgreSQL.

The URL comes from the Config attribute `database_url` (set by `mockehr db upgrade`), else from
MOCKEHR_DATABASE_URL, else the default SQLite file. Runs on the async engine the services use.
"""

from __future__ import annotations

import asyncio
import os

from sqlalchemy.engine import Connection

import authserver.models  # noqa: F401  (registers tables on the shared metadata)
import ehr.models  # noqa: F401
import ehr.ui.refreshes as _ehr_ui_refreshes  # noqa: F401  (ehr_ui_refreshes)
import ehr.ui.signouts as _ehr_ui_tables  # noqa: F401  (ehr_ui_signouts)
import fhirserver.models  # noqa: F401
from alembic import context
from common.app_origins import AppOriginRow  # noqa: F401  (smart_app_origins)
from common.db import Base, make_engine, normalize_database_url
from common.keys import SigningKeyRow  # noqa: F401

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("MOCKEHR_DATABASE_URL")
    return normalize_database_url(url or "sqlite:///.mockehr/mockehr.db")


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs batch ALTERs
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _online() -> None:
    engine = make_engine(_url())
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    asyncio.run(_online())


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
