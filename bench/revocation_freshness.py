"""How fresh the FHIR server's revocation view stays while its event loop is saturated (issue 18).

`python -m bench.revocation_freshness`: 200 concurrent "requests" on one event loop, each blocking
it for `--block-ms` per step (handler CPU work: JSON, JWT checks, ORM) and ready again at once,
while the watcher polls a real HTTP feed on loopback. For each mode — the poll as a task on the
request loop (before issue 18) and in its own thread and loop (fhirserver/revocations.py) — it
prints the share of request turns at which the guard would have failed closed (view older than
the 1 s limit) and the oldest view seen. Bounded: `--rounds` steps per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from common.clock import system_clock
from fhirserver.revocations import RevocationWatcher


class _Feed(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"revocations": [], "last": 0}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def _work(seconds: float) -> None:
    """CPU work of a handler step: the loop runs nothing else meanwhile (the GIL is shared)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def _measure(watcher: RevocationWatcher, users: int, rounds: int, block: float) -> dict[str, float]:
    watcher.start()
    try:
        await watcher.poll_once()
        turns = stale = 0
        oldest = 0.0

        async def request() -> None:
            nonlocal turns, stale, oldest
            for _ in range(rounds):
                turns += 1
                stale += not watcher.fresh()
                oldest = max(oldest, time.time() - watcher.synced_at)
                _work(block)
                await asyncio.sleep(0)

        started = time.monotonic()
        await asyncio.gather(*(request() for _ in range(users)))
        elapsed = time.monotonic() - started
    finally:
        await watcher.stop()
    return {
        "seconds": round(elapsed, 1),
        "fail_closed_pct": round(100 * stale / turns, 1),
        "oldest_view_s": round(oldest, 2),
    }


async def main(users: int, rounds: int, block_ms: float) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Feed)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/revocations"
    try:
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as shared:
            in_loop = RevocationWatcher(shared, url, clock=system_clock)
            print("poll on the request loop:", await _measure(in_loop, users, rounds, block_ms / 1000))

        def own() -> httpx.AsyncClient:
            return httpx.AsyncClient(timeout=1.0, trust_env=False)

        threaded = RevocationWatcher(None, url, clock=system_clock, client_factory=own)
        print("poll in its own thread:  ", await _measure(threaded, users, rounds, block_ms / 1000))
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block-ms", type=float, default=2.0)
    args = parser.parse_args()
    asyncio.run(main(args.users, args.rounds, args.block_ms))
