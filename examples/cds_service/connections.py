"""The example service's connections, opened in its lifespan: the outbound HTTP client, the
trusted CDS Clients' keys, and the JWT replay store (Redis when configured, else memory)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI

from common.health import Check
from common.http import make_http_client
from common.logs import configure_logging
from common.replay import MemoryReplayStore, RedisReplayStore, ReplayStore
from examples.cds_service.auth import TrustedClients
from examples.cds_service.feedback import RedisIssuedCards
from examples.cds_service.state import CdsState, Connections, cds_state


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = cds_state(app)
    settings, clock = state.settings, state.clock
    configure_logging(settings.log_level, settings.service_name)
    http = state.http_client or make_http_client(ca_file=settings.ca_path, timeout=settings.http_timeout_seconds)
    replay: ReplayStore
    redis = None
    if settings.redis_url:
        from redis.asyncio import Redis

        redis = Redis.from_url(settings.redis_url)
        replay = RedisReplayStore(redis, "mockehr:cds-example:jti", clock)
        # Feedback may reach another replica than the one that issued the card.
        state.issued = RedisIssuedCards(redis, "mockehr:cds-example:card")
    else:
        replay = MemoryReplayStore(clock)
    state.connections = Connections(http, TrustedClients(settings.clients, http, clock), replay)
    try:
        yield
    finally:
        if redis is not None:
            await redis.aclose()
        if state.http_client is None:
            await http.aclose()


def checks(state: CdsState) -> Mapping[str, Check]:
    """Readiness: the primary CDS Client's keys can be fetched (the others, e.g. the probe, are
    fetched when used)."""
    primary = state.settings.primary_client
    if primary is None:
        return {}

    async def ehr_keys() -> None:
        await state.connected().trusted.jwks(primary.issuer).key_set()

    return {"ehr_jwks": ehr_keys}
