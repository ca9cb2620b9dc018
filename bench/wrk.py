"""Throughput from a separate process: wrk (Debian's `wrk` package) with bench/report.lua.

wrk runs its own event loop in C on two threads, so the load generator costs the machine far
less than the server it measures. Each run is bounded by time; a warm-up run is excluded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

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
) -> dict[str, Any]:
    """req/s, p50/p95/p99 (ms) and error counts of GET `url` (or POSTs of `bodies`' lines)."""
    if not available():
        raise WrkMissingError("wrk is not installed: apt-get install -y wrk")
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
