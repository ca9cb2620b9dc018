"""`make soak`: many concurrent users for a bounded time against `mockehr up --replicas N`
(HAProxy in front, PostgreSQL and Redis behind), as issue 18 item 6 asks.

Each user loops until the time is up, picking a request by weight: tokens 5 % (client_credentials
with a private_key_jwt assertion), reads 40 % (Patient by id), searches 30 % (Observation by
patient, _count=10), hooks 15 % (patient-view through the EHR's API, which exchanges tokens and
calls the example CDS Service), creates 10 % (an Observation). Afterwards every acknowledged
create (201) is read back.

It fails (exit 1) on any 5xx other than the documented fail-closed answers (503 with an
OperationOutcome "transient" or OAuth "temporarily_unavailable"), on any lost write, or on an
error rate (any non-2xx answer or transport error, fail-closed ones included) of 0.1 % or more.
Figures (requests/s per kind, p50/p95, errors by status, hook calls whose CDS Service failed) are
printed as JSON, also to --json. Bounded: --seconds (default 60) of load, a start-up limit, and
the write check.

    python -m bench.soak --users 200 --seconds 60 --replicas 2 --json soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.__main__ import database, machine
from bench.stack_bench import _assertion, _register_backend
from common.tls import client_ssl_context
from mockehr.stack import Stack

WEIGHTS = {"token": 5, "read": 40, "search": 30, "hook": 15, "create": 10}
ERROR_RATE_LIMIT = 0.001
START_SECONDS = 600
PG_ADMIN_URL = os.environ.get("MOCKEHR_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("MOCKEHR_SOAK_REDIS_URL", "redis://127.0.0.1:6379/14")


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    undocumented_5xx: list[str] = field(default_factory=list)
    hook_service_failures: Counter[str] = field(default_factory=Counter)
    fail_closed_by: Counter[str] = field(default_factory=Counter)

    def add(self, kind: str, seconds: float, status: str) -> None:
        self.latencies.setdefault(kind, []).append(seconds)
        self.statuses.setdefault(kind, Counter())[status] += 1


@dataclass
class Target:
    stack: Stack
    backend_token: str
    admin_token: str
    users: list[dict[str, Any]]
    patients: list[str]
    token_form: Any  # () -> dict[str, str]: a fresh client_credentials form


def fail_closed(response: httpx.Response) -> bool:
    """A documented fail-closed answer: 503 saying, in the service's protocol, to retry."""
    if response.status_code != 503:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    issues = body.get("issue") or [{}]
    return body.get("error") == "temporarily_unavailable" or issues[0].get("code") == "transient"


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return "no JSON body"
    if not isinstance(body, dict):
        return "no JSON object"
    issues = body.get("issue") or [{}]
    return str(body.get("error_description") or issues[0].get("diagnostics") or "no reason given")[:120]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1) if ordered else 0.0


