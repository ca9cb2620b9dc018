"""Housekeeping: forget what can no longer matter, so the tables stay small.

Every `interval` seconds: used client-assertion jti values past their expiry (they can no
longer be replayed), issued-token records an hour past expiry, and revocation-feed entries of
expired tokens (a revoked token that has expired is refused anyway). Safe on any number of
replicas at once: each statement is an idempotent DELETE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from authserver.models import IssuedTokenRow, RevocationRow, UsedJtiRow
from common.clock import Clock

log = logging.getLogger(__name__)
TOKEN_RECORD_GRACE = 3600


async def purge(sessions: async_sessionmaker[AsyncSession], now: int) -> None:
    async with sessions() as session, session.begin():
        await session.execute(delete(UsedJtiRow).where(UsedJtiRow.expires_at < now))
        await session.execute(delete(IssuedTokenRow).where(IssuedTokenRow.exp < now - TOKEN_RECORD_GRACE))
        await session.execute(delete(RevocationRow).where(RevocationRow.exp < now))


class Housekeeper:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], clock: Clock, interval: float = 60.0) -> None:
        self._sessions, self._clock, self._interval = sessions, clock, interval
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await purge(self._sessions, int(self._clock()))
            except Exception:  # keep housekeeping alive; the failure is logged
                log.exception("housekeeping failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="housekeeping")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
