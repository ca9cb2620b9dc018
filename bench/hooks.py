"""Hook overhead: what the EHR adds to a CDS Hooks call (budget, docs/performance.md: p50 ≤ 25 ms for one
hook to one service with three prefetch queries, on loopback, excluding the service's time).

The stack runs under the supervisor (real TLS, PostgreSQL when available); a no-op CDS Service
(bench/noop_service.py) runs beside it under the same uvicorn flags and is registered through
the EHR's admin API. An async httpx driver fires `POST /api/hooks/patient-view` (admin token,
`userId` a demo practitioner, one of their patients, `services` naming 1 or 5 no-op services
with 0 or 3 prefetch templates) at concurrency 1, 8 and 32 for a bounded time, warm-up excluded.

Per call the EHR exchanges a token per service, runs the prefetch queries against the FHIR
server, signs a CDS Client JWT, POSTs, validates the answer, revokes the token and records the
exchange. Reported: hooks/s and p50/p95/p99 of the whole call; the EHR overhead (the call minus
the service's own handler time, recorded by the service; medians and p95s subtracted); and the
ratio to a direct POST of a CDS request to the same no-op service at the same concurrency.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from bench.stack_bench import Running, running_stack, uvicorn_server

HOOK = "patient-view"
CONCURRENCY = (1, 8, 32)


@contextmanager
def noop_service(running: Running) -> Iterator[str]:
    """The no-op service on the stack's spare port; yields its discovery URL."""
    stack = running.stack
    port = stack.base_port + 6
    url = f"https://{stack.public_host}:{port}/cds-services"
    with uvicorn_server(
        stack, "bench.noop_service:create_app", port, stack.data_dir / "logs" / "noop-service.log", url
    ):
        yield url


async def _timed(
    call: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]],
    client: httpx.AsyncClient,
    concurrency: int,
    seconds: float,
    ok: Callable[[httpx.Response], bool],
) -> tuple[list[float], int, float]:
    for _ in range(3):  # warm-up, excluded
        await call(client)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            response = await call(client)
            latencies.append(time.perf_counter() - start)
            errors += not ok(response)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - start


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


async def _own_time(client: httpx.AsyncClient, discovery: str) -> list[float]:
    base = discovery.rsplit("/cds-services", 1)[0]
    response = await client.get(f"{base}/bench/own-time", params={"reset": "1"})
    values: list[float] = response.json()["ms"]
    return values


