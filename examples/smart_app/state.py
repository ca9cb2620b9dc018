"""The example SMART app's typed state: one object on `app.state.smart` instead of closures.

fhirclient is synchronous (requests): `blocking` runs its network work in a worker thread, so
the event loop never waits on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import requests
from anyio import to_thread
from fastapi import FastAPI
from requests.adapters import BaseAdapter

from common.clock import Clock
from examples.smart_app.launches import PendingLaunches
from examples.smart_app.settings import SmartAppSettings
from examples.smart_app.transport import smart_session

T = TypeVar("T")


@dataclass
class SmartState:
    settings: SmartAppSettings
    clock: Clock
    launches: PendingLaunches
    adapter: BaseAdapter | None = None  # tests: the FHIR and authorization servers, in place of the network

    async def blocking(self, work: Callable[[requests.Session], T]) -> T:
        """Run fhirclient's blocking work in a worker thread, on a fresh session closed afterwards
        (a requests Session is not meant to be shared between threads)."""
        settings = self.settings

        def run() -> T:
            with smart_session(
                ca_file=settings.ca_path, timeout=settings.http_timeout_seconds, adapter=self.adapter
            ) as session:
                return work(session)

        return await to_thread.run_sync(run)


def smart_state(app: FastAPI) -> SmartState:
    state: SmartState = app.state.smart
    return state
