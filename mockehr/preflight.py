"""Checks run before anything starts, each failing with a one-line ConfigError."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from common.db import make_engine, parse_database_url, ping, redact_url
from common.errors import ConfigError


def check_data_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"data directory {path} is not writable: {exc.strerror or exc}") from None
    if path.stat().st_mode & 0o002:
        raise ConfigError(f"data directory {path} is world-writable; fix with: chmod o-w {path}")
    os.chmod(path, 0o700)


def require_data_dir(path: Path) -> None:
    """Commands other than `up` and `init` use a data dir those made; they never create one."""
    first = "run `mockehr init` or `mockehr up` first, or pass --data-dir (env MOCKEHR_DATA_DIR)"
    if not path.exists():
        raise ConfigError(f"no data directory at {path}: {first}")
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory")
    # The dev CA is the first thing `init` and `up` make in a data dir.
    if not (path / "ca.pem").is_file():
        raise ConfigError(f"{path} is not an initialised data directory (no ca.pem): {first}")


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is in use (choose another with --base-port)") from None
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


async def check_database(url: str, limit: float = 5.0) -> None:
    parse_database_url(url)
    engine = make_engine(url)
    try:
        await asyncio.wait_for(ping(engine), limit)
    except (OperationalError, DBAPIError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "orig", None) or exc
        detail = str(reason).splitlines()[0] if str(reason) else "timeout"
        raise ConfigError(
            f"cannot connect to the database {redact_url(url)}: {type(reason).__name__}: {detail}"
        ) from None
    finally:
        await engine.dispose()


async def check_redis(url: str, limit: float = 3.0) -> None:
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(url, socket_connect_timeout=limit)
    try:
        await asyncio.wait_for(client.ping(), limit)
    except (RedisError, OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"cannot reach Redis at {redact_url(url)}: {type(exc).__name__}") from None
    finally:
        await client.aclose()


async def check_schema(engine: AsyncEngine, url: str, limit: float = 5.0) -> None:
    """The database answers and carries mockehr's schema (alembic's version table): commands that
    read or write rows say so in one line instead of failing on a missing table mid-way."""
    try:
        async with asyncio.timeout(limit), engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "orig", None) or exc
        if "alembic_version" in str(reason):
            version = None
        else:
            detail = str(reason).splitlines()[0] if str(reason) else "timeout"
            raise ConfigError(f"cannot use the database {redact_url(url)}: {type(reason).__name__}: {detail}") from None
    if version is None:
        raise ConfigError(
            f"the database {redact_url(url)} has no mockehr schema: run `mockehr init` (or `mockehr db upgrade`)"
        )
