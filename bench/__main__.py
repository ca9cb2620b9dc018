"""`make bench` (`python -m bench`): measured figures for the stack, as tables and as JSON.

Groups (`--only`, default all):
- tokens: client_credentials and token exchange per second (bench/stack_bench.py);
- fhir: read, compartment search, `_include` and a Synthea transaction at concurrency 8 and 32,
  on SQLite and PostgreSQL, each beside the floor measured in the same run; peak RSS per service;
- scale: search latency and database size at 30, 300 and 3,000 synthetic patients;
- hooks: EHR overhead of a hook call to no-op CDS Services (bench/hooks.py);
- jose: ES384/ES256 sign and verify per second, in-process;
- peer: authorized read and compartment search of mockehr's FHIR server beside a Python FHIR peer
  from PyPI (sekmet-fhir, its own venv) and the floor, one worker each, same data (bench/peer.py).
Results: a table per group, and bench/results/bench-<when>.json with the machine, versions,
configuration and every figure. The whole run takes about ten minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import sqlite3
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = [
    "uvicorn",
    "uvloop",
    "httptools",
    "starlette",
    "fastapi",
    "sqlalchemy",
    "asyncpg",
    "aiosqlite",
    "joserfc",
    "cryptography",
    "orjson",
    "httpx",
]
console = Console(width=max(160, Console().width))


# --- machine and versions -----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if "model name" in line
            ),
            "",
        )
        mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        mem_gb = round(int(mem.split()[1]) / 1024 / 1024, 1)
    except (OSError, StopIteration):
        mem_gb = 0.0
    try:
        wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    except OSError:
        wrk_version = "missing"
    versions = {name: _version(name) for name in PACKAGES}
    versions.update(
        {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "openssl": ssl.OPENSSL_VERSION}
    )
    versions["wrk"] = wrk_version
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


# --- databases ------------------------------------------------------------------------------------


async def _pg(url: str, sql: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql://", "postgres://", 1), timeout=5)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


@contextmanager
def database(kind: str, pg_admin_url: str) -> Iterator[str | None]:
    """None (the stack's SQLite file) or a fresh PostgreSQL database, dropped afterwards."""
    if kind == "sqlite":
        yield None
        return
    name = f"mockehr_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(_pg(pg_admin_url, f'CREATE DATABASE "{name}"'))
    try:
        yield pg_admin_url.rpartition("/")[0] + f"/{name}"
    finally:
        asyncio.run(_pg(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _fixtures() -> Path | None:
    for candidate in (os.environ.get("MOCKEHR_FIXTURES", ""), str(ROOT.parent / "shared" / "fixtures")):
        if candidate and (Path(candidate) / "synthea-r4").is_dir():
            return Path(candidate) / "synthea-r4"
    return None


# --- groups ---------------------------------------------------------------------------------------


def bench_jose() -> dict[str, float]:
    from joserfc.jwk import KeySet

    from common.jose import new_jti, sign_jwt, verify_jwt
    from common.keys import ALGORITHMS, SigningKey, generate_key, public_jwk

    def rate(fn: Callable[[], object], seconds: float = 1.0) -> float:
        for _ in range(20):
            fn()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            count += 1
        return round(count / (time.perf_counter() - start))

    out: dict[str, float] = {}
    for alg in ALGORITHMS:
        key = generate_key(alg)
        signer = SigningKey(key.thumbprint(), alg, key)
        keys = KeySet.import_key_set({"keys": [public_jwk(key, signer.kid, alg)]})
        now = int(time.time())
        claims = {"iss": "https://ehr", "aud": "https://svc", "iat": now, "exp": now + 300, "jti": new_jti()}
        token = sign_jwt(claims, signer, typ="JWT")
        out[f"{alg} sign/s"] = rate(lambda: sign_jwt(claims, signer, typ="JWT"))  # noqa: B023 - used at once
        out[f"{alg} verify/s"] = rate(
            lambda: verify_jwt(token, keys, algorithms=[alg], typ="JWT", issuer="https://ehr", audience="https://svc")  # noqa: B023
        )
    return out


def bench_stack(args: argparse.Namespace, groups: set[str]) -> dict[str, Any]:
    from bench import stack_bench

    out: dict[str, Any] = {}
    for kind in args.db:
        with database(kind, args.pg) as url, stack_bench.running_stack(url, args.patients, args.workers) as running:
            who = stack_bench.actors(running)
            figures: dict[str, Any] = {"load_average_before": [round(x, 2) for x in os.getloadavg()]}
            if "tokens" in groups:
                figures["tokens"] = stack_bench.token_issuance(running, who, args.seconds, (8, 32))
            if "fhir" in groups:
                figures["fhir"] = stack_bench.fhir_requests(running, who, args.seconds, args.workers)
                figures["fhir"].update(
                    stack_bench.fhir_transactions(running, who, _fixtures(), args.seconds, args.workers)
                )
            figures["memory"] = stack_bench.peak_memory(running)
            figures["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
            if url is not None:
                figures["database_version"] = asyncio.run(_pg(url, "SHOW server_version"))
            out[kind] = figures
    return out


def bench_peer(args: argparse.Namespace) -> dict[str, Any]:
    """Per process: a one-worker stack, the peer and the floor, on PostgreSQL (SQLite when
    PostgreSQL is not among the benchmarked databases), like the hook group: one database is
    enough for a ratio, and keeps `make bench` near its ten minutes."""
    from bench import peer, stack_bench

    kind = "postgresql" if "postgresql" in args.db else "sqlite"
    with database(kind, args.pg) as url, stack_bench.running_stack(url, args.patients, 1) as running:
        figures: dict[str, Any] = {"load_average_before": [round(x, 2) for x in os.getloadavg()]}
        figures.update(peer.compare(running, stack_bench.actors(running), args.seconds))
        figures["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return {kind: figures}


# --- output ---------------------------------------------------------------------------------------

# (JSON key, printed header) of the peer table.
PEER_COLUMNS = [
    ("mockehr_req_per_s", "mockehr req/s"),
    ("peer_req_per_s", "peer req/s"),
    ("floor_req_per_s", "floor req/s"),
    ("ratio_to_peer", "÷ peer"),
    ("ratio_to_peer_min", "min"),
    ("ratio_to_peer_max", "max"),
    ("ratio_to_floor", "÷ floor"),
    ("mockehr_p50_ms", "mockehr p50"),
    ("peer_p50_ms", "peer p50"),
    ("floor_p50_ms", "floor p50"),
    ("mockehr_errors", "errors"),
    ("peer_errors", "peer errors"),
]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(title: str, rows: dict[str, dict[str, Any]], columns: list[str], headers: list[str] | None = None) -> None:
    if not rows:
        return
    table = Table("", *(headers or columns), title=title, title_justify="left")
    for name, figures in rows.items():
        table.add_row(name, *(_fmt(figures.get(c, "")) for c in columns))
    console.print(table)


def print_report(report: dict[str, Any]) -> None:
    for kind, figures in report.get("stack", {}).items():
        _table(
            f"token issuance ({kind}, tokens/s)",
            figures.get("tokens", {}),
            ["req_per_s", "p50_ms", "p95_ms", "p99_ms", "requests", "errors"],
        )
        _table(
            f"FHIR ({kind}; floor = bare Starlette, same bytes, same run)",
            figures.get("fhir", {}),
            ["req_per_s", "p50_ms", "p95_ms", "floor_req_per_s", "ratio_to_floor", "errors"],
        )
        _table(
            f"peak RSS ({kind}, MB)", figures.get("memory", {}), ["peak_rss_mb_max", "peak_rss_mb_total", "processes"]
        )
    if report.get("scale"):
        _table(
            "scale (SQLite, in-process compartment search _count=10)",
            {f"{row['patients']} patients": row for row in report["scale"]},
            ["resources", "load_s", "load_resources_per_s", "search_p50_ms", "search_p95_ms", "database_mb"],
        )
    if report.get("hooks"):
        _table(
            "hook overhead (EHR total minus the service's own time)",
            report["hooks"].get("results", {}),
            [
                "hooks_per_s",
                "p50_ms",
                "p95_ms",
                "p99_ms",
                "overhead_p50_ms",
                "overhead_p95_ms",
                "direct_p50_ms",
                "ratio_to_direct",
                "errors",
            ],
        )
    for kind, figures in report.get("peer", {}).items():
        _table(
            f"FHIR per process ({kind}; 1 worker each; peer = sekmet-fhir, no auth; floor = bare Starlette)",
            {k: v for k, v in figures.items() if " c=" in k},
            [key for key, _ in PEER_COLUMNS],
            [header for _, header in PEER_COLUMNS],
        )
        console.print(
            f"same data: {figures.get('data')}; load average {figures.get('load_average_before')}"
            f" → {figures.get('load_average_after')}"
        )
    if report.get("jose"):
        _table("JOSE in-process (per second)", {"rate": report["jose"]}, list(report["jose"]))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument(
        "--only", action="append", choices=["tokens", "fhir", "scale", "hooks", "jose", "peer"], help="repeatable"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per figure")
    parser.add_argument("--db", action="append", choices=["sqlite", "postgresql"], help="default: both")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("MOCKEHR_BENCH_WORKERS", "2")))
    parser.add_argument("--patients", type=int, default=30, help="synthetic patients in the benchmarked stack")
    parser.add_argument("--scale", default="30,300,3000", help="patient counts of the scale benchmark")
    parser.add_argument(
        "--pg", default=os.environ.get("MOCKEHR_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    args = parser.parse_args()
    args.db = args.db or ["sqlite", "postgresql"]
    groups = set(args.only or ["tokens", "fhir", "scale", "hooks", "jose", "peer"])
    started = time.monotonic()
    report: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {**vars(args), "groups": sorted(groups)},
    }
    if "jose" in groups:
        report["jose"] = bench_jose()
    if groups & {"tokens", "fhir"}:
        report["stack"] = bench_stack(args, groups)
    if "peer" in groups:
        report["peer"] = bench_peer(args)
    if "scale" in groups:
        from bench.scale import run as run_scale

        report["scale"] = run_scale(tuple(int(n) for n in args.scale.split(",")))
    if "hooks" in groups:
        from bench.hooks import run as run_hooks

        report["hooks"] = run_hooks(args)
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print_report(report)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{report['when'].replace(':', '')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    console.print(f"{report['elapsed_s']} s; written {path}")


if __name__ == "__main__":
    main()
