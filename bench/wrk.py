"""Throughput from a separate process: wrk (Debian's `wrk` package) with bench/report.lua.

wrk runs its own event loop in C on two threads, so the load generator costs the machine far
less than the server it measures. Each run is bounded by time; a warm-up run is excluded.
Without wrk, an async httpx driver in this process does the same (and costs the machine more:
its figures are lower bounds, marked `"driver": "httpx"`).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from common.tls import client_ssl_context

SCRIPT = Path(__file__).resolve().parent / "report.lua"
THREADS = 2


class WrkMissingError(RuntimeError):
    """wrk is not installed (`apt-get install wrk`)."""


def available() -> bool:
    return shutil.which("wrk") is not None


def run(
    url: str,
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    bodies: Path | None = None,
    warmup: float = 1.0,
    ca: Path | None = None,
) -> dict[str, Any]:
    """req/s, p50/p95/p99 (ms) and error counts of GET `url` (or POSTs of `bodies`' lines)."""
    if not available():
        if ca is None:
            raise WrkMissingError("wrk is not installed (apt-get install -y wrk) and no CA was given for httpx")
        forms = bodies.read_text().splitlines() if bodies is not None else []
        return asyncio.run(_httpx(url, connections, seconds, headers or {}, forms, warmup, ca))
    if warmup > 0 and bodies is None:
        _wrk(url, connections, warmup, headers, None)
    raw = _wrk(url, connections, seconds, headers, bodies)
    duration = raw["duration_us"] / 1e6
    return {
        "req_per_s": round(raw["requests"] / duration, 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p95_ms": raw["p95_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "requests": raw["requests"],
        "errors": raw["non_2xx"] + raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"],
        "bytes_per_response": round(raw["bytes"] / raw["requests"]) if raw["requests"] else 0,
    }


def _wrk(
    url: str, connections: int, seconds: float, headers: dict[str, str] | None, bodies: Path | None
) -> dict[str, Any]:
    argv = ["wrk", f"-t{THREADS}", f"-c{max(connections, THREADS)}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    argv += ["-s", str(SCRIPT)]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    if bodies is not None:
        argv += ["--", str(bodies), str(THREADS)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    line = next(line for line in reversed(out.splitlines()) if line.startswith("{"))
    result: dict[str, Any] = json.loads(line)
    return result


async def _httpx(
    url: str, connections: int, seconds: float, headers: dict[str, str], forms: list[str], warmup: float, ca: Path
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    latencies: list[float] = []
    errors, sent = 0, 0
    post_headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
    async with httpx.AsyncClient(verify=client_ssl_context(ca), limits=limits, trust_env=False, timeout=10) as client:

        async def one(measure: bool) -> None:
            nonlocal errors, sent
            start = time.perf_counter()
            try:
                if forms:
                    body = forms[min(sent, len(forms) - 1)]
                    sent += 1
                    response = await client.post(url, content=body, headers=post_headers)
                else:
                    response = await client.get(url, headers=headers)
                failed = response.status_code >= 400
            except httpx.HTTPError:  # counted like wrk counts timeouts and socket errors
                failed = True
            if measure:
                latencies.append(time.perf_counter() - start)
                errors += failed

        async def loop(until: float, measure: bool) -> None:
            while time.perf_counter() < until:
                await one(measure)

        if warmup > 0 and not forms:
            await asyncio.gather(*(loop(time.perf_counter() + warmup, False) for _ in range(connections)))
        start = time.perf_counter()
        await asyncio.gather(*(loop(start + seconds, True) for _ in range(connections)))
        elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * q))] * 1000 if latencies else float("nan")

    return {
        "req_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "requests": len(latencies),
        "errors": errors,
        "driver": "httpx",
    }
