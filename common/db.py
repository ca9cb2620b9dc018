"""Async database plumbing (SQLAlchemy 2): engine factory, naming convention, declarative base.

SQLite (aiosqlite) is the embedded default; PostgreSQL goes through asyncpg. Alembic owns the
schema: nothing here creates tables.

Every statement of a service is bounded in time (`statement_timeout`, the services' setting
`MOCKEHR_<SERVICE>_DB_STATEMENT_TIMEOUT_SECONDS`): on PostgreSQL by the server's own
`statement_timeout`, set at connection start-up, so the backend stops even when the client is
gone; on SQLite by a progress handler that interrupts a statement past its deadline (SQLite has
no timer of its own: the handler runs every few thousand VM instructions, so a statement waiting
on a lock is bounded by busy_timeout instead). Either way the statement fails with an error
`is_statement_timeout` recognises.

Every pool is bounded too (`pool_size` connections kept, as many again under a burst, and a
request waits at most `pool_timeout` seconds for one). Both bounds are overload, not failure:
`overload` names them and every service answers them with 503 and `Retry-After` in its own
protocol's shape (the FHIR server an OperationOutcome, the authorization server an OAuth
`temporarily_unavailable`, the EHR its API error), never 500.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from common.errors import ConfigError

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base for every table of the stack (one metadata, one migration history)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def parse_database_url(raw: str) -> URL:
    """Parse and normalise a database URL onto an async driver, or raise a one-line ConfigError."""
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise ConfigError(f"cannot parse database URL {redact_url(raw)!r}") from None
    driver = _DRIVERS.get(url.drivername)
    if driver is None:
        raise ConfigError(f"unsupported database {url.drivername!r}: use sqlite:///PATH or postgresql://HOST/DB")
    if driver.startswith("sqlite") and not url.database:
        raise ConfigError("sqlite URL needs a file path (in-memory databases are not shared)")
    return url.set(drivername=driver)


def normalize_database_url(raw: str) -> str:
    return parse_database_url(raw).render_as_string(hide_password=False)


def redact_url(raw: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    try:
        return make_url(raw).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable>"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(
    url: str, *, pool_size: int = 10, pool_timeout: float = 30.0, statement_timeout: float | None = None
) -> AsyncEngine:
    """Create the async engine. SQLite gets WAL, a busy timeout and enforced foreign keys.

    `statement_timeout` (seconds; None: unbounded, for the CLI's bulk work) bounds every
    statement run through the engine; `pool_size` and `pool_timeout` bound its connections (see
    the module docstring).
    """
    parsed = parse_database_url(url)
    pool = {"pool_size": pool_size, "max_overflow": pool_size, "pool_timeout": pool_timeout}
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(parsed, connect_args={"timeout": 30}, **pool)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        if statement_timeout is not None:
            _bound_sqlite_statements(engine, statement_timeout)
        return engine
    connect_args: dict[str, Any] = {}
    if statement_timeout is not None:
        # Milliseconds, at least 1 (0 would mean "no timeout").
        connect_args["server_settings"] = {"statement_timeout": str(max(1, round(statement_timeout * 1000)))}
    # No pre-ping: it costs a round trip per checkout on every request. A connection the
    # server dropped fails its next statement, asyncpg reports it, and the pool discards it.
    return create_async_engine(parsed, pool_recycle=1800, connect_args=connect_args, **pool)


_DEADLINE = "mockehr.statement_deadline"
_PROGRESS_STEPS = 10_000  # VM instructions between two looks at the clock (~0.1 ms of work)


def _bound_sqlite_statements(engine: AsyncEngine, seconds: float) -> None:
    """Interrupt any SQLite statement still running `seconds` after it started."""

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        deadline = record.info[_DEADLINE] = [float("inf")]

        def past_deadline() -> int:  # runs in aiosqlite's thread; non-zero interrupts the statement
            return 1 if time.monotonic() > deadline[0] else 0

        dbapi_connection.run_async(lambda conn: conn.set_progress_handler(past_deadline, _PROGRESS_STEPS))

    def before(conn: Any, *_args: Any) -> None:
        deadline = conn.info.get(_DEADLINE)
        if deadline is not None:
            deadline[0] = time.monotonic() + seconds

    def after(conn: Any, *_args: Any) -> None:
        deadline = conn.info.get(_DEADLINE)
        if deadline is not None:
            deadline[0] = float("inf")

    event.listen(engine.sync_engine, "connect", on_connect)
    event.listen(engine.sync_engine, "before_cursor_execute", before)
    event.listen(engine.sync_engine, "after_cursor_execute", after)


def is_statement_timeout(exc: BaseException) -> bool:
    """Did the database stop this statement for running too long (make_engine's bound)?"""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    # PostgreSQL: query_canceled (57014); SQLite: the progress handler's interrupt.
    return getattr(orig, "sqlstate", None) == "57014" or str(orig) == "interrupted"


RETRY_AFTER_SECONDS = 1


def overload(exc: BaseException) -> str | None:
    """Why this database error is overload rather than failure, or None: a pool with no free
    connection within its timeout, or a statement stopped at its time bound."""
    if isinstance(exc, PoolTimeoutError):
        return "every database connection is busy; retry shortly"
    if is_statement_timeout(exc):
        return "the request took too long and was stopped; retry later"
    return None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def ping(engine: AsyncEngine) -> None:
    """Round-trip to the database (used by /readyz and pre-flight checks)."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


@asynccontextmanager
async def transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit on success, roll back on any exception."""
    async with sessions() as session, session.begin():
        yield session
