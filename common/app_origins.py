"""The browser origins of registered, active SMART apps: who gets CORS without configuration.

`smart_app_origins` holds one row per origin (RFC 6454) of the redirect URIs and launch URL of
every active `smart-app` client. The authorization server keeps it in step with its client
registry, in the same transaction as each registration or (de)activation
(`authserver/clients.py`), through `sync`. The authorization server and the FHIR server (which
share the database by default) look an `Origin` up here on every CORS request that carries one:
one primary-key lookup, no cache — so registering an app is enough, and disabling it withdraws
its origin from the very next request, on every replica. A cache would need invalidating across
processes; the lookup is cheaper than that machinery.

Fail closed: a lookup that fails (database unreachable, statement timeout, no such table — a FHIR
server on a database of its own) grants nothing, and is logged, never answered with a 5xx.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from sqlalchemy import Index, String, delete, literal, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Mapped, mapped_column
from starlette.applications import Starlette

from common.db import Base

MAX_ORIGIN = 300
_DEFAULT_PORTS = {"http": 80, "https": 443}
log = logging.getLogger(__name__)


class AppOriginRow(Base):
    """An origin a registered, active SMART app runs at (migration 0010)."""

    __tablename__ = "smart_app_origins"

    origin: Mapped[str] = mapped_column(String(MAX_ORIGIN), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(128), primary_key=True)

    __table_args__ = (Index("ix_smart_app_origins_client_id", "client_id"),)


def origin_of(url: str) -> str | None:
    """The ASCII serialization of `url`'s origin (RFC 6454 §6.2) as a browser sends it in
    `Origin` — lower-case scheme and host, the port only when not the scheme's default — or None
    for anything that is not an http(s) URL with an ASCII host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or not host.isascii() or "@" in parts.netloc:
        return None
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    origin = f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"
    return origin if len(origin) <= MAX_ORIGIN else None


async def sync(session: AsyncSession, client_id: str, urls: Iterable[str]) -> None:
    """Make `client_id`'s rows the origins of `urls` (none: the client grants no origin)."""
    await session.execute(delete(AppOriginRow).where(AppOriginRow.client_id == client_id))
    origins = {o for o in (origin_of(u) for u in urls) if o is not None}
    session.add_all(AppOriginRow(origin=o, client_id=client_id) for o in sorted(origins))
    await session.flush()


class RegisteredOrigins:
    """`await registered(origin)`: is `origin` the origin of an active SMART app? `engine` gives
    the service's database engine, or None before the service has started (nothing granted)."""

    def __init__(self, engine: Callable[[], AsyncEngine | None]) -> None:
        self._engine = engine
        self._warned = False

    async def __call__(self, origin: str) -> bool:
        # Only a serialized origin can match a stored one: `null`, a path or a default port
        # written out are no origin of an app, and cost no query.
        if origin_of(origin) != origin:
            return False
        engine = self._engine()
        if engine is None:
            return False
        statement = select(literal(1)).where(AppOriginRow.origin == origin).limit(1)
        try:
            async with engine.connect() as connection:
                return (await connection.execute(statement)).first() is not None
        except (SQLAlchemyError, OSError) as exc:
            # Once at warning (a FHIR server on its own database would say it on every request).
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "registered SMART app origins could not be read, no CORS granted: %s", type(exc).__name__)
            return False


def registered_origins(app: Starlette) -> RegisteredOrigins:
    """The lookup for a service app whose lifespan puts its `Runtime` on `app.state.runtime`."""
    return RegisteredOrigins(lambda: getattr(getattr(app.state, "runtime", None), "engine", None))
