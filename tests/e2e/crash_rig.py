"""A rig for fault tests: the authorization server and the FHIR server as separate processes that a
test can SIGKILL and start again, and a private PostgreSQL the test owns (and may kill).

`mockehr up` stops the whole stack when one service exits, so the fault tests drive the services
through mockehr/supervisor.py directly: the same command line, TLS and settings as `up`, one
process per service (MOCKEHR_<SVC>_WORKERS unset), so a SIGKILL ends the service at once.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from authserver import clients
from authserver.clients import Client
from common.db import make_engine, make_sessionmaker
from common.jose import new_jti, sign_jwt
from common.keys import SigningKey, generate_key, public_jwk
from common.tls import client_ssl_context
from mockehr import setup, supervisor
from mockehr.stack import Stack
from tests.e2e.conftest import free_base_port
from tests.needs import missing

PG_BIN = Path("/usr/lib/postgresql/15/bin")
WRITER = "crash-writer"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class Rig:
    stack: Stack
    writer_key: SigningKey
    running: dict[str, supervisor.Running] = field(default_factory=dict)
    kills: dict[str, int] = field(default_factory=dict)

    @property
    def ca(self) -> Path:
        return self.stack.data_dir / "ca.pem"

    @property
    def fhir(self) -> str:
        return self.stack.url("fhirserver")

    def client(self) -> httpx.AsyncClient:
        # One request per connection would hide nothing here; keep-alive is what a real client does.
        return httpx.AsyncClient(verify=client_ssl_context(self.ca), trust_env=False, timeout=30.0)

    def start(self, name: str) -> None:
        """Start `name` and wait until its /readyz answers 200 (60 s at most)."""
        (process,) = supervisor.start(self.stack, [name])
        self.running[name] = process
        supervisor.wait_ready(self.stack, [process])

    def start_unready(self, name: str) -> None:
        """Start `name` without waiting for readiness (it may depend on a service that is down)."""
        (process,) = supervisor.start(self.stack, [name])
        self.running[name] = process

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown hook runs, in-flight requests and responses are cut off."""
        process = self.running.pop(name)
        process.process.send_signal(signal.SIGKILL)
        process.process.wait(10)
        process.log_file.close()
        self.kills[name] = self.kills.get(name, 0) + 1

    def stop(self) -> None:
        supervisor.stop(list(self.running.values()))
        self.running.clear()

    def _client_assertion(self) -> dict[str, str]:
        # SMART Backend Services: aud = the token endpoint, whichever endpoint it authenticates to.
        token_url = f"{self.stack.base_url('authserver')}/token"
        now = int(time.time())
        claims = {"iss": WRITER, "sub": WRITER, "aud": token_url, "iat": now, "exp": now + 60, "jti": new_jti()}
        return {"client_assertion_type": JWT_BEARER, "client_assertion": sign_jwt(claims, self.writer_key, typ="JWT")}

    def _authserver_post(self, path: str, form: dict[str, str]) -> httpx.Response:
        return httpx.post(
            f"{self.stack.base_url('authserver')}{path}",
            data={**form, **self._client_assertion()},
            verify=client_ssl_context(self.ca),
            trust_env=False,
            timeout=30,
        )

    def token(self, scope: str = "system/Patient.cruds") -> str:
        """A client_credentials token of the rig's backend client (SMART Backend Services)."""
        response = self._authserver_post("/token", {"grant_type": "client_credentials", "scope": scope})
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    def revoke(self, token: str) -> None:
        response = self._authserver_post("/revoke", {"token": token})
        assert response.status_code == 200, response.text


async def _register_writer(stack: Stack) -> SigningKey:
    key = generate_key("ES384")
    signer = SigningKey(key.thumbprint(), "ES384", key)
    jwks = {"keys": [public_jwk(key, signer.kid, "ES384")]}
    engine = make_engine(stack.db_url)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            writer = Client(
                WRITER, "backend", WRITER, "private_key_jwt", "system/Patient.cruds", False, True, jwks=jwks
            )
            await clients.register(session, writer)
    finally:
        await engine.dispose()
    return signer


@contextmanager
def rig(data_dir: Path, database_url: str | None, services: tuple[str, ...]) -> Iterator[Rig]:
    """A prepared stack (no demo data) with `services` running and a backend client for writes."""
    stack = Stack(data_dir=data_dir, base_port=free_base_port(), database_url=database_url)
    setup.check(stack, ports=True)
    setup.prepare(stack, do_seed=False)
    the_rig = Rig(stack, asyncio.run(_register_writer(stack)))
    try:
        for name in services:
            the_rig.start(name)
        yield the_rig
    finally:
        the_rig.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_postgres() -> dict[str, Any]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        missing("running as root and there is no `postgres` user to run a private PostgreSQL as")
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@contextmanager
def private_postgresql() -> Iterator[str]:
    """A PostgreSQL 15 of our own: initdb in a temporary directory, loopback only on a free port,
    no Unix socket; stopped (SIGKILL if it will not stop) and deleted at the end. Yields the URL of
    its database `mockehr`. The shared PostgreSQL on :5432 is never touched."""
    if not (PG_BIN / "initdb").exists():
        missing(f"PostgreSQL 15 server binaries not found under {PG_BIN}")
    as_postgres = _as_postgres()
    root = Path(tempfile.mkdtemp(prefix="mockehr-crash-pg-"))
    if as_postgres:
        os.chown(root, as_postgres["user"], as_postgres["group"])
    data = root / "data"
    subprocess.run(
        [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
        **as_postgres,
    )
    port = _free_port()
    log = open(root / "postgres.log", "ab")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            *(str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port)),
            *("-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "max_connections=100"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        **as_postgres,
    )
    try:
        _wait_for_postgresql(port, server)
        asyncio.run(_create_database(port))
        yield f"postgresql://postgres@127.0.0.1:{port}/mockehr"
    finally:
        server.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_postgresql(port: int, server: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"private PostgreSQL exited with {server.returncode}")
        try:
            asyncio.run(_select_one(port))
            return
        except (OSError, asyncpg.CannotConnectNowError):  # not listening yet; "starting up"
            time.sleep(0.2)
    raise AssertionError(f"private PostgreSQL not accepting connections after {timeout} s")


async def _select_one(port: int) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=5)
    await conn.close()


async def _create_database(port: int) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=5)
    try:
        await conn.execute('CREATE DATABASE "mockehr"')
    finally:
        await conn.close()
