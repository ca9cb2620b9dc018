"""One stack per data dir: `mockehr up` locks it and records what runs, for every other command.

`up` holds an exclusive flock(2) on `<data dir>/up.lock` for as long as it runs; the kernel drops
the lock when the process dies, however it dies, so a crashed `up` never blocks the next one. The
services are started with close_fds (subprocess's default), so they never inherit the lock.

While it holds the lock, `up` writes `<data dir>/stack.json` (mode 0600, like the KEK beside it):
its PID, the ports, URLs and PIDs of the services, the database and Redis URLs. A clean stop
removes it. Other commands read it to reach the running stack without flags; a record whose `up`
process is gone is stale and ignored, and the next `up` takes it over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from common.errors import ConfigError
from mockehr.stack import SERVICES, Stack

LOCK_FILE = "up.lock"
RECORD_FILE = "stack.json"


class ReplicaRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str  # also the value of HAProxy's X-Mockehr-Replica header
    port: int
    pid: int


class ServiceRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    port: int
    pid: int  # the service's process, or HAProxy's when it has replicas
    replicas: list[ReplicaRecord] = []


class StackRecord(BaseModel):
    """What `<data dir>/stack.json` holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pid: int
    started_at: int
    host: str
    public_host: str
    base_port: int
    database_url: str
    redis_url: str | None
    services: dict[str, ServiceRecord]
    balancer_pid: int | None = None  # HAProxy, with --replicas

    def describe(self) -> str:
        ehr = self.services.get("ehr")
        return f"`mockehr up` pid {self.pid}, EHR {ehr.url if ehr else '?'}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def read_record(data_dir: Path) -> StackRecord | None:
    """The stack running on `data_dir`, or None when none is recorded or its `up` has died."""
    path = data_dir / RECORD_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        record = StackRecord.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        raise ConfigError(
            f"{path} is not a stack record ({where}: {first['msg']}); delete it if no `mockehr up` runs on {data_dir}"
        ) from None
    return record if _alive(record.pid) else None


class DataDirLock:
    """The exclusive hold of `mockehr up` on a data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._fd: int | None = None

    def acquire(self) -> None:
        path = self.data_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot open {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                holder = read_record(self.data_dir)
            except ConfigError:
                holder = None
            who = holder.describe() if holder else "another `mockehr up` that is still starting"
            raise ConfigError(
                f"a stack is already running on {self.data_dir} ({who}); stop it, or run a second stack with "
                "another --data-dir and --base-port"
            ) from None
        self._fd = fd

    def record(self, stack: Stack, processes: Iterable[tuple[str, str, int, int]]) -> None:
        """Write stack.json atomically (a reader never sees half a record). `processes`: (service,
        label, port, pid) of each process; with replicas, the balancer's service name is "haproxy"."""
        if self._fd is None:
            raise RuntimeError("record() before acquire()")
        listed = list(processes)
        balancer = next((pid for service, _, _, pid in listed if service == "haproxy"), None)
        by_name = {service: pid for service, label, _, pid in listed if label == service}
        replicas: dict[str, list[ReplicaRecord]] = {}
        for service, label, port, pid in listed:
            if balancer is not None and service != "haproxy":
                replicas.setdefault(service, []).append(ReplicaRecord(name=label, port=port, pid=pid))
                by_name[service] = balancer
        record = StackRecord(
            pid=os.getpid(),
            started_at=int(time.time()),
            host=stack.host,
            public_host=stack.public_host,
            base_port=stack.base_port,
            database_url=stack.db_url,
            redis_url=stack.redis_url,
            services={
                s.name: ServiceRecord(
                    url=stack.url(s.name),
                    port=stack.port(s.name),
                    pid=by_name[s.name],
                    replicas=replicas.get(s.name, []),
                )
                for s in SERVICES
                if s.name in by_name
            },
            balancer_pid=balancer,
        )
        path = self.data_dir / RECORD_FILE
        partial = path.with_name(f".{RECORD_FILE}.{os.getpid()}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(record.model_dump_json(indent=2) + "\n")
        os.replace(partial, path)

    def release(self) -> None:
        """Remove the record, then drop the lock (the lock file stays: deleting it would race)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / RECORD_FILE).unlink()
        os.close(self._fd)
        self._fd = None
