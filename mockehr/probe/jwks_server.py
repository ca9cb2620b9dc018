"""The probe's JWKS URLs on loopback, recording every fetch.

- The trusted JWKS, `https://localhost:{port}/.well-known/jwks.json` (issuer
  `https://localhost:{port}`): the one the service under test is told to trust, once.
- Untrusted JWK Sets for the `jku` checks, each under a path of its own
  (`/untrusted/{nonce}/jwks.json`) so a fetch is attributed to the check that baited it: on the
  trusted origin (a service that allow-lists a jku by prefix fails there), on a second HTTPS origin
  and on plain HTTP. A service that fetches any of them has let a token choose where it sends a
  request (RFC 8725 §3.10, SSRF), whether or not it then accepts the token.

The servers are uvicorn instances in the probe's own event loop; TLS uses the dev CA's server
certificate, so a service that trusts the dev CA can reach them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.errors import ConfigError
from common.tls import ensure_server_certificate
from mockehr.probe.forge import ProbeKey

JWKS_PATH = "/.well-known/jwks.json"


@dataclass(frozen=True)
class Fetch:
    path: str
    scheme: str
    at: float


@dataclass
class FetchLog:
    fetches: list[Fetch] = field(default_factory=list)

    def of(self, path: str) -> list[Fetch]:
        return [f for f in self.fetches if f.path == path]


@dataclass
class JwksEndpoints:
    """Where the probe's key sets are, once the servers listen."""

    issuer: str
    jwks_url: str
    other_https_origin: str
    http_origin: str
    log: FetchLog
    untrusted: dict[str, ProbeKey] = field(default_factory=dict)

    def bait(self, origin: str, nonce: str, key: ProbeKey) -> str:
        """A jku URL serving `key` under `origin`, fetches of which are recorded as `nonce`'s."""
        self.untrusted[nonce] = key
        return f"{origin}/untrusted/{nonce}/jwks.json"


def _app(trusted: ProbeKey, endpoints_ref: list[JwksEndpoints]) -> Starlette:
    def record(request: Request) -> None:
        endpoints_ref[0].log.fetches.append(Fetch(request.url.path, request.url.scheme, time.time()))

    async def jwks(request: Request) -> Response:
        record(request)
        return JSONResponse({"keys": [trusted.published_jwk()]}, headers={"Cache-Control": "max-age=60"})

    async def untrusted(request: Request) -> Response:
        record(request)
        key = endpoints_ref[0].untrusted.get(request.path_params["nonce"])
        if key is None:
            return Response(status_code=404)
        return JSONResponse({"keys": [key.published_jwk()]})

    async def anything_else(request: Request) -> Response:
        record(request)
        return Response(status_code=404)

    return Starlette(
        routes=[
            Route(JWKS_PATH, jwks),
            Route("/untrusted/{nonce}/jwks.json", untrusted),
            Route("/{rest:path}", anything_else),
        ]
    )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The probe's command owns Ctrl-C; these servers stop when the probe is done.
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # The service under test keeps its JWKS connection alive and never answers a TLS
        # close_notify while idle; a graceful close would wait out the 30 s SSL shutdown timeout.
        # The probe is done with every request by now: drop the connections.
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        await super().shutdown(sockets)


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on 127.0.0.1:{port} for the probe's JWKS: {exc.strerror}") from None
    sock.listen(64)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def serve_jwks(data_dir: Path, trusted: ProbeKey, port: int) -> AsyncIterator[JwksEndpoints]:
    """Serve the trusted JWKS on `port` (HTTPS) plus a second HTTPS and a plain HTTP origin."""
    cert = ensure_server_certificate(data_dir)
    ref: list[JwksEndpoints] = []
    app = _app(trusted, ref)
    sockets = [_bind(port), _bind(0), _bind(0)]
    ports = [s.getsockname()[1] for s in sockets]
    ref.append(
        JwksEndpoints(
            issuer=f"https://localhost:{ports[0]}",
            jwks_url=f"https://localhost:{ports[0]}{JWKS_PATH}",
            other_https_origin=f"https://localhost:{ports[1]}",
            http_origin=f"http://127.0.0.1:{ports[2]}",
            log=FetchLog(),
        )
    )
    servers: list[_Server] = []
    for index in range(len(sockets)):
        tls = {"ssl_certfile": str(cert.cert), "ssl_keyfile": str(cert.key)} if index < 2 else {}
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", **tls)  # type: ignore[arg-type]
        servers.append(_Server(config))
    tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in zip(servers, sockets, strict=True)]
    try:
        while not all(s.started for s in servers):
            if any(t.done() for t in tasks):
                raise ConfigError("the probe's JWKS server failed to start")
            await asyncio.sleep(0.01)
        yield ref[0]
    finally:
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for sock in sockets:
            sock.close()
