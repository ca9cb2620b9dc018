"""Where the time goes (`python -m bench.profile`): CPU per request of every service, and a sampled
profile of the service that does the work, for a client_credentials grant, an authorized read and
a hook (one no-op service, three prefetch templates).

A one-worker stack on PostgreSQL (the supervisor's processes, real TLS) is driven by an async httpx
client at concurrency 8 for a bounded time per path. Meanwhile py-spy (PyPI; not a dependency of
mockehr: pass its path with --py-spy or put it on PATH) samples the processes without stopping
them (`--nonblocking`, idle stacks excluded), and /proc gives each process's CPU seconds, so:

- `cpu_ms_per_request[service]`: that service's user+system CPU time over the run ÷ requests — what
  a request costs the machine, whatever the load (the wall-clock rates move with it);
- `top_inclusive`: the share of the sampled CPU time spent under each function (a function counted
  once per sample), `top_self`: the share in the function itself, over the busiest service.

The profile is read in docs/performance.md, "Where the time goes, and the plan".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench import stack_bench
from bench.hooks import noop_service
from common.tls import client_ssl_context

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("token", "read", "hook")
FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^:]*)(?::\d+)?\)$")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _short(frame: str) -> str:
    """`function (path/to/module.py:12)` → `module.function`, the line dropped so one function is
    one entry."""
    match = FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    file = match["file"].removeprefix(f"{ROOT}/")
    for marker in ("site-packages/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    module = file.removesuffix(".py").replace("/", ".").lstrip(".")
    return f"{module}.{match['fn']}"


# A thread parked in one of these holds no CPU: py-spy still samples it (its idle detection sees
# the process, not each pool thread), so its samples are left out.
IDLE_LEAVES = (
    "threading.Condition.wait",
    "threading.Event.wait",
    "queue.Queue.get",
    "concurrent.futures.thread._worker",
)
# Frames under which every sample of a service runs (process start-up, the event loop's entry).
ROOT_PREFIXES: tuple[str, ...] = ("uvicorn.main.", "uvicorn.server.", "uvicorn._compat.", "click.", "mockehr.serve.")
ROOT_PREFIXES += ("<frozen runpy>", "asyncio.runners.", "threading.Thread._bootstrap")
# Where a sample's leaf frame is, by module prefix (first match); the event loop's own frame is
# uvloop's C code: sockets, TLS records and callbacks.
CATEGORIES = (
    ("crypto (joserfc, cryptography)", ("joserfc.", "cryptography.")),
    ("TLS handshakes", ("ssl.SSLObject.do_handshake",)),
    ("event loop, sockets and TLS records (uvloop, C)", ("asyncio.runners.Runner.run", "ssl.", "anyio._backends")),
    ("database driver (asyncpg)", ("asyncpg.",)),
    ("ORM and SQL building (SQLAlchemy)", ("sqlalchemy.",)),
    ("a failed `import sniffio` per outbound request (httpcore)", ("<frozen importlib", "_distutils_hack.")),
    ("outbound HTTP client (httpx, httpcore)", ("httpx.", "httpcore.", "h11.")),
    ("HTTP server and framework (uvicorn, Starlette, FastAPI)", ("uvicorn.", "starlette.", "fastapi.", "httptools.")),
    ("JSON, pydantic", ("json.", "orjson.", "pydantic")),
    ("logging", ("logging.", "common.logs")),
    ("mockehr's own code", ("authserver.", "fhirserver.", "ehr.", "common.", "mockehr.")),
)


def _category(leaf: str) -> str:
    return next((name for name, prefixes in CATEGORIES if leaf.startswith(prefixes)), "other Python")


def summarize(collapsed: str, top: int = 25) -> dict[str, Any]:
    """Shares (%) of the busy samples from py-spy's collapsed stacks (`a;b;c count`): under each
    function (counted once per sample), in each function itself, and per category of leaf."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames or frames[-1].startswith(IDLE_LEAVES):
            continue
        total += count
        for name in set(frames):
            if not name.startswith(ROOT_PREFIXES):
                inclusive[name] += count
        own[frames[-1]] += count
        categories[_category(frames[-1])] += count

    def shares(counter: Counter[str], limit: int | None = top) -> dict[str, float]:
        return {name: round(100 * n / total, 1) for name, n in counter.most_common(limit)} if total else {}

    return {
        "samples": total,
        "by_category": shares(categories, None),
        "top_inclusive": shares(inclusive),
        "top_self": shares(own),
    }


async def _drive(
    call: Callable[[httpx.AsyncClient], Awaitable[bool]], client: httpx.AsyncClient, seconds: float, concurrency: int
) -> tuple[int, int]:
    """(requests completed, of which failed) by `concurrency` loops of `call` for `seconds`."""
    done, failed = 0, 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done, failed
        while time.perf_counter() < deadline:
            failed += not await call(client)
            done += 1

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done, failed


