"""The FHIR server's revocation view stays fresh however busy its event loop is (issue 18, item 5).

Under 200 concurrent users the view went stale because each step of its poll queued behind the
requests ready on the server's event loop, and the guard failed closed (503) for 10.6 % of all
requests. Here 200 "requests" keep the event loop saturated (each blocks it briefly, yields, and
is ready again at once, as handlers do under load) while the feed, a real HTTP server on
loopback, revokes a token.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from common.clock import FrozenClock, system_clock
from fhirserver.revocations import RevocationWatcher

USERS = 200
ROUNDS = 8  # each round blocks the loop ~0.4 s in all: the load lasts several staleness limits
BLOCK_SECONDS = 0.002


class Feed:
    """The authorization server's `GET /revocations`, as a plain threaded HTTP server."""

    def __init__(self) -> None:
        self.revoked: list[dict[str, Any]] = []
        self.polls = 0
        feed = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                feed.polls += 1
                items = list(feed.revoked)
                body = json.dumps({"revocations": items, "last": len(items)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/revocations"


@pytest.fixture
def feed() -> Iterator[Feed]:
    served = Feed()
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    yield served
    served.server.shutdown()
    served.server.server_close()
    thread.join(5)


async def _busy_request(rounds: int) -> None:
    for _ in range(rounds):
        time.sleep(BLOCK_SECONDS)  # CPU work of a handler: the loop runs nothing else meanwhile
        await asyncio.sleep(0)


async def test_the_revocation_view_stays_fresh_and_sees_a_revocation_while_requests_saturate_the_loop(
    feed: Feed,
) -> None:
    watcher = RevocationWatcher(
        None, feed.url, clock=system_clock, client_factory=lambda: httpx.AsyncClient(timeout=1.0, trust_env=False)
    )
    watcher.start()
    try:
        await watcher.poll_once()
        polls_before = feed.polls
        load = [asyncio.create_task(_busy_request(ROUNDS)) for _ in range(USERS)]
        await asyncio.sleep(0)
        feed.revoked.append({"jti": "revoked-under-load", "exp": int(time.time()) + 300})
        fresh_at_each_turn: list[bool] = []
        seen = False
        while not all(task.done() for task in load):
            # This is what the guard asks on every request, at the moments a request gets to run.
            fresh_at_each_turn.append(watcher.fresh())
            seen = seen or watcher.is_revoked("revoked-under-load")
            await asyncio.sleep(0)
        await asyncio.gather(*load)
    finally:
        await watcher.stop()
    assert len(fresh_at_each_turn) >= ROUNDS
    assert all(fresh_at_each_turn), fresh_at_each_turn
    assert seen
    assert feed.polls - polls_before >= ROUNDS  # the feed kept being read during the load


async def test_a_watcher_in_its_own_thread_fails_closed_when_the_feed_is_gone(feed: Feed) -> None:
    url = feed.url
    feed.server.shutdown()
    feed.server.server_close()
    watcher = RevocationWatcher(
        None, url, clock=system_clock, client_factory=lambda: httpx.AsyncClient(timeout=1.0, trust_env=False)
    )
    watcher.start()
    try:
        with pytest.raises(httpx.HTTPError):
            await watcher.poll_once()
        assert not watcher.fresh()
    finally:
        await watcher.stop()


async def test_a_request_meeting_a_view_a_moment_stale_waits_for_the_next_poll_instead_of_failing_closed(
    feed: Feed,
) -> None:
    # The poll thread, short of CPU, lands a moment after the view passed the limit: the guard's
    # wait sees the view fresh again (checked against a view within the limit, as always).
    clock = FrozenClock(1_000_000.0)
    watcher = RevocationWatcher(
        None,
        feed.url,
        clock=clock,
        poll_seconds=0.05,
        client_factory=lambda: httpx.AsyncClient(timeout=1.0, trust_env=False),
    )
    watcher.start()
    try:
        await watcher.poll_once()
        clock.advance(watcher.max_staleness + 0.5)  # stale now; the thread's next poll restamps it
        assert not watcher.fresh()
        assert await watcher.until_fresh()
        assert watcher.fresh()
    finally:
        await watcher.stop()


async def test_a_view_that_stays_stale_still_fails_closed_after_the_bounded_wait(feed: Feed) -> None:
    clock = FrozenClock(1_000_000.0)
    watcher = RevocationWatcher(
        None, feed.url, clock=clock, client_factory=lambda: httpx.AsyncClient(timeout=1.0, trust_env=False)
    )
    watcher.start()
    try:
        await watcher.poll_once()
    finally:
        await watcher.stop()  # no poll any more: the feed is as good as gone
    clock.advance(watcher.max_staleness + 0.5)
    assert not await watcher.until_fresh()
    assert not watcher.fresh()
