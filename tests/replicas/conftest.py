"""`mockehr up --replicas 2` as a team runs it: every service as two processes behind HAProxy on
loopback, on PostgreSQL and Redis (docs/replicas.md)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mockehr.balancer import REPLICA_HEADER
from mockehr.stack import REPLICA_PORT_OFFSET, SERVICES
from tests.conftest import _pg_admin, _pg_url
from tests.e2e.conftest import UpProcess, start_up
from tests.needs import missing

pytestmark = pytest.mark.e2e
REDIS_URL = os.environ.get("MOCKEHR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REPLICAS = 2


def _ports(base: int, replicas: int) -> list[int]:
    public = [base + offset for offset in range(6)]
    internal = [base + REPLICA_PORT_OFFSET + 10 * s.port_offset + i for s in SERVICES for i in range(replicas)]
    return public + internal


def free_replica_base_port(replicas: int = REPLICAS) -> int:
    """A base port whose public ports and replica ports are all free right now."""
    rng = random.Random()  # noqa: S311 - not security relevant
    for _ in range(200):
        base = rng.randrange(20000, 60000)
        try:
            for port in _ports(base, replicas):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free set of ports")


@dataclass
class ReplicaStack:
    up: UpProcess
    database_url: str

    @property
    def data_dir(self) -> Path:
        return self.up.data_dir

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = json.loads((self.data_dir / "stack.json").read_text())
        return record

    def replicas(self, service: str) -> dict[str, int]:
        """Replica name → its internal port, from stack.json."""
        return {r["name"]: r["port"] for r in self.record()["services"][service]["replicas"]}

    def url(self, offset: int, path: str = "") -> str:
        return f"https://localhost:{self.up.base_port + offset}{path}"

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.data_dir / "ca.pem"))

    def client(self, served_by: list[str] | None = None, **kwargs: Any) -> httpx.Client:
        """A client trusting only the stack's CA; `served_by` collects the replica of every answer."""

        def note(response: httpx.Response) -> None:
            if served_by is not None and REPLICA_HEADER in response.headers:
                served_by.append(response.headers[REPLICA_HEADER])

        options: dict[str, Any] = {"timeout": 30, **kwargs}
        return httpx.Client(verify=self.tls(), trust_env=False, event_hooks={"response": [note]}, **options)

    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        """HAProxy's `show stat` over its admin socket: (backend, server) → counters."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.data_dir / "haproxy.sock"))
            sock.sendall(b"show stat\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        lines = b"".join(chunks).decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {(r["pxname"], r["svname"]): r for r in rows}


def replica_database() -> str:
    name = f"mockehr_rep_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, Exception) as exc:  # noqa: BLE001 - any failure to reach PostgreSQL
        missing(f"PostgreSQL not reachable: {type(exc).__name__}")
    return name


def start_replica_stack(
    tmp_path_factory: pytest.TempPathFactory, *extra: str, env: dict[str, str] | None = None
) -> tuple[ReplicaStack, str]:
    name = replica_database()
    data_dir = tmp_path_factory.mktemp("replicas") / ".mockehr"
    up = start_up(
        data_dir,
        free_replica_base_port(),
        "--patients",
        "6",
        "--db",
        _pg_url(name),
        "--redis",
        REDIS_URL,
        "--replicas",
        str(REPLICAS),
        *extra,
        env=env,
    )
    return ReplicaStack(up, _pg_url(name)), name


@pytest.fixture(scope="module")
def replica_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaStack]:
    stack, name = start_replica_stack(
        tmp_path_factory,
        env={"MOCKEHR_AUTH_KEY_REFRESH_SECONDS": "0.2", "MOCKEHR_AUTH_KEY_PUBLISH_AHEAD_SECONDS": "2.5"},
    )
    try:
        stack.up.wait_for("Ctrl-C stops every service.", timeout=400)
        yield stack
    finally:
        stack.up.stop()
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
