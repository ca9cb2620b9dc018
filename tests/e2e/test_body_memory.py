"""A stranger's 50 MB body does not grow the authorization server: it is refused (413) after at
most max_body_bytes, before authentication, in a real uvicorn process whose memory is measured."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mockehr import migrate

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
BODY_MIB = 50
SLICE = b"x" * MIB


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length")
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split()[1]), body


def _send_big(port: int, method: str, path: str, *, chunked: bool) -> tuple[int, bytes]:
    """Send a BODY_MIB body without credentials, all of it, then read the answer."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {BODY_MIB * MIB}"
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head.encode())
        for _ in range(BODY_MIB):
            sock.sendall(b"100000\r\n" + SLICE + b"\r\n" if chunked else SLICE)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        return _response(sock)


@pytest.fixture
def authserver(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """The authorization server alone, plain HTTP on 127.0.0.1 (the boundary is TLS-agnostic)."""
    database_url = f"sqlite:///{tmp_path / 'auth.db'}"
    migrate.upgrade(database_url)
    port = _free_port()
    env = {
        **os.environ,
        "MOCKEHR_AUTH_DATA_DIR": str(tmp_path),
        "MOCKEHR_AUTH_DATABASE_URL": database_url,
        "MOCKEHR_AUTH_TLS": "false",
        "MOCKEHR_AUTH_PORT": str(port),
        "MOCKEHR_AUTH_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    command = [sys.executable, "-m", "uvicorn", "--factory", "authserver.app:create_app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--no-server-header", "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
                    if _response(sock)[0] == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the authorization server did not start"
            time.sleep(0.1)
        yield process.pid, port
    finally:
        process.terminate()
        process.wait(20)


def test_fifty_megabyte_bodies_without_credentials_are_refused_and_memory_stays_flat(
    authserver: tuple[int, int],
) -> None:
    pid, port = authserver
    routes = [("POST", "/launch"), ("PUT", "/admin/clients/x")]
    # Warm up every code path first, so the measurement sees only what the bodies cost.
    for method, path in routes:
        for chunked in (False, True):
            assert _send_big(port, method, path, chunked=chunked)[0] == 413
    before = _rss_kib(pid)

    answers = [_send_big(port, method, path, chunked=chunked) for method, path in routes for chunked in (False, True)]

    grown_mib = (_rss_kib(pid) - before) / 1024
    expected = b'{"error":"invalid_request","error_description":"the body is larger than 1048576 bytes"}'
    assert answers == [(413, expected)] * 4
    assert grown_mib < 10, f"RSS grew by {grown_mib:.1f} MiB for {4 * BODY_MIB} MiB of refused bodies"