def _profile_path(
    running: stack_bench.Running,
    args: argparse.Namespace,
    name: str,
    call: Callable[[httpx.AsyncClient], Awaitable[bool]],
) -> dict[str, Any]:
    py_spy, seconds, concurrency, out_dir = args.py_spy, args.seconds, args.concurrency, Path(args.out)
    name = f"{name}-c{concurrency}"
    pids = {p.name: p.process.pid for p in running.processes if p.process.poll() is None}
    record = [py_spy, "record", "--duration", str(round(seconds)), "--rate", "250", "--nonblocking", "--format", "raw"]
    spies = {
        service: subprocess.Popen(
            [*record, "--pid", str(pid), "--output", str(out_dir / f"{name}-{service}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for service, pid in pids.items()
    }
    before = {service: cpu_seconds(pid) for service, pid in pids.items()}
    load_before = os.getloadavg()[0]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def run() -> tuple[int, int]:
        async with running.client(limits=limits) as client:
            for _ in range(5):  # warm-up: connections, caches
                await call(client)
            return await _drive(call, client, seconds, concurrency)

    started = time.perf_counter()
    requests, errors = asyncio.run(run())
    elapsed = time.perf_counter() - started
    cpu = {service: cpu_seconds(pid) - before[service] for service, pid in pids.items()}
    for spy in spies.values():
        try:
            spy.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
    busiest = max(cpu, key=lambda service: cpu[service])
    profiles = {}
    for service in pids:
        path = out_dir / f"{name}-{service}.txt"
        if path.exists() and cpu[service] > 0.05 * cpu[busiest]:
            profiles[service] = summarize(path.read_text())
    return {
        "raw": name,  # the collapsed stacks: <out>/<raw>-<service>.txt
        "concurrency": concurrency,
        "requests": requests,
        "req_per_s": round(requests / elapsed, 1),
        "errors": errors,
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "cpu_ms_per_request": {s: round(1000 * c / requests, 2) for s, c in cpu.items() if requests},
        "busiest": busiest,
        "profiles": profiles,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.__main__ import database

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with database("postgresql", args.pg) as url, stack_bench.running_stack(url, 30, 1) as running:
        stack = running.stack
        who = stack_bench.actors(running)
        token_url = f"{stack.base_url('authserver')}/token"
        fhir = stack.url("fhirserver")
        forms = [who.backend_form(token_url) for _ in range(int(600 * args.seconds))]

        async def grant(client: httpx.AsyncClient) -> bool:
            response = await client.post(token_url, data=forms.pop() if forms else who.backend_form(token_url))
            return response.status_code == 200

        if "token" in args.paths:
            results["client_credentials grant"] = _profile_path(running, args, "token", grant)

        token = stack_bench._token(running, who.exchange_form(token_url, fhir))
        read_url = f"{fhir}/Patient/{who.patient}"

        async def read(client: httpx.AsyncClient) -> bool:
            response = await client.get(read_url, headers={"Authorization": f"Bearer {token}"})
            return response.status_code == 200

        if "read" in args.paths:
            results["authorized read"] = _profile_path(running, args, "read", read)
        if "hook" not in args.paths:
            return results

        admin = {"Authorization": f"Bearer {(stack.data_dir / 'admin-token').read_text().strip()}"}
        ehr = stack.base_url("ehr")
        users = json.loads((stack.data_dir / "demo-users.json").read_text())
        user = next(iter(users.values()))
        practitioner = "Practitioner/" + user["fhirUser"].rstrip("/").rsplit("/", 1)[1]
        with noop_service(running) as discovery:
            registered = httpx.post(
                f"{ehr}/api/services",
                headers=admin,
                verify=client_ssl_context(running.ca),
                trust_env=False,
                timeout=30,
                json={
                    "discoveryUrl": discovery,
                    "hooks": ["patient-view"],
                    "approveAllPrefetch": True,
                    "clientId": "bench-profile",
                    "scope": ["patient/Patient.rs", "patient/Condition.rs", "patient/Observation.rs"],
                },
            )
            registered.raise_for_status()
            service = next(s["id"] for s in registered.json()["services"] if s["cdsId"] == "noop3-1")
            body = {"userId": practitioner, "patientId": user["patients"][0], "services": [service]}

            async def hook(client: httpx.AsyncClient) -> bool:
                response = await client.post(f"{ehr}/api/hooks/patient-view", headers=admin, json=body)
                return response.status_code == 200 and all(s["status"] == "ok" for s in response.json()["services"])

            results["hook (1 service, 3 prefetch)"] = _profile_path(running, args, "hook", hook)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="path of py-spy (PyPI)")
    parser.add_argument("--seconds", type=float, default=8.0, help="profiled seconds per path")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--paths", default=",".join(PATHS), help="of token, read, hook (comma-separated)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "profile"))
    parser.add_argument(
        "--pg", default=os.environ.get("MOCKEHR_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument(
        "--resummarize", action="store_true", help="recompute the shares from the raw profiles of the last run"
    )
    args = parser.parse_args()
    path = Path(args.out) / "profile.json"
    if args.resummarize:
        results = json.loads(path.read_text())
        for figures in results.values():
            for service in figures["profiles"]:
                raw = Path(args.out) / f"{figures['raw']}-{service}.txt"
                figures["profiles"][service] = summarize(raw.read_text())
    else:
        results = run(args)
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
