"""Housekeeping: forget what can no longer matter, so the tables stay small.

Every `interval` seconds: used client-assertion jti values past their expiry (they can no
longer be replayed), issued-token records an hour past expiry, and revocation-feed entries of
expired tokens (a revoked token that has expired is refused anyway). Safe on any number of
replicas at once: each statement is an idempotent DELETE.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from authserver.models import IssuedTokenRow, RevocationRow, UsedJtiRow
from common.clock import Clock
from common.periodic import Periodic

log = logging.getLogger(__name__)
TOKEN_RECORD_GRACE = 3600


async def purge(sessions: async_sessionmaker[AsyncSession], now: int) -> None:
    async with sessions() as session, session.begin():
        await session.execute(delete(UsedJtiRow).where(UsedJtiRow.expires_at < now))
        await session.execute(delete(IssuedTokenRow).where(IssuedTokenRow.exp < now - TOKEN_RECORD_GRACE))
        await session.execute(delete(RevocationRow).where(RevocationRow.exp < now))


class Housekeeper(Periodic):
    def __init__(self, sessions: async_sessionmaker[AsyncSession], clock: Clock, interval: float = 60.0) -> None:
        super().__init__("housekeeping", lambda: purge(sessions, int(clock())), interval)
