"""Honouring token revocation within a second, on every replica, however busy the replica is.

Each FHIR server process polls the authorization server's revocation feed (`GET /revocations`)
every `poll_seconds` (MOCKEHR_FHIR_REVOCATION_POLL_SECONDS; the default is in fhirserver/settings.py)
and keeps the jti of every revoked, unexpired token in memory, so checking a token costs a set
lookup, not a network or database round trip. Sequence numbers can commit out of order, so each
poll asks again from `overlap` entries before the last one seen and de-duplicates by jti.

Why a thread of its own: a poll scheduled on the server's event loop waits behind every request
ready to run there. Under 200 concurrent users each step of a poll (connect, send, read) queued
behind hundreds of request steps, the view went stale past `max_staleness` and 10.6 % of all
requests got the fail-closed 503 (issue 18). `start_thread` runs the poll in its own thread, with
its own event loop and its own HTTP client whose timeout is the staleness limit, so the poll
competes only for the interpreter lock (released every few milliseconds), never for the request
queue. The view is replaced, never mutated, so the request thread reads it without a lock.

Fail closed: if the view is older than `max_staleness` (the authorization server unreachable),
the guard answers 503 rather than serve a token that may have been revoked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

import httpx

from common.clock import Clock
from common.periodic import Periodic

log = logging.getLogger(__name__)
FRESH_WAIT_STEP_SECONDS = 0.02
PAGE = 1000


class RevocationWatcher:
    """`client`: poll on the caller's event loop with this client (services composed in one
    process, tests); `client_factory`: poll in a thread of its own with a client it makes there."""

    def __init__(
        self,
        client: httpx.AsyncClient | None,
        feed_url: str,
        *,
        clock: Clock,
        poll_seconds: float = 0.25,
        max_staleness: float = 1.0,
        overlap: int = 500,
        client_factory: Callable[[], httpx.AsyncClient] | None = None,
    ) -> None:
        if (client is None) == (client_factory is None):
            raise ValueError("give exactly one of client and client_factory")
        self._client = client
        self._client_factory = client_factory
        self._url = feed_url
        self._clock = clock
        self._poll_seconds = poll_seconds
        self.max_staleness = max_staleness
        self._overlap = overlap
        self._revoked: dict[str, int] = {}
        self._last = 0
        self._synced_at = float("-inf")
        self._loop: Periodic | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread_client: httpx.AsyncClient | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()

    def is_revoked(self, jti: str) -> bool:
        return jti in self._revoked

    def fresh(self) -> bool:
        return self._clock() - self._synced_at <= self.max_staleness

    async def until_fresh(self) -> bool:
        """Fresh now, or once a poll lands within a short wait (at most half the staleness limit,
        in real time). Under CPU contention the poll thread can land a moment after the view
        passed the limit; a request arriving in that moment waits for it instead of failing
        closed. The request is still checked against a view within the limit, so the 1 s
        guarantee is unchanged; when the feed is really gone the answer is the 503, that much
        later."""
        if self.fresh():
            return True
        deadline = time.monotonic() + self.max_staleness / 2
        while time.monotonic() < deadline:
            await asyncio.sleep(FRESH_WAIT_STEP_SECONDS)
            if self.fresh():
                return True
        return False

    @property
    def synced_at(self) -> float:
        """When the view last matched the feed (the clock's time)."""
        return self._synced_at

    async def poll_once(self) -> None:
        """Bring the view up to date now (from any event loop: in thread mode the poll runs on
        the watcher's own loop and this waits for it)."""
        if self._client is not None:
            await self._poll(self._client)
            return
        loop, client = self._thread_loop, self._thread_client
        if loop is None or client is None:
            raise RuntimeError("the revocation watcher's thread is not running")
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._poll(client), loop))

    async def _poll(self, client: httpx.AsyncClient) -> None:
        """Read the feed from a little before the last sequence seen, page by page."""
        # The view holds every revocation committed before the feed was asked, not before it
        # answered: stamped with the asking time, a slow answer cannot stretch the 1 s bound.
        asked_at = self._clock()
        after = max(0, self._last - self._overlap)
        found: dict[str, int] = {}
        while True:
            response = await client.get(self._url, params={"after": after, "limit": PAGE})
            response.raise_for_status()
            body = response.json()
            for item in body["revocations"]:
                found[str(item["jti"])] = int(item["exp"])
            after = int(body["last"])
            self._last = max(self._last, after)
            if len(body["revocations"]) < PAGE:
                break
        now = int(self._clock())
        prune = len(self._revoked) > PAGE
        if prune or found.keys() - self._revoked.keys():
            # A new dict swapped in whole: readers in another thread see the old or the new view.
            merged = {j: e for j, e in self._revoked.items() if e > now} if prune else dict(self._revoked)
            merged.update(found)
            self._revoked = merged
        self._synced_at = asked_at

    async def _poll_quietly(self, client: httpx.AsyncClient) -> None:
        try:
            await self._poll(client)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            # Expected while the authorization server is away: the staleness limit fails closed.
            log.warning("revocation feed unavailable: %s", type(exc).__name__)

    def start(self) -> None:
        if self._client is not None:
            client = self._client
            self._loop = Periodic(
                "revocation-watcher", lambda: self._poll_quietly(client), self._poll_seconds, run_first=True
            )
            self._loop.start()
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run_thread, name="revocation-watcher", daemon=True)
            self._thread.start()
            self._ready.wait(timeout=5)

    def _run_thread(self) -> None:
        asyncio.run(self._thread_main())

    async def _thread_main(self) -> None:
        if self._client_factory is None:
            return
        self._stopping = asyncio.Event()
        async with self._client_factory() as client:
            self._thread_client, self._thread_loop = client, asyncio.get_running_loop()
            self._ready.set()
            while not self._stopping.is_set():
                await self._poll_quietly(client)
                with contextlib.suppress(TimeoutError):  # the interval passed: poll again
                    await asyncio.wait_for(self._stopping.wait(), self._poll_seconds)
            self._thread_client = self._thread_loop = None

    async def stop(self) -> None:
        if self._loop is not None:
            await self._loop.stop()
            self._loop = None
        thread, loop, stopping = self._thread, self._thread_loop, self._stopping
        if thread is not None:
            if loop is not None and stopping is not None:
                loop.call_soon_threadsafe(stopping.set)
            await asyncio.to_thread(thread.join, 5)
            self._thread = None
