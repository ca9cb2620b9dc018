"""Bringing a data directory and database to a runnable state (`mockehr init`, the first half of `up`).

Every step is idempotent: a second run reuses the CA, certificates, secrets, keys and data.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from authserver.settings import AuthSettings
from common.db import make_engine, make_sessionmaker
from common.keys import Alg, ensure_active_key
from common.secrets_file import read_or_create_secret
from common.settings import load_settings
from common.tls import STACK_HOSTS, ensure_ca, ensure_server_certificate
from ehr.settings import EhrSettings
from mockehr import migrate, preflight
from mockehr.demo import DemoUser, demo_users, is_seeded, seed
from mockehr.registry import register_stack_clients
from mockehr.stack import REPLICA_HOST, SERVICES, SIGNING_SERVICES, Stack, compose_host


def signing_alg(service: str) -> Alg:
    """The algorithm the service's own settings ask for (MOCKEHR_<SVC>_SIGNING_ALG)."""
    settings = load_settings(AuthSettings) if service == "authserver" else load_settings(EhrSettings)
    alg: Alg = settings.signing_alg
    return alg


@dataclass(frozen=True)
class SetupReport:
    seeded_now: bool
    users: list[DemoUser]


def check(stack: Stack, *, ports: bool) -> None:
    """Pre-flight: data dir writable, DB (and Redis) reachable, ports free. One-line errors."""
    preflight.check_data_dir(stack.data_dir)
    asyncio.run(preflight.check_database(stack.db_url))
    if stack.redis_url:
        asyncio.run(preflight.check_redis(stack.redis_url))
    if ports:
        for service in SERVICES:
            preflight.check_port_free(stack.host, stack.port(service.name))
            if stack.replicas > 1:
                for port in stack.listen_ports(service.name):
                    preflight.check_port_free(REPLICA_HOST, port)


def prepare(stack: Stack, *, patients: int = 30, seed_value: int = 1, do_seed: bool = True) -> SetupReport:
    """CA and certificate, secrets, schema, signing keys, demo data."""
    ensure_ca(stack.data_dir)
    compose_hosts = (compose_host(s.name) for s in SERVICES)
    hosts = tuple(dict.fromkeys((*STACK_HOSTS, *compose_hosts, stack.public_host)))
    ensure_server_certificate(stack.data_dir, hosts)
    read_or_create_secret(stack.data_dir / "admin-token")
    # The FHIR server's paging-cursor key: made here so services can mount the data read-only.
    read_or_create_secret(stack.data_dir / "cursor-key")
    kek = stack.kek()
    migrate.upgrade(stack.db_url)
    seeded_now = asyncio.run(_keys_and_seed(stack, kek, patients, seed_value, do_seed))
    return SetupReport(seeded_now=seeded_now, users=demo_users(stack.data_dir))


async def _keys_and_seed(stack: Stack, kek: bytes, patients: int, seed_value: int, do_seed: bool) -> bool:
    engine = make_engine(stack.db_url)
    sessions = make_sessionmaker(engine)
    try:
        for name in SIGNING_SERVICES:
            await ensure_active_key(sessions, name, signing_alg(name), kek, int(time.time()))
        await register_stack_clients(sessions, stack)
        if do_seed and not await is_seeded(sessions):
            await seed(sessions, stack.data_dir, patients=patients, seed_value=seed_value)
            return True
        return False
    finally:
        await engine.dispose()
