"""Benchmarks against a running stack: FHIR authorized read and compartment search (wrk from a
separate process), token issuance (client_credentials and token exchange, async driver).

The stack is started by the supervisor (separate uvicorn processes over TLS) on PostgreSQL or
SQLite; warm-up requests are excluded; every run is bounded in time.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from authserver import clients
from authserver.clients import Client
from common.db import make_engine, make_sessionmaker
from common.jose import new_jti, sign_jwt
from common.keys import KeyStore, SigningKey, generate_key, public_jwk
from common.tls import client_ssl_context
from mockehr import setup, supervisor
from mockehr.stack import Stack

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@contextmanager
def running_stack(db_url: str | None, patients: int) -> Iterator[Stack]:
    data_dir = Path(tempfile.mkdtemp(prefix="mockehr-bench-"))
    stack = Stack(data_dir=data_dir, base_port=33000 + (uuid.uuid4().int % 500) * 4, database_url=db_url)
    setup.check(stack, ports=True)
    setup.prepare(stack, patients=patients)
    running = supervisor.start(stack)
    try:
        supervisor.wait_ready(stack, running)
        yield stack
    finally:
        supervisor.stop(running)


async def _register_backend(stack: Stack) -> SigningKey:
    key = generate_key("ES384")
    signer = SigningKey(key.thumbprint(), "ES384", key)
    engine = make_engine(stack.db_url)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            await clients.register(
                session,
                Client(
                    "bench-backend",
                    "backend",
                    "bench",
                    "private_key_jwt",
                    "system/*.rs",
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
    return sign_jwt(
        {"iss": client_id, "sub": client_id, "aud": token_url, "iat": now, "exp": now + 60, "jti": new_jti()},
        signer,
        typ="JWT",
    )


def _exchange_form(stack: Stack, ehr: SigningKey, user: str, patient: str) -> dict[str, str]:
    token_url = f"{stack.base_url('authserver')}/token"
    now = int(time.time())
    user_assertion = sign_jwt(
        {"iss": "ehr", "sub": user, "aud": token_url, "iat": now, "exp": now + 30, "jti": new_jti()},
        ehr,
        typ="user+jwt",
    )
    return {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": _assertion("ehr", ehr, token_url),
        "subject_token": user_assertion,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "cds_service": "cds-example",
        "patient": patient,
        "resource": stack.url("fhirserver"),
        "scope": "patient/Patient.rs patient/Observation.rs",
    }


async def _issuance(stack: Stack, forms: Any, concurrency: int, seconds: float) -> dict[str, float]:
    """Tokens per second with `concurrency` clients; each request carries fresh assertions."""
    url = f"{stack.base_url('authserver')}/token"
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        verify=client_ssl_context(stack.data_dir / "ca.pem"), limits=limits, trust_env=False
    ) as client:
        for _ in range(20):  # warm-up, excluded
            (await client.post(url, data=forms())).raise_for_status()
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal failures
            while time.perf_counter() < deadline:
                form = forms()
                start = time.perf_counter()
                response = await client.post(url, data=form)
                if response.status_code != 200:
                    failures += 1
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "tokens_per_s": (len(latencies) - failures) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p95_ms": latencies[int(len(latencies) * 0.95)] * 1000,
        "failures": failures,
    }


def _wrk(url: str, token: str, connections: int, seconds: int, ca: Path) -> dict[str, float]:
    """wrk (Debian) from a separate process; it does not verify TLS, which costs it nothing here."""
    if shutil.which("wrk") is None:
        return {}
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", f"Authorization: Bearer {token}", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def ms(m: re.Match[str] | None) -> float:
        if m is None:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return {
        "req_per_s": rps,
        "p50_ms": ms(p50),
        "p99_ms": ms(p99),
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
    }


def run(db_url: str | None, seconds: int, patients: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with running_stack(db_url, patients) as stack:
        backend = asyncio.run(_register_backend(stack))
        ehr = asyncio.run(_ehr_signer(stack))
        users = json.loads((stack.data_dir / "demo-users.json").read_text())
        user = next(iter(users.values()))
        patient = user["patients"][0]
        token_url = f"{stack.base_url('authserver')}/token"
        ca = stack.data_dir / "ca.pem"

        def backend_form() -> dict[str, str]:
            return {
                "grant_type": "client_credentials",
                "scope": "system/*.rs",
                "client_assertion_type": JWT_BEARER,
                "client_assertion": _assertion("bench-backend", backend, token_url),
            }

        results["client_credentials c=8"] = asyncio.run(_issuance(stack, backend_form, 8, seconds))
        results["token_exchange c=8"] = asyncio.run(
            _issuance(stack, lambda: _exchange_form(stack, ehr, user["fhirUser"], patient), 8, seconds)
        )
        exchanged = httpx.post(
            token_url, data=_exchange_form(stack, ehr, user["fhirUser"], patient), verify=client_ssl_context(ca)
        ).json()
        token = exchanged["access_token"]
        fhir = stack.url("fhirserver")
        for connections in (8, 32):
            results[f"fhir read c={connections}"] = _wrk(f"{fhir}/Patient/{patient}", token, connections, seconds, ca)
            results[f"fhir compartment search _count=10 c={connections}"] = _wrk(
                f"{fhir}/Observation?patient={patient}&_count=10", token, connections, seconds, ca
            )
    return results
