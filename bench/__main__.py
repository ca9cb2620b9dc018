"""`make bench`: measured figures for what the stack does today, as a table and as JSON.

- jose: ES384 sign and verify per second (in-process; the cost under every token and CDS JWT).
- load: FHIR transaction throughput (Synthea bundles through fhirserver.transaction) on SQLite
  and PostgreSQL, resources per second.
- http: requests per second and p50/p95 of /healthz and the JWKS endpoints of a stack started by
  the supervisor (separate uvicorn processes), driven from this process over real TLS.
Warm-up is excluded; every run is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from common.clock import system_clock
from common.jose import new_jti, sign_jwt, verify_jwt
from common.keys import SigningKey, generate_key, public_jwk
from common.tls import client_ssl_context

ROOT = Path(__file__).resolve().parent.parent
console = Console()


def _rate(fn: Callable[[], object], seconds: float = 2.0, warmup: int = 50) -> float:
    for _ in range(warmup):
        fn()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - start)


def bench_jose() -> dict[str, float]:
    from joserfc.jwk import KeySet

    key = generate_key("ES384")
    signer = SigningKey(key.thumbprint(), "ES384", key)
    keys = KeySet.import_key_set({"keys": [public_jwk(key, signer.kid, "ES384")]})

    def claims() -> dict[str, Any]:
        now = int(system_clock())
        return {"iss": "https://ehr", "aud": "https://svc", "iat": now, "exp": now + 300, "jti": new_jti()}

    token = sign_jwt(claims(), signer, typ="JWT")
    return {
        "es384_sign_per_s": _rate(lambda: sign_jwt(claims(), signer, typ="JWT")),
        "es384_verify_per_s": _rate(
            lambda: verify_jwt(
                token, keys, algorithms=["ES384"], typ="JWT", issuer="https://ehr", audience="https://svc"
            )
        ),
    }


def _fixtures() -> Path | None:
    for candidate in (os.environ.get("MOCKEHR_FIXTURES", ""), str(ROOT.parent / "shared" / "fixtures")):
        if candidate and (Path(candidate) / "synthea-r4").is_dir():
            return Path(candidate) / "synthea-r4"
    return None


async def _pg_admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql://", "postgres://", 1), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def bench_load(pg_admin_url: str, files: int) -> dict[str, float]:
    from common.db import make_engine, make_sessionmaker
    from mockehr import migrate
    from mockehr.loader import load_files

    folder = _fixtures()
    if folder is None:
        return {}
    paths = sorted(folder.glob("*.json"), key=lambda p: (0 if "Information" in p.name else 1, p.name))[: files + 2]
    results: dict[str, float] = {}
    targets: list[tuple[str, str]] = []
    tmp = tempfile.mkdtemp(prefix="mockehr-bench-")
    targets.append(("sqlite", f"sqlite:///{tmp}/bench.db"))
    pg_name = f"mockehr_bench_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_pg_admin(pg_admin_url, f'CREATE DATABASE "{pg_name}"'))
        targets.append(("postgresql", pg_admin_url.rpartition("/")[0] + f"/{pg_name}"))
    except Exception as exc:  # noqa: BLE001 - PostgreSQL is optional for the benchmark
        console.print(f"[yellow]PostgreSQL skipped: {type(exc).__name__}[/yellow]")
    for name, url in targets:
        migrate.upgrade(url)

        async def run(url: str = url) -> tuple[int, float]:
            engine = make_engine(url)
            try:
                start = time.perf_counter()
                loaded = await load_files(make_sessionmaker(engine), paths)
                return sum(r.created for r in loaded), time.perf_counter() - start
            finally:
                await engine.dispose()

        created, seconds = asyncio.run(run())
        results[f"load_{name}_resources_per_s"] = created / seconds
    if len(targets) > 1:
        asyncio.run(_pg_admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
    return results


async def _drive(url: str, ca: Path, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(verify=client_ssl_context(ca), limits=limits, trust_env=False) as client:
        for _ in range(50):
            (await client.get(url)).raise_for_status()
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                (await client.get(url)).raise_for_status()
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "req_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(len(latencies) * 0.95)] * 1000,
    }


def bench_http(seconds: float) -> dict[str, dict[str, float]]:
    from mockehr import setup, supervisor
    from mockehr.stack import Stack

    data_dir = Path(tempfile.mkdtemp(prefix="mockehr-bench-stack-"))
    base = 31000 + os.getpid() % 1000 * 4
    stack = Stack(data_dir=data_dir, base_port=base)
    setup.check(stack, ports=True)
    setup.prepare(stack, patients=3)
    running = supervisor.start(stack)
    try:
        supervisor.wait_ready(stack, running)
        ca = data_dir / "ca.pem"
        return {
            f"{name} c={c}": asyncio.run(_drive(stack.base_url(svc) + path, ca, c, seconds))
            for name, svc, path in [("ehr /healthz", "ehr", "/healthz"), ("ehr JWKS", "ehr", "/.well-known/jwks.json")]
            for c in (1, 8)
        }
    finally:
        supervisor.stop(running)


def bench_stack(pg_admin_url: str, seconds: int, patients: int) -> dict[str, Any]:
    """Token issuance and FHIR throughput on PostgreSQL (a fresh database) or SQLite if it is down."""
    from bench.stack_bench import run

    name = f"mockehr_bench_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_pg_admin(pg_admin_url, f'CREATE DATABASE "{name}"'))
    except Exception:  # noqa: BLE001 - fall back to SQLite
        return {f"sqlite {k}": v for k, v in run(None, seconds, patients).items()}
    try:
        return {
            f"postgresql {k}": v
            for k, v in run(pg_admin_url.rpartition("/")[0] + f"/{name}", seconds, patients).items()
        }
    finally:
        asyncio.run(_pg_admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per HTTP figure")
    parser.add_argument("--files", type=int, default=10, help="Synthea patient bundles to load")
    parser.add_argument(
        "--pg", default=os.environ.get("MOCKEHR_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--only", choices=["all", "stack", "scale"], default="all", help="run one group only")
    parser.add_argument("--patients", type=int, default=30, help="synthetic patients in the benchmarked stack")
    args = parser.parse_args()

    report: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "config": vars(args),
    }
    if args.only == "all":
        report["jose"] = bench_jose()
        report["load"] = bench_load(args.pg, args.files)
        report["http"] = bench_http(args.seconds)
    if args.only in ("all", "stack"):
        report["stack"] = bench_stack(args.pg, int(args.seconds), args.patients)
    if args.only in ("all", "scale"):
        from bench.scale import run as run_scale

        # 3,000 patients take ~15 min to load here: only when the scale group runs on its own.
        report["scale"] = run_scale((30, 300, 3000) if args.only == "scale" else (30, 300))

    table = Table("benchmark", "figure", title="mockehr benchmarks", title_justify="left")
    for name, value in {**report.get("jose", {}), **report.get("load", {})}.items():
        table.add_row(name, f"{value:,.0f}")
    for name, figures in {**report.get("http", {}), **report.get("stack", {})}.items():
        table.add_row(name, "  ".join(f"{k} {v:,.2f}" for k, v in figures.items()))
    for row in report.get("scale", []):
        table.add_row(
            f"scale {row['patients']} patients", "  ".join(f"{k} {v}" for k, v in row.items() if k != "patients")
        )
    console.print(table)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{report['when'].replace(':', '')}.json"
    path.write_text(json.dumps(report, indent=2))
    console.print(f"written {path}")


if __name__ == "__main__":
    main()
