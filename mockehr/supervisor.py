"""Running the stack's services as separate uvicorn processes, and stopping them cleanly.

Each service runs as compose runs it, `uvicorn --factory <module>:create_app` (through
mockehr/serve.py, which only changes how idle connections end at a stop), with its settings in
MOCKEHR_<SVC>_* variables. Output goes to `<data_dir>/logs/<service>.log`.

`MOCKEHR_<SVC>_WORKERS=N` runs N worker processes of a service behind one port (uvicorn's
process manager): replicas share nothing but the database (and Redis), so this is safe for every
service (DESIGN.md, Replicas), and it is how a service uses more than one core.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from common.errors import ConfigError
from common.tls import client_ssl_context
from mockehr.stack import SERVICES, Stack, spec

# `up` stops within 2 s: the services' grace, then SIGKILL for whatever is left.
GRACEFUL_SHUTDOWN_SECONDS = 1
STOP_SECONDS = 2.0


@dataclass
class Running:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] = field(repr=False)


def workers(name: str, environ: Mapping[str, str]) -> int:
    """The worker processes asked for by MOCKEHR_<SVC>_WORKERS (default 1, at most 32)."""
    raw = environ.get(f"{spec(name).env_prefix}WORKERS", "1").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= 32:
        raise ConfigError(f"{spec(name).env_prefix}WORKERS must be a number from 1 to 32, not {raw!r}")
    return int(raw)


def _command(stack: Stack, name: str, processes: int = 1) -> list[str]:
    data = stack.data_dir.resolve()
    extra = ["--workers", str(processes)] if processes > 1 else []
    return [
        sys.executable,
        "-m",
        "mockehr.serve",  # uvicorn's CLI; aborts idle connections on stop (see mockehr/serve.py)
        "--factory",
        spec(name).factory,
        "--host",
        stack.host,
        "--port",
        str(stack.port(name)),
        "--ssl-certfile",
        str(data / "tls" / "server.pem"),
        "--ssl-keyfile",
        str(data / "tls" / "server-key.pem"),
        "--no-server-header",
        # The login rate limit counts per client IP: never let a local client claim another one.
        "--no-proxy-headers",
        # In-flight requests get this long to finish once a stop is asked for; with idle
        # connections aborted (mockehr/serve.py) a normal stop takes well under it.
        "--timeout-graceful-shutdown",
        str(GRACEFUL_SHUTDOWN_SECONDS),
        *extra,
    ]


def client_certificate_args(name: str, environ: Mapping[str, str]) -> list[str]:
    """Mutual TLS for the example CDS Service (MOCKEHR_CDS_CLIENT_CERT_REQUIRED=true): uvicorn then
    demands a client certificate issued by MOCKEHR_CDS_CLIENT_CA_FILE (default: the stack's CA).
    The app cannot see the peer certificate, so this is enforced in the handshake."""
    prefix = spec(name).env_prefix
    required = environ.get(f"{prefix}CLIENT_CERT_REQUIRED", "").strip().lower() in ("1", "true", "yes", "on")
    if name != "cds-example" or not required:
        return []
    ca = environ.get(f"{prefix}CLIENT_CA_FILE") or environ[f"{prefix}CA_FILE"]
    return ["--ssl-ca-certs", ca, "--ssl-cert-reqs", str(int(ssl.CERT_REQUIRED))]


def start(stack: Stack, names: Iterable[str] | None = None) -> list[Running]:
    logs = stack.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    running: list[Running] = []
    for name in names or [s.name for s in SERVICES]:
        # The stack's own values win; other MOCKEHR_<SVC>_* variables (log level, lifetimes…) pass through.
        env = dict(os.environ)
        env.update(stack.env(name))
        log_path = logs / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            _command(stack, name, workers(name, env)) + client_certificate_args(name, env),
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        running.append(Running(name, process, log_path, log_file))
    return running


def wait_ready(stack: Stack, running: list[Running], timeout: float = 60.0) -> None:
    """Poll every service's /readyz over TLS verified against the stack's CA."""
    deadline = time.monotonic() + timeout
    pending = {r.name: r for r in running}
    verify = client_ssl_context(stack.data_dir / "ca.pem")
    tls = stack.data_dir / "tls"
    if (tls / "server.pem").exists():
        # A service requiring mutual TLS (cds-example, when configured) sees the stack's certificate.
        verify.load_cert_chain(str(tls / "server.pem"), str(tls / "server-key.pem"))
    with httpx.Client(verify=verify, timeout=2.0, trust_env=False) as client:
        while pending:
            for name, r in list(pending.items()):
                if r.process.poll() is not None:
                    raise ConfigError(
                        f"{name} exited with code {r.process.returncode}; see {r.log_path}:\n{tail(r.log_path)}"
                    )
                try:
                    response = client.get(f"{stack.base_url(name)}/readyz")
                except httpx.HTTPError:
                    continue
                if response.status_code == 200:
                    del pending[name]
            if pending and time.monotonic() > deadline:
                names = ", ".join(sorted(pending))
                raise ConfigError(f"not ready after {timeout:.0f} s: {names} (logs in {stack.data_dir / 'logs'})")
            if pending:
                time.sleep(0.1)


def stop(running: list[Running], timeout: float = STOP_SECONDS) -> None:
    for r in running:
        if r.process.poll() is None:
            r.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for r in running:
        try:
            r.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            r.process.kill()
            r.process.wait()
        r.log_file.close()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
