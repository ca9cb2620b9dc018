"""Running the stack's services as separate uvicorn processes, and stopping them cleanly.

Each service runs as compose runs it, `uvicorn --factory <module>:create_app` (through
mockehr/serve.py, which only changes how idle connections end at a stop), with its settings in
MOCKEHR_<SVC>_* variables. Output goes to `<data_dir>/logs/<service>.log`.

`MOCKEHR_<SVC>_WORKERS=N` runs N worker processes of a service behind one port (uvicorn's
process manager): replicas share nothing but the database (and Redis), so this is safe for every
service (docs/architecture.md, "State and where it lives"), and it is how a service uses more than one core.

`mockehr up --replicas N` runs N separate processes per service on internal loopback ports
instead, with HAProxy on the public ports (mockehr/balancer.py, docs/replicas.md); their logs
are `<service>-<i>.log`. `supervise()` is what `up` does when a process exits: stop the stack,
or with `--restart on-failure` start it again (RestartPolicy).
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
from mockehr import balancer
from mockehr.stack import REPLICA_HOST, SERVICES, Stack, spec

# `up` stops within 2 s: the services' grace, then SIGKILL for whatever is left.
GRACEFUL_SHUTDOWN_SECONDS = 1
STOP_SECONDS = 2.0


@dataclass
class Running:
    """One supervised process: a service (or one replica of it), or the load balancer."""

    name: str  # the service's name, e.g. "fhirserver"
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] = field(repr=False)
    argv: list[str] = field(default_factory=list, repr=False)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    label: str = ""  # what messages call it: "fhirserver", "fhirserver-2", "haproxy"
    ready_url: str | None = None  # polled until 200 by wait_ready(); None: not polled
    port: int = 0
    restarts: list[float] = field(default_factory=list)  # monotonic times of the recent restarts
    restart_at: float | None = None  # a restart is due at this monotonic time

    def __post_init__(self) -> None:
        self.label = self.label or self.name


def workers(name: str, environ: Mapping[str, str]) -> int:
    """The worker processes asked for by MOCKEHR_<SVC>_WORKERS (default 1, at most 32)."""
    raw = environ.get(f"{spec(name).env_prefix}WORKERS", "1").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= 32:
        raise ConfigError(f"{spec(name).env_prefix}WORKERS must be a number from 1 to 32, not {raw!r}")
    return int(raw)


def _command(
    stack: Stack, name: str, processes: int = 1, *, port: int | None = None, host: str | None = None
) -> list[str]:
    data = stack.data_dir.resolve()
    extra = ["--workers", str(processes)] if processes > 1 else []
    return [
        sys.executable,
        "-m",
        "mockehr.serve",  # uvicorn's CLI; aborts idle connections on stop (see mockehr/serve.py)
        "--factory",
        spec(name).factory,
        "--host",
        host or stack.host,
        "--port",
        str(port or stack.port(name)),
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


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
    process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
        argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    return process, log_file


def start(stack: Stack, names: Iterable[str] | None = None) -> list[Running]:
    """Start each service: one process on its public port, or, with stack.replicas > 1, that many
    replicas on internal ports and HAProxy in front of them all (mockehr/balancer.py)."""
    logs = stack.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    running: list[Running] = []
    for name in names or [s.name for s in SERVICES]:
        # The stack's own values win; other MOCKEHR_<SVC>_* variables (log level, lifetimes…) pass through.
        env = dict(os.environ)
        env.update(stack.env(name))
        for index, port in enumerate(stack.listen_ports(name)):
            replicated = stack.replicas > 1
            label = balancer.replica_name(name, index) if replicated else name
            host = REPLICA_HOST if replicated else stack.host
            argv = _command(stack, name, workers(name, env), port=port, host=host) + client_certificate_args(name, env)
            own_env = {**env, f"{spec(name).env_prefix}PORT": str(port)}
            log_path = logs / f"{label}.log"
            process, log_file = _spawn(argv, own_env, log_path)
            ready = f"https://{stack.public_host}:{port}/readyz" if replicated else f"{stack.base_url(name)}/readyz"
            running.append(Running(name, process, log_path, log_file, argv, own_env, label, ready, port))
    if stack.replicas > 1:
        try:
            config = balancer.write_config(stack, dict(os.environ))
            balancer.check_config(config)
        except BaseException:
            stop(running)
            raise
        argv = balancer.command(config)
        log_path = logs / "haproxy.log"
        process, log_file = _spawn(argv, dict(os.environ), log_path)
        running.append(Running("haproxy", process, log_path, log_file, argv, dict(os.environ), "haproxy"))
    return running


def restart(r: Running) -> None:
    """Start process `r` again, as it was started (same argv, environment and log file)."""
    r.log_file.close()
    r.process, r.log_file = _spawn(r.argv, r.env, r.log_path)
    r.restart_at = None


def wait_ready(stack: Stack, running: list[Running], timeout: float = 60.0) -> None:
    """Poll every process's /readyz over TLS verified against the stack's CA; with replicas, then
    every public port too (through HAProxy, once its checks have found the replicas up)."""
    deadline = time.monotonic() + timeout
    pending = {r.label: r.ready_url for r in running if r.ready_url}
    verify = client_ssl_context(stack.data_dir / "ca.pem")
    tls = stack.data_dir / "tls"
    if (tls / "server.pem").exists():
        # A service requiring mutual TLS (cds-example, when configured) sees the stack's certificate.
        verify.load_cert_chain(str(tls / "server.pem"), str(tls / "server-key.pem"))
    with httpx.Client(verify=verify, timeout=2.0, trust_env=False) as client:
        _poll_ready(client, pending, running, deadline, timeout, stack)
        balanced = [r for r in running if r.name == "haproxy"]
        if balanced:
            names = {r.name for r in running if r.name != "haproxy"}
            public = {name: f"{stack.base_url(name)}/readyz" for name in sorted(names)}
            _poll_ready(client, public, running, deadline, timeout, stack)


def _poll_ready(
    client: httpx.Client,
    pending: dict[str, str],
    running: list[Running],
    deadline: float,
    timeout: float,
    stack: Stack,
) -> None:
    while pending:
        for r in running:
            if r.process.poll() is not None:
                raise ConfigError(
                    f"{r.label} exited with code {r.process.returncode}; see {r.log_path}:\n{tail(r.log_path)}"
                )
        for label, url in list(pending.items()):
            try:
                response = client.get(url)
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                del pending[label]
        if pending and time.monotonic() > deadline:
            names = ", ".join(sorted(pending))
            raise ConfigError(f"not ready after {timeout:.0f} s: {names} (logs in {stack.data_dir / 'logs'})")
        if pending:
            time.sleep(0.1)


@dataclass(frozen=True)
class RestartPolicy:
    """`mockehr up --restart on-failure`: a process that dies (non-zero exit or a signal) is started
    again after 0.5 s, 1 s, 2 s, 4 s, then 8 s; a 6th death within 5 minutes stops the stack, as
    does any death without the option, and a clean exit (code 0: someone stopped it) always."""

    on_failure: bool = False
    max_restarts: int = 5
    window_seconds: float = 300.0
    first_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, recent: int) -> float:
        return float(min(self.max_delay, self.first_delay * 2**recent))


class ServiceExited(Exception):
    """A supervised process ended and is not (or no longer) restarted: the stack stops."""

    def __init__(self, running: Running, code: int, *, gave_up: bool) -> None:
        self.running = running
        self.code = code
        why = " and was restarted too often to go on" if gave_up else ""
        super().__init__(f"{running.label} exited with code {code}{why}; see {running.log_path}")


def supervise(running: list[Running], policy: RestartPolicy, now: float) -> list[str]:
    """One look at every process: restart what is due, schedule the restart of what died (or raise
    ServiceExited). Returns what to tell the user."""
    said: list[str] = []
    for r in running:
        if r.restart_at is not None:
            if now >= r.restart_at:
                restart(r)
                r.restarts.append(now)
                said.append(f"restarted {r.label} (pid {r.process.pid})")
            continue
        code = r.process.poll()
        if code is None:
            continue
        r.restarts = [t for t in r.restarts if now - t < policy.window_seconds]
        if not policy.on_failure or code == 0 or len(r.restarts) >= policy.max_restarts:
            raise ServiceExited(r, code, gave_up=policy.on_failure and code != 0)
        delay = policy.delay(len(r.restarts))
        r.restart_at = now + delay
        said.append(
            f"{r.label} exited with code {code}; restarting in {delay:.1f} s "
            f"(restart {len(r.restarts) + 1} of at most {policy.max_restarts} in {policy.window_seconds:.0f} s)"
        )
    return said


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
