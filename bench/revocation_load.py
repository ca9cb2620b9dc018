"""The FHIR server's fail-closed share under 200 concurrent clients (issue 18, item 5).

`python -m bench.revocation_load [--seconds 20] [--clients 200] [--pg URL]`: starts the stack
(separate uvicorn processes, real TLS, one worker per service) on a fresh PostgreSQL database,
then `--clients` concurrent clients for `--seconds`: 10 % client_credentials tokens (pre-signed
assertions, so the load generator does not sign while measuring), 45 % Patient reads and 45 %
Observation searches with a token-exchange token. Prints requests per second and the answers by
status; FHIR 503s are the guard failing closed (revocation view stale) or overload. Bounded in
time and count; everything listens on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import time
from typing import Any

import httpx

from bench.__main__ import database
from bench.stack_bench import Running, _token, actors, running_stack


async def _drive(
    running: Running, forms: list[dict[str, str]], token: str, patient: str, clients: int, seconds: float
) -> dict[str, Any]:
    stack = running.stack
    token_url = f"{stack.base_url('authserver')}/token"
    fhir = stack.url("fhirserver")
    headers = {"Authorization": f"Bearer {token}"}
    counts: collections.Counter[str] = collections.Counter()
    samples: list[str] = []
    feed_ms: list[float] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with running.client(limits=limits) as http:

        async def one_client() -> None:
            while time.monotonic() < deadline:
                pick = random.random()  # noqa: S311 - a load mix, not a secret
                try:
                    if pick < 0.10 and forms:
                        kind = "token"
                        response = await http.post(token_url, data=forms.pop())
                    elif pick < 0.55:
                        kind = "read"
                        response = await http.get(f"{fhir}/Patient/{patient}", headers=headers)
                    else:
                        kind = "search"
                        response = await http.get(
                            f"{fhir}/Observation", params={"patient": patient, "_count": "10"}, headers=headers
                        )
                    counts[f"{kind} {response.status_code}"] += 1
                    if response.status_code >= 500 and len(samples) < 3:
                        samples.append(response.text[:300])
                except httpx.HTTPError as exc:
                    counts[f"{type(exc).__name__}"] += 1

        async def feed_probe() -> None:
            # What a FHIR replica's poll meets: the feed's answer time while the stack is loaded.
            async with running.client() as own:
                while time.monotonic() < deadline:
                    begun = time.monotonic()
                    try:
                        await own.get(f"{stack.base_url('authserver')}/revocations", params={"after": 0, "limit": 1000})
                        feed_ms.append(1000 * (time.monotonic() - begun))
                    except httpx.HTTPError:
                        feed_ms.append(float("inf"))
                    await asyncio.sleep(0.25)

        started = time.monotonic()
        await asyncio.gather(feed_probe(), *(one_client() for _ in range(clients)))
        elapsed = time.monotonic() - started
    total = sum(counts.values())
    fhir_503 = counts["read 503"] + counts["search 503"]
    return {
        "requests": total,
        "req_per_s": round(total / elapsed, 1),
        "fhir_503_pct": round(100 * fhir_503 / max(1, total), 2),
        "by_status": dict(sorted(counts.items())),
        "feed_ms_p50_max": (round(sorted(feed_ms)[len(feed_ms) // 2]), round(max(feed_ms))) if feed_ms else None,
        "feed_over_1s": sum(ms > 1000 for ms in feed_ms),
        "feed_polls": len(feed_ms),
        "5xx_samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument(
        "--pg", default=os.environ.get("MOCKEHR_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    args = parser.parse_args()
    with database("postgresql", args.pg) as db_url, running_stack(db_url, patients=10, workers=1) as running:
        who = actors(running)
        token_url = f"{running.stack.base_url('authserver')}/token"
        token = _token(running, who.exchange_form(token_url, running.stack.url("fhirserver")))
        forms = [who.backend_form(token_url) for _ in range(int(60 * args.seconds))]
        print(asyncio.run(_drive(running, forms, token, who.patient, args.clients, args.seconds)))


if __name__ == "__main__":
    main()
