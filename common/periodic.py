"""One background loop per service concern (housekeeping, audit flushes, revocation polling).

`Periodic` runs `step` every `interval` seconds in a task started from a lifespan and stopped on
shutdown; a failing step is logged and the loop goes on, so one bad round never stops the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    def __init__(
        self, name: str, step: Callable[[], Awaitable[object]], interval: float, *, run_first: bool = False
    ) -> None:
        self._name, self._step, self._interval, self._run_first = name, step, interval, run_first
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        if not self._run_first:
            await asyncio.sleep(self._interval)
        while True:
            try:
                await self._step()
            except Exception:  # a failed round is logged; the next one runs as planned
                log.exception("%s failed", self._name)
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
