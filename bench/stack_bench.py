"""Benchmarks against a running stack (the supervisor's separate uvicorn processes, real TLS):

- FHIR: authorized read, compartment search `_count=10`, the same with `_include`, at
  concurrency 8 and 32 (wrk from a separate process), and a transaction of a Synthea patient
  Bundle (an async httpx driver: each upload is ~200 kB), each next to the floor — a bare
  Starlette endpoint serving the same bytes, started with the same uvicorn flags in the same run;
- token issuance: client_credentials and token exchange (wrk POSTing pre-signed, single-use
  assertions, so the load generator never signs while measuring);
- memory: peak RSS (VmHWM) of every service process after the load.

Warm-up requests are excluded; every run is bounded in time.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from authserver import clients
from authserver.clients import Client
from bench import wrk
from common.db import make_engine, make_sessionmaker
from common.jose import new_jti, sign_jwt
from common.keys import KeyStore, SigningKey, generate_key, public_jwk
from common.tls import client_ssl_context
from mockehr import setup, supervisor
from mockehr.stack import SERVICES, Stack

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
EXCHANGE_SCOPE = "patient/Patient.rs patient/Observation.rs patient/Encounter.rs"
BACKEND_ID = "bench-backend"


@dataclass
class Running:
    stack: Stack
    processes: list[supervisor.Running]

    @property
    def ca(self) -> Path:
        return self.stack.data_dir / "ca.pem"

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(verify=client_ssl_context(self.ca), trust_env=False, timeout=60.0, **kwargs)


@contextmanager
def running_stack(db_url: str | None, patients: int, workers: int) -> Iterator[Running]:
    data_dir = Path(tempfile.mkdtemp(prefix="mockehr-bench-"))
    stack = Stack(data_dir=data_dir, base_port=33000 + (uuid.uuid4().int % 500) * 8, database_url=db_url)
    setup.check(stack, ports=True)
    setup.prepare(stack, patients=patients)
    saved = {k: os.environ.get(k) for k in ("MOCKEHR_FHIR_WORKERS", "MOCKEHR_AUTH_WORKERS")}
    os.environ.update({k: str(workers) for k in saved})
    try:
        processes = supervisor.start(stack)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    try:
        supervisor.wait_ready(stack, processes)
        yield Running(stack, processes)
    finally:
        supervisor.stop(processes)
    # Only after a clean run: a failed one keeps its data directory and logs to look at.
    shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def uvicorn_server(
    stack: Stack,
    factory: str,
    port: int,
    log_path: Path,
    probe_url: str,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    python: str = sys.executable,
) -> Iterator[None]:
    """A bench app on a spare port of the stack, with the services' uvicorn flags and TLS; up once
    `probe_url` answers 2xx (30 s at most), terminated on exit. Its log goes to `log_path`. `python`
    is another venv's interpreter for a third-party app (bench/peer.py)."""
    tls = stack.data_dir.resolve() / "tls"
    argv = [python, "-m", "uvicorn", "--factory", factory, "--host", stack.host]
    argv += ["--port", str(port), "--ssl-certfile", str(tls / "server.pem")]
    argv += ["--ssl-keyfile", str(tls / "server-key.pem"), "--no-server-header", "--no-proxy-headers"]
    argv += ["--timeout-graceful-shutdown", "2"]
    argv += ["--workers", str(workers)] if workers > 1 else []
    # Its access log goes to a file, like the services' logs (supervisor): same work per request.
    log = open(log_path, "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        verify = client_ssl_context(stack.data_dir / "ca.pem")
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(probe_url, verify=verify, timeout=2, trust_env=False).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextmanager
def floor_server(stack: Stack, bodies: dict[str, bytes], workers: int) -> Iterator[str]:
    """The bare endpoint on the stack's spare port, same uvicorn flags and TLS; yields its base URL."""
    folder = Path(tempfile.mkdtemp(prefix="mockehr-floor-"))
    for name, body in bodies.items():
        (folder / f"{name}.json").write_bytes(body)
    port = stack.base_port + 7
    env = {**os.environ, "MOCKEHR_BENCH_FLOOR_DIR": str(folder)}
    base = f"https://{stack.public_host}:{port}/floor"
    try:
        probe = f"{base}/{next(iter(bodies))}"
        with uvicorn_server(
            stack, "bench.floor:create_app", port, folder / "floor.log", probe, workers=workers, env=env
        ):
            yield base
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- clients, assertions and tokens -----------------------------------------------------------


async def _register_backend(stack: Stack) -> SigningKey:
    key = generate_key("ES384")
    signer = SigningKey(key.thumbprint(), "ES384", key)
    engine = make_engine(stack.db_url)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            await clients.register(
                session,
                Client(
                    BACKEND_ID,
                    "backend",
                    "bench",
                    "private_key_jwt",
                    "system/*.cruds",
                    False,
                    True,
                    jwks={"keys": [public_jwk(key, signer.kid, "ES384")]},
                ),
            )
    finally:
        await engine.dispose()
    return signer


async def _ehr_signer(stack: Stack) -> SigningKey:
    engine = make_engine(stack.db_url)
    try:
        return await KeyStore(make_sessionmaker(engine), "ehr", stack.kek(), refresh_seconds=1).signer()
    finally:
        await engine.dispose()


def _assertion(client_id: str, signer: SigningKey, token_url: str) -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": token_url, "iat": now, "exp": now + 120, "jti": new_jti()}
    return sign_jwt(claims, signer, typ="JWT")


@dataclass
class Actors:
    backend: SigningKey
    ehr: SigningKey
    user: str  # the demo practitioner's fhirUser
    patient: str

    def backend_form(self, token_url: str, scope: str = "system/*.rs") -> dict[str, str]:
        return {
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": _assertion(BACKEND_ID, self.backend, token_url),
        }

    def exchange_form(self, token_url: str, fhir_base: str) -> dict[str, str]:
        """What the EHR sends to get a CDS Service's token (issue 3, RFC 8693)."""
        now = int(time.time())
        claims = {"iss": "ehr", "sub": self.user, "aud": token_url, "iat": now, "exp": now + 60, "jti": new_jti()}
        return {
            "grant_type": TOKEN_EXCHANGE,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": _assertion("ehr", self.ehr, token_url),
            "subject_token": sign_jwt(claims, self.ehr, typ="user+jwt"),
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "cds_service": "cds-example",
            "patient": self.patient,
            "resource": fhir_base,
            "scope": EXCHANGE_SCOPE,
        }


def actors(running: Running) -> Actors:
    stack = running.stack
    users = json.loads((stack.data_dir / "demo-users.json").read_text())
    user = next(iter(users.values()))
    backend, ehr = asyncio.run(_register_backend(stack)), asyncio.run(_ehr_signer(stack))
    return Actors(backend, ehr, user["fhirUser"], user["patients"][0])


def _token(running: Running, form: dict[str, str]) -> str:
    url = f"{running.stack.base_url('authserver')}/token"
    response = httpx.post(url, data=form, verify=client_ssl_context(running.ca), trust_env=False, timeout=30)
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


# --- token issuance -----------------------------------------------------------------------------


def token_issuance(running: Running, who: Actors, seconds: float, concurrencies: tuple[int, ...]) -> dict[str, Any]:
    """Tokens per second: wrk POSTs pre-signed forms, each used exactly once (fresh jti)."""
    stack = running.stack
    token_url = f"{stack.base_url('authserver')}/token"
    fhir = stack.url("fhirserver")
    kinds: dict[str, Callable[[], dict[str, str]]] = {
        "client_credentials": lambda: who.backend_form(token_url),
        "token_exchange": lambda: who.exchange_form(token_url, fhir),
    }
    out: dict[str, Any] = {}
    for name, form in kinds.items():
        for c in concurrencies:
            # Enough single-use bodies for 1,500 tokens/s; a warm-up of 50 first (excluded).
            warm = Path(tempfile.mkstemp(suffix=".txt")[1])
            warm.write_text("\n".join(urlencode(form()) for _ in range(50)) + "\n")
            wrk.run(token_url, connections=min(c, 8), seconds=1, bodies=warm, warmup=0, ca=running.ca)
            path = Path(tempfile.mkstemp(suffix=".txt")[1])
            path.write_text("\n".join(urlencode(form()) for _ in range(int(1500 * seconds))) + "\n")
            out[f"{name} c={c}"] = wrk.run(
                token_url, connections=c, seconds=seconds, bodies=path, warmup=0, ca=running.ca
            )
    return out


# --- FHIR ----------------------------------------------------------------------------------------


def fhir_requests(running: Running, who: Actors, seconds: float, workers: int) -> dict[str, Any]:
    """Read, compartment search, search with _include at c=8 and c=32, each with its floor."""
    stack = running.stack
    token_url = f"{stack.base_url('authserver')}/token"
    fhir = stack.url("fhirserver")
    # The token a CDS Service gets from the EHR (token exchange): every request is audited.
    token = _token(running, who.exchange_form(token_url, fhir))
    headers = {"Authorization": f"Bearer {token}"}
    p = who.patient
    cases = {
        "read": f"{fhir}/Patient/{p}",
        "search": f"{fhir}/Observation?patient={p}&_count=10",
        "include": f"{fhir}/Observation?patient={p}&_count=10&_include=Observation:encounter",
    }
    bodies: dict[str, bytes] = {}
    with httpx.Client(verify=client_ssl_context(running.ca), trust_env=False) as client:
        for name, url in cases.items():
            response = client.get(url, headers=headers)
            response.raise_for_status()
            bodies[name] = response.content
    out: dict[str, Any] = {}
    with floor_server(stack, bodies, workers) as floor:
        for name, url in cases.items():
            for c in (8, 32):
                measured = wrk.run(url, connections=c, seconds=seconds, headers=headers, ca=running.ca)
                base = wrk.run(f"{floor}/{name}", connections=c, seconds=seconds, ca=running.ca)
                measured["floor_req_per_s"] = base["req_per_s"]
                measured["floor_p95_ms"] = base["p95_ms"]
                measured["ratio_to_floor"] = round(measured["req_per_s"] / base["req_per_s"], 3)
                out[f"{name} c={c}"] = measured
    return out


def _synthea(fixtures: Path | None) -> tuple[list[bytes], bytes] | None:
    """(the hospital and practitioner bundles, the smallest patient bundle) of the Synthea fixtures."""
    if fixtures is None:
        return None
    files = sorted(fixtures.glob("*.json"))
    setup_files = [f.read_bytes() for f in files if "Information" in f.name]
    patients = [f for f in files if "Information" not in f.name]
    smallest = min(patients, key=lambda f: len(json.loads(f.read_bytes())["entry"]))
    return setup_files, smallest.read_bytes()


async def _drive_posts(
    running: Running, url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {**headers, "Content-Type": "application/fhir+json"}
    async with running.client(limits=limits) as client:
        (await client.post(url, content=body, headers=headers)).raise_for_status()  # warm-up
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await client.post(url, content=body, headers=headers)
                latencies.append(time.perf_counter() - start)
                errors += response.status_code >= 300

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "req_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))] * 1000, 1),
        "requests": len(latencies),
        "errors": errors,
    }


def fhir_transactions(
    running: Running, who: Actors, fixtures: Path | None, seconds: float, workers: int
) -> dict[str, Any]:
    """A Synthea patient Bundle as one transaction (POST /fhir), with a backend's system token."""
    synthea = _synthea(fixtures)
    if synthea is None:
        return {}
    setup_bundles, bundle = synthea
    stack = running.stack
    fhir = stack.url("fhirserver")
    token = _token(running, who.backend_form(f"{stack.base_url('authserver')}/token", "system/*.cruds"))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    with httpx.Client(verify=client_ssl_context(running.ca), trust_env=False, timeout=120) as client:
        for body in setup_bundles:  # the practitioners and organizations the patients' bundles name
            client.post(fhir, content=body, headers=headers).raise_for_status()
        response = client.post(fhir, content=bundle, headers=headers)
        response.raise_for_status()
    entries = len(json.loads(bundle)["entry"])
    out: dict[str, Any] = {}
    with floor_server(stack, {"transaction": response.content}, workers) as floor:
        for c in (8, 32):
            measured = asyncio.run(_drive_posts(running, fhir, bundle, headers, c, seconds))
            base = asyncio.run(_drive_posts(running, f"{floor}/transaction", bundle, {}, c, seconds))
            measured["resources_per_s"] = round(measured["req_per_s"] * entries, 1)
            measured["floor_req_per_s"] = base["req_per_s"]
            measured["ratio_to_floor"] = round(measured["req_per_s"] / base["req_per_s"], 4)
            out[f"transaction ({entries} entries) c={c}"] = measured
    return out


# --- memory -------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def peak_memory(running: Running) -> dict[str, Any]:
    """Peak RSS per service: the uvicorn process, and each worker process when there are several."""
    out: dict[str, Any] = {}
    names = {s.name for s in SERVICES}
    for process in running.processes:
        if process.name not in names:
            continue
        pids = [process.process.pid, *_children(process.process.pid)]
        peaks = [_peak_rss_mb(pid) for pid in pids]
        out[process.name] = {
            "peak_rss_mb_max": max(peaks),
            "peak_rss_mb_total": round(sum(peaks), 1),
            "processes": len(pids),
        }
    return out