async def _measure(running: Running, discovery: str, user: str, patient: str, seconds: float) -> dict[str, Any]:
    stack = running.stack
    admin = (stack.data_dir / "admin-token").read_text().strip()
    headers = {"Authorization": f"Bearer {admin}"}
    ehr = stack.base_url("ehr")
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    out: dict[str, Any] = {}
    async with running.client(limits=limits) as client:
        added = await client.post(
            f"{ehr}/api/services",
            headers=headers,
            json={
                "discoveryUrl": discovery,
                "hooks": [HOOK],
                "approveAllPrefetch": True,
                "clientId": "bench-noop",
                "scope": ["patient/Patient.rs", "patient/Condition.rs", "patient/Observation.rs"],
            },
        )
        added.raise_for_status()
        ids = {s["cdsId"]: s["id"] for s in added.json()["services"]}
        direct_body = {
            "hook": HOOK,
            "hookInstance": str(uuid.uuid4()),
            "context": {"userId": user, "patientId": patient},
        }

        def all_ok(response: httpx.Response) -> bool:
            return response.status_code == 200 and all(s["status"] == "ok" for s in response.json()["services"])

        direct: dict[int, list[float]] = {}
        for c in CONCURRENCY:
            latencies, errors, elapsed = await _timed(
                lambda cl: cl.post(f"{discovery}/noop0-1", json=direct_body),
                client,
                c,
                seconds,
                lambda r: r.status_code == 200,
            )
            await _own_time(client, discovery)
            direct[c] = latencies
            out[f"direct POST to the no-op service c={c}"] = {
                "hooks_per_s": round(len(latencies) / elapsed, 1),
                "p50_ms": round(statistics.median(latencies) * 1000, 2),
                "p95_ms": round(_pct(latencies, 0.95) * 1000, 2),
                "p99_ms": round(_pct(latencies, 0.99) * 1000, 2),
                "errors": errors,
            }
        for prefetch in (0, 3):
            for count in (1, 5):
                chosen = [ids[f"noop{prefetch}-{i}"] for i in range(1, count + 1)]
                body = {"userId": user, "patientId": patient, "services": chosen}
                for c in CONCURRENCY:
                    latencies, errors, elapsed = await _timed(
                        lambda cl, b=body: cl.post(f"{ehr}/api/hooks/{HOOK}", headers=headers, json=b),  # type: ignore[misc]
                        client,
                        c,
                        seconds,
                        all_ok,
                    )
                    own = await _own_time(client, discovery)
                    # This case's exchanges are the latest len(latencies) × count in the log.
                    phases = await _phases(client, ehr, headers, len(latencies) * count) if c == 1 else {}
                    # The service's own time per hook: its handler time for each of the hook's calls.
                    own_p50 = statistics.median(own) * count if own else 0.0
                    own_p95 = _pct(own, 0.95) * count if own else 0.0
                    p50 = statistics.median(latencies) * 1000
                    out[f"{count} service(s), {prefetch} prefetch, c={c}"] = {
                        "hooks_per_s": round(len(latencies) / elapsed, 1),
                        "p50_ms": round(p50, 2),
                        "p95_ms": round(_pct(latencies, 0.95) * 1000, 2),
                        "p99_ms": round(_pct(latencies, 0.99) * 1000, 2),
                        "overhead_p50_ms": round(p50 - own_p50, 2),
                        "overhead_p95_ms": round(_pct(latencies, 0.95) * 1000 - own_p95, 2),
                        "service_own_p50_ms": round(own_p50, 3),
                        "direct_p50_ms": round(statistics.median(direct[c]) * 1000, 2),
                        "ratio_to_direct": round(p50 / (statistics.median(direct[c]) * 1000), 1),
                        "errors": errors,
                        **phases,
                    }
    return out


async def _phases(client: httpx.AsyncClient, ehr: str, headers: dict[str, str], latest: int) -> dict[str, float]:
    """Median per phase of the EHR's own timings (its exchange log) over the latest exchanges."""
    limit = max(1, min(500, latest))
    response = await client.get(f"{ehr}/api/exchanges", headers=headers, params={"limit": limit})
    if response.status_code != 200:
        return {}
    timings = [e.get("timings") or {} for e in response.json().get("exchanges", [])]
    out: dict[str, float] = {}
    for phase in ("token_ms", "prefetch_ms", "call_ms", "revoke_ms", "total_ms"):
        values = [t[phase] for t in timings if isinstance(t.get(phase), int | float)]
        if values:
            out[f"phase_{phase}"] = round(statistics.median(values), 2)
    return out


def run(args: Any) -> dict[str, Any]:
    """The hook matrix on PostgreSQL (SQLite when PostgreSQL is not among the benchmarked databases)."""
    from bench.__main__ import database

    kind = "postgresql" if "postgresql" in args.db else "sqlite"
    with database(kind, args.pg) as url, running_stack(url, args.patients, args.workers) as running:
        users = json.loads((running.stack.data_dir / "demo-users.json").read_text())
        user = next(iter(users.values()))
        practitioner = "Practitioner/" + user["fhirUser"].rstrip("/").rsplit("/", 1)[1]
        with noop_service(running) as discovery:
            results = asyncio.run(_measure(running, discovery, practitioner, user["patients"][0], args.seconds))
    return {"database": kind, "workers": args.workers, "results": results}


if __name__ == "__main__":  # a quick run on its own: python -m bench.hooks
    import argparse

    ns = argparse.Namespace(
        db=["postgresql"],
        pg=os.environ.get("MOCKEHR_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        patients=30,
        workers=int(os.environ.get("MOCKEHR_BENCH_WORKERS", "2")),
        seconds=2.0,
    )
    print(json.dumps(run(ns), indent=2))