async def _one(client: httpx.AsyncClient, target: Target, kind: str, rng: random.Random, tally: Tally) -> None:
    stack = target.stack
    fhir = stack.url("fhirserver")
    bearer = {"Authorization": f"Bearer {target.backend_token}"}
    patient = rng.choice(target.patients)
    if kind == "token":
        request = client.post(f"{stack.base_url('authserver')}/token", data=target.token_form())
    elif kind == "read":
        request = client.get(f"{fhir}/Patient/{patient}", headers=bearer)
    elif kind == "search":
        request = client.get(f"{fhir}/Observation", params={"patient": patient, "_count": "10"}, headers=bearer)
    elif kind == "hook":
        user = rng.choice(target.users)
        body = {"userId": user["fhirUser"], "patientId": rng.choice(user["patients"])}
        request = client.post(
            f"{stack.base_url('ehr')}/api/hooks/patient-view",
            json=body,
            headers={"Authorization": f"Bearer {target.admin_token}"},
        )
    else:
        observation = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "soak"},
            "subject": {"reference": f"Patient/{patient}"},
            "valueString": f"soak {rng.random()}",
        }
        request = client.post(f"{fhir}/Observation", json=observation, headers=bearer)
    started = time.monotonic()
    try:
        response = await request
    except httpx.HTTPError as exc:
        tally.add(kind, time.monotonic() - started, type(exc).__name__)
        return
    tally.add(kind, time.monotonic() - started, str(response.status_code))
    if response.status_code >= 500 and not fail_closed(response):
        tally.undocumented_5xx.append(f"{kind} {response.status_code} {response.text[:200]}")
    elif response.status_code == 503:
        # HAProxy's own answer (mockehr/balancer.py) when no replica of the service is ready.
        # The service's own says why: a stale revocation view (the guard fails closed) differs from
        # an exhausted pool or a stopped statement (overload), and the fix differs too.
        by = "balancer: no ready replica" if "no replica of the" in response.text else f"{kind}: {_reason(response)}"
        tally.fail_closed_by[by] += 1
    if kind == "create" and response.status_code == 201:
        tally.created.append(response.json()["id"])
    if kind == "hook" and response.status_code == 200:
        for service in response.json().get("services", []):
            if service.get("status") != "ok":
                tally.hook_service_failures[f"{service.get('serviceId')}: {service.get('status')}"] += 1


async def _user(client: httpx.AsyncClient, target: Target, seed: int, deadline: float, tally: Tally) -> None:
    rng = random.Random(seed)  # noqa: S311 - a load mix, not security
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    while time.monotonic() < deadline:
        await _one(client, target, rng.choices(kinds, weights)[0], rng, tally)


async def _lost_writes(client: httpx.AsyncClient, target: Target, ids: list[str]) -> list[str]:
    """Every acknowledged create read back (at most 16 at a time); the ids not found."""
    fhir = target.stack.url("fhirserver")
    bearer = {"Authorization": f"Bearer {target.backend_token}"}
    gate = asyncio.Semaphore(16)
    lost: list[str] = []

    async def check(ident: str) -> None:
        async with gate:
            for _ in range(3):  # a fail-closed 503 or a dropped connection is not a lost write
                try:
                    response = await client.get(f"{fhir}/Observation/{ident}", headers=bearer)
                except httpx.HTTPError:
                    await asyncio.sleep(0.5)
                    continue
                if response.status_code == 200:
                    return
                if response.status_code != 503:
                    break
                await asyncio.sleep(0.5)
            lost.append(ident)

    await asyncio.gather(*(check(i) for i in ids))
    return lost


async def drive(target: Target, users: int, seconds: float) -> dict[str, Any]:
    tally = Tally()
    limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)
    verify = client_ssl_context(target.stack.data_dir / "ca.pem")
    async with httpx.AsyncClient(verify=verify, timeout=60.0, limits=limits, trust_env=False) as client:
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(_user(client, target, i, deadline, tally) for i in range(users)))
        elapsed = time.monotonic() - started
        lost = await _lost_writes(client, target, tally.created)
    return report(tally, elapsed, lost)


def report(tally: Tally, elapsed: float, lost: list[str]) -> dict[str, Any]:
    total = sum(sum(c.values()) for c in tally.statuses.values())
    errors: Counter[str] = Counter()
    for counts in tally.statuses.values():
        errors.update({status: n for status, n in counts.items() if not status.startswith("2")})
    error_rate = sum(errors.values()) / total if total else 1.0
    kinds = {
        kind: {
            "requests": len(values),
            "per_second": round(len(values) / elapsed, 1),
            "p50_ms": _pct(values, 0.50),
            "p95_ms": _pct(values, 0.95),
            "statuses": dict(tally.statuses[kind]),
        }
        for kind, values in sorted(tally.latencies.items())
    }
    failures = []
    if tally.undocumented_5xx:
        failures.append(f"{len(tally.undocumented_5xx)} 5xx answers that are not a documented fail-closed 503")
    if lost:
        failures.append(f"{len(lost)} acknowledged creates not readable afterwards")
    if error_rate >= ERROR_RATE_LIMIT:
        failures.append(f"error rate {error_rate:.2%} ≥ {ERROR_RATE_LIMIT:.1%}")
    if total == 0:
        failures.append("no request completed")
    return {
        "seconds": round(elapsed, 1),
        "requests": total,
        "per_second": round(total / elapsed, 1) if elapsed else 0.0,
        "error_rate": round(error_rate, 5),
        "errors_by_status": dict(errors),
        "undocumented_5xx_examples": tally.undocumented_5xx[:5],
        "acknowledged_creates": len(tally.created),
        "lost_writes": len(lost),
        "fail_closed_503_by": dict(tally.fail_closed_by),
        "hook_service_failures": dict(tally.hook_service_failures),
        "kinds": kinds,
        "failures": failures,
        "passed": not failures,
    }


