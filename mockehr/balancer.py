"""HAProxy in front of the replicas of `mockehr up --replicas N` (docs/replicas.md).

HAProxy (Debian package `haproxy`) holds each service's public port and balances every request
round-robin over that service's replicas on internal loopback ports (Stack.replica_port). It
terminates TLS with the stack's certificate and re-encrypts to each replica, verifying the
replica's certificate against the dev CA: balancing per request (not per TCP connection, as TLS
passthrough would), retries of idempotent requests on another replica, health checks on
`/readyz`, and a response header naming the replica that answered.

What is retried (HAProxy `retry-on`, `retries`, `option redispatch`): a request that could not
reach a replica (connection refused or reset) is re-sent to another one whatever its method,
since the replica never saw it. A GET or HEAD whose replica died before answering (empty or
broken response, response timeout) is re-sent too. Any other method (POST /token, a hook, a FHIR
create or transaction, an If-Match PUT) is never re-sent once it reached a replica: the replica
may have acted on it, so its client gets a 502/504 (or, on a kept-alive connection, the
connection closed without an answer) and decides. A replica is taken out after 3
failed checks 0.5 s apart; until then, connection failures to it are retried elsewhere. When no
replica of a service is ready, HAProxy answers a fail-closed 503 with Retry-After in the
service's protocol (unavailable_body).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from common.errors import ConfigError
from mockehr.stack import REPLICA_HOST, SERVICES, Stack, spec

REPLICA_HEADER = "X-Mockehr-Replica"
CONFIG_FILE = "haproxy.cfg"
STATS_SOCKET = "haproxy.sock"
# Debian installs haproxy in /usr/sbin, which a user's PATH may lack.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


def haproxy_binary() -> str:
    found = shutil.which("haproxy", path=_SEARCH_PATH)
    if not found:
        raise ConfigError("--replicas needs HAProxy, which is not installed (Debian: apt-get install haproxy)")
    return found


def replica_name(name: str, index: int) -> str:
    """A replica's name: in its log file's name and in the X-Mockehr-Replica header."""
    return f"{name}-{index + 1}"


def _client_cert_required(name: str, environ: dict[str, str]) -> bool:
    raw = environ.get(f"{spec(name).env_prefix}CLIENT_CERT_REQUIRED", "").strip().lower()
    return name == "cds-example" and raw in ("1", "true", "yes", "on")


def unavailable_body(name: str) -> tuple[str, bytes]:
    """What HAProxy answers when no replica of `name` is ready (all down or failing /readyz): a
    fail-closed 503 in the service's own protocol, with Retry-After, never HAProxy's HTML page."""
    detail = f"no replica of the {name} is ready; retry"
    if name == "fhirserver":
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "transient", "diagnostics": detail}],
        }
        return "application/fhir+json", json.dumps(outcome).encode()
    # RFC 6749 §4.1.2.1's code for a server that cannot answer now; the other services' JSON errors alike.
    return "application/json", json.dumps({"error": "temporarily_unavailable", "error_description": detail}).encode()


def _errorfile(name: str) -> bytes:
    content_type, body = unavailable_body(name)
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def config(stack: Stack, environ: dict[str, str]) -> str:
    """The HAProxy configuration for `stack` (every path absolute, every listener on loopback or --host)."""
    data = stack.data_dir.resolve()
    ca = data / "ca.pem"
    crt = data / "tls" / "haproxy.pem"
    lines = [
        "# Written by `mockehr up --replicas`; rewritten at every start (docs/replicas.md).",
        "global",
        "    maxconn 4096",
        f"    stats socket {data / STATS_SOCKET} mode 600 level admin",
        "    ssl-default-bind-options ssl-min-ver TLSv1.2",
        "    ssl-default-server-options ssl-min-ver TLSv1.2",
        "",
        "defaults",
        "    mode http",
        "    balance roundrobin",
        "    timeout connect 2s",
        "    timeout client 120s",
        # Hooks wait on CDS Services (5 s each, several in parallel), searches may be long.
        "    timeout server 60s",
        "    timeout http-request 10s",
        "    timeout queue 10s",
        # A check waits up to 5 s: on an overloaded machine a busy replica's TLS handshake alone can
        # take seconds, and taking it out would only send its share to the others. A dead replica
        # refuses the connection at once, whatever this timeout.
        "    timeout check 5s",
        # The retry window: up to 2 more attempts, each on another replica (redispatch).
        "    retries 2",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response junk-response response-timeout",
        "    option httpchk",
        "    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost",
        "    http-check expect status 200",
        f"    default-server ssl verify required ca-file {ca} verifyhost localhost sni str(localhost)"
        " check inter 500ms fall 3 rise 1",
        "",
    ]
    for service in SERVICES:
        name = service.name
        mtls = _client_cert_required(name, environ)
        client_ca = environ.get(f"{service.env_prefix}CLIENT_CA_FILE") or str(ca)
        verify_clients = f" ca-file {client_ca} verify required" if mtls else ""
        lines += [
            f"frontend {name}",
            f"    bind {stack.host}:{stack.port(name)} ssl crt {crt}{verify_clients}",
            f"    default_backend {name}",
            "",
            f"backend {name}",
            # Only GET and HEAD are re-sent after they reached a replica (see the module's docstring).
            "    http-request disable-l7-retry unless METH_GET",
            f"    errorfile 503 {data / 'haproxy-errors' / f'{name}-503.http'}",
            f"    http-response set-header {REPLICA_HEADER} %s",
        ]
        # A replica requiring mutual TLS sees the stack's certificate, as the EHR presents it.
        client_cert = f" crt {crt}" if mtls else ""
        for index, port in enumerate(stack.listen_ports(name)):
            lines.append(f"    server {replica_name(name, index)} {REPLICA_HOST}:{port}{client_cert}")
        lines.append("")
    return "\n".join(lines)


def write_config(stack: Stack, environ: dict[str, str]) -> Path:
    """The combined certificate HAProxy loads and its configuration, both mode 0600."""
    data = stack.data_dir.resolve()
    tls = data / "tls"
    combined = (tls / "server.pem").read_bytes() + (tls / "server-key.pem").read_bytes()
    _write_private(tls / "haproxy.pem", combined)
    errors = data / "haproxy-errors"
    errors.mkdir(exist_ok=True)
    for service in SERVICES:
        _write_private(errors / f"{service.name}-503.http", _errorfile(service.name))
    path = data / CONFIG_FILE
    _write_private(path, config(stack, environ).encode())
    return path


def _write_private(path: Path, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)


def command(path: Path) -> list[str]:
    """HAProxy in the foreground (-db), so `up` supervises it like any service."""
    return [haproxy_binary(), "-db", "-f", str(path)]


def check_config(path: Path) -> None:
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [haproxy_binary(), "-c", "-q", "-f", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ConfigError(f"HAProxy refused {path}: {detail[0] if detail else 'no detail'}")
