"""What each service builds in its lifespan: DB engine, HTTP client, key store.

Nothing here runs at import time; `open_runtime` is entered from a FastAPI lifespan inside
`create_app(settings)`, and closes everything on shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from common.clock import Clock, system_clock
from common.db import make_engine, make_sessionmaker, ping
from common.errors import KeyNotFoundError
from common.http import make_http_client
from common.keys import KeyStore, ensure_active_key
from common.logs import configure_logging
from common.settings import ServiceSettings


@dataclass
class Runtime:
    settings: ServiceSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    http: httpx.AsyncClient
    keys: KeyStore | None
    clock: Clock

    @property
    def signing_keys(self) -> KeyStore:
        """The key store of a signing service (a programming error to ask a non-signing one)."""
        if self.keys is None:
            raise KeyNotFoundError(f"{self.settings.service_name} has no signing keys")
        return self.keys

    async def check_db(self) -> None:
        await ping(self.engine)

    async def check_keys(self) -> None:
        if self.keys is not None:
            await self.keys.signer()


@asynccontextmanager
async def open_runtime(
    settings: ServiceSettings, *, signing: bool, clock: Clock = system_clock
) -> AsyncIterator[Runtime]:
    """Open the service's resources. A signing service gets its key created if it has none."""
    configure_logging(settings.log_level, settings.service_name)
    engine = make_engine(
        settings.db_url,
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout_seconds,
        statement_timeout=settings.db_statement_timeout_seconds,
    )
    sessions = make_sessionmaker(engine)
    http = make_http_client(ca_file=settings.ca_path, timeout=settings.http_timeout_seconds)
    keys: KeyStore | None = None
    try:
        if signing:
            kek = settings.kek()
            await ensure_active_key(sessions, settings.service_name, settings.signing_alg, kek, int(clock()))
            keys = KeyStore(
                sessions,
                settings.service_name,
                kek,
                refresh_seconds=settings.key_refresh_seconds,
                publish_ahead=settings.key_publish_ahead_seconds,
                clock=clock,
            )
            await keys.reload()
        yield Runtime(settings, engine, sessions, http, keys, clock)
    finally:
        await http.aclose()
        await engine.dispose()