# --- the stack ------------------------------------------------------------------------------------


def _start(data_dir: Path, base_port: int, db_url: str, replicas: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mockehr",
                "up",
                "--data-dir",
                str(data_dir),
                "--base-port",
                str(base_port),
                "--db",
                db_url,
                "--redis",
                REDIS_URL,
                "--replicas",
                str(replicas),
                "--patients",
                "30",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "200"},
        )


def _wait_up(process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if "Ctrl-C stops every service." in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise SystemExit(
                f"soak: mockehr up exited {process.returncode}:\n{log.read_text(errors='replace')[-2000:]}"
            )
        time.sleep(0.5)
    raise SystemExit(f"soak: the stack was not up within {START_SECONDS} s (see {log})")


def _target(stack: Stack) -> Target:
    users = [dict(u) for u in json.loads((stack.data_dir / "demo-users.json").read_text()).values()]
    backend = asyncio.run(_register_backend(stack))
    token_url = f"{stack.base_url('authserver')}/token"

    def token_form() -> dict[str, str]:
        return {
            "grant_type": "client_credentials",
            "scope": "system/*.cruds",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": _assertion("bench-backend", backend, token_url),
        }

    response = httpx.post(
        token_url, data=token_form(), verify=client_ssl_context(stack.data_dir / "ca.pem"), trust_env=False, timeout=60
    )
    response.raise_for_status()
    return Target(
        stack=stack,
        backend_token=response.json()["access_token"],
        admin_token=(stack.data_dir / "admin-token").read_text().strip(),
        users=users,
        patients=sorted({p for u in users for p in u["patients"]}),
        token_form=token_form,
    )


def run(users: int, seconds: float, replicas: int, base_port: int) -> dict[str, Any]:
    started_load = os.getloadavg()
    with database("postgresql", PG_ADMIN_URL) as db_url:
        assert db_url is not None
        data_dir = Path(tempfile.mkdtemp(prefix="mockehr-soak-")) / ".mockehr"
        log = data_dir.parent / "up.log"
        process = _start(data_dir, base_port, db_url, replicas, log)
        try:
            _wait_up(process, log)
            stack = Stack(data_dir=data_dir, base_port=base_port, database_url=db_url, replicas=replicas)
            result = asyncio.run(drive(_target(stack), users, seconds))
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    result["setup"] = {"users": users, "replicas": replicas, "weights_percent": WEIGHTS, "logs": str(data_dir)}
    result["machine"] = {**machine(), "load_average_before": [round(x, 2) for x in started_load]}
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200, help="concurrent users (default 200)")
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration (default 60)")
    parser.add_argument("--replicas", type=int, default=2, help="processes per service (default 2)")
    parser.add_argument("--base-port", type=int, default=39000, help="the stack's base port (default 39000)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if not (1 <= args.users <= 1000 and 1 <= args.seconds <= 3600 and 2 <= args.replicas <= 8):
        raise SystemExit("soak: --users 1–1000, --seconds 1–3600, --replicas 2–8")
    result = run(args.users, args.seconds, args.replicas, args.base_port)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if not result["passed"]:
        print("soak FAILED: " + "; ".join(result["failures"]), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
