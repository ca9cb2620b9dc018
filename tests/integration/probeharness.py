"""For the probe tests: CDS Services in uvicorn over TLS on loopback, and deliberately weak doubles.

Each double is a small CDS Service that verifies the CDS Client's JWT correctly except for the
one weakness it is built with, so the probe's verdicts on it can be asserted exactly.
Tests only: this code is the wrong way to do it on purpose.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from common.errors import TokenInvalidError
from common.http import make_http_client
from common.jwks import JwksCache
from common.tls import ensure_server_certificate

SERVICE: dict[str, Any] = {
    "hook": "patient-view",
    "id": "weak-greeting",
    "title": "Weak greeting",
    "description": "A test double.",
    "prefetch": {"patient": "Patient/{{context.patientId}}"},
}
CARD: dict[str, Any] = {
    "uuid": "7c1d2a57-2d4e-4f41-9d4e-2f3c1f0a0001",
    "summary": "Hello",
    "indicator": "info",
    "source": {"label": "double"},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_tls(app: Any, data_dir: Path, port: int | None = None) -> Iterator[str]:
    """Run `app` in uvicorn over TLS (dev CA certificate) on 127.0.0.1; yield https://localhost:{port}."""
    cert = ensure_server_certificate(data_dir)
    port = port or free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(cert.cert),
        ssl_keyfile=str(cert.key),
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the service did not start")
        time.sleep(0.02)
    try:
        yield f"https://localhost:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


@dataclass(frozen=True)
class Weakness:
    verify: bool = True  # False: no JWT verification at all
    alg_none: bool = False  # accepts alg none (any case) without a signature
    check_aud: bool = True
    track_jti: bool = True
    any_jku: bool = False  # fetches any jku and trusts the keys there
    verbose_errors: bool = False  # 401 bodies with the reason, a stack trace and the token
    lockout_after: int | None = None  # after this many refusals, refuses every request
    huge_refusals: bool = False  # 401 bodies of 1 MiB that name the reason in their first bytes
    needs_fhir: bool = False  # not a weakness: answers an authenticated call 412 (no FHIR data lent)
    feedback: bool = True  # not a weakness when False: no feedback endpoint (every POST to it is a 404)


class Refused(Exception):
    pass


@dataclass
class Double:
    """The typed state of one double: what it trusts, its weakness, and what it has seen."""

    weakness: Weakness
    issuer: str
    jwks_url: str
    base_url: str
    http: httpx.AsyncClient | None = None
    jwks: JwksCache | None = None
    seen: set[str] = field(default_factory=set)
    refusals: int = 0

    @property
    def client(self) -> httpx.AsyncClient:
        assert self.http is not None, "the double's lifespan has not started"
        return self.http

    @property
    def trusted_keys(self) -> JwksCache:
        assert self.jwks is not None, "the double's lifespan has not started"
        return self.jwks


def _part(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def _header(parts: list[str]) -> dict[str, Any]:
    if len(parts) != 3:
        raise Refused("malformed token")
    try:
        header = _part(parts[0])
    except ValueError:
        raise Refused("malformed header") from None
    if not isinstance(header, dict) or header.get("typ") != "JWT":
        raise Refused("typ is not JWT")
    return header


async def _keys(double: Double, header: dict[str, Any]) -> KeySet:
    """The keys to verify with: the trusted JWKS, or (weakly) whatever a `jku` points at."""
    if "jku" not in header:
        return await double.trusted_keys.key_set(header.get("kid"))
    if double.weakness.any_jku:
        fetched = await double.client.get(header["jku"])
        return KeySet.import_key_set(fetched.json())
    if header["jku"] != double.jwks_url:
        raise Refused("jku not trusted")
    return await double.trusted_keys.key_set(header.get("kid"))


async def _claims(double: Double, token: str) -> dict[str, Any]:
    """The token's claims once its header and signature pass (or without either, when weak)."""
    parts = token.split(".")
    header = _header(parts)
    alg = header.get("alg")
    if double.weakness.alg_none and isinstance(alg, str) and alg.lower() == "none":
        claims: dict[str, Any] = _part(parts[1])
        return claims
    if alg != "ES384":
        raise Refused("algorithm not allowed")
    if {"jwk", "x5u", "x5c"} & header.keys():
        raise Refused("key in header")
    keys = await _keys(double, header)
    try:
        key = keys.get_by_kid(header["kid"])
        return dict(jwt.decode(token, key, algorithms=["ES384"]).claims)
    except (KeyError, ValueError, JoseError):
        raise Refused("bad kid or signature") from None


def _check_claims(double: Double, claims: dict[str, Any], url: str) -> None:
    now = time.time()
    if claims.get("iss") != double.issuer:
        raise Refused("issuer not trusted")
    aud = claims.get("aud")
    if double.weakness.check_aud and aud != url and not (isinstance(aud, list) and url in aud):
        raise Refused("audience mismatch")
    exp, iat, jti = claims.get("exp"), claims.get("iat"), claims.get("jti")
    if not isinstance(exp, int) or exp < now - 30 or exp > now + 330:
        raise Refused("exp expired or too far")
    if not isinstance(iat, int) or iat > now + 30:
        raise Refused("iat in the future")
    if not isinstance(jti, str) or not jti:
        raise Refused("jti missing")
    if double.weakness.track_jti:
        if jti in double.seen:
            raise Refused("jti replayed")
        double.seen.add(jti)


async def verify(double: Double, request: Request, token: str) -> None:
    """Verify the CDS Client's JWT as CDS Hooks 2.0 §Trusting CDS Clients asks, but for the weakness."""
    claims = await _claims(double, token)
    _check_claims(double, claims, double.base_url + request.url.path)


def _refusal(weakness: Weakness, reason: str, token: str) -> Response:
    if weakness.huge_refusals:
        return Response(b"bad signature " + b"x" * (1024 * 1024), 401, media_type="text/plain")
    if weakness.verbose_errors:
        trace = 'Traceback (most recent call last):\n  File "/srv/double.py", line 99, in verify'
        return JSONResponse({"error": f"invalid_token: {reason}", "token": token, "trace": trace}, 401)
    return Response(status_code=401)


async def authenticate(request: Request) -> Response | None:
    """None when the request may go on, else the double's refusal."""
    double: Double = request.app.state.double
    weakness = double.weakness
    if not weakness.verify:
        return None
    if weakness.lockout_after is not None and double.refusals >= weakness.lockout_after:
        return Response(status_code=401)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    try:
        if scheme.lower() != "bearer" or not token:
            raise Refused("no bearer token")
        try:
            await verify(double, request, token)
        except TokenInvalidError as exc:  # the trusted JWKS is unreachable
            raise Refused(exc.reason) from None
    except Refused as exc:
        double.refusals += 1
        return _refusal(weakness, str(exc), token)
    return None


router = APIRouter()
feedback_router = APIRouter()


@router.get("/cds-services")
async def discovery(request: Request) -> Response:
    return await authenticate(request) or JSONResponse({"services": [SERVICE]})


@router.post("/cds-services/{service_id}")
async def call(service_id: str, request: Request) -> Response:
    refused = await authenticate(request)
    if refused is not None:
        return refused
    body = await request.json()
    if service_id != SERVICE["id"] or body.get("hook") != SERVICE["hook"]:
        return JSONResponse({"error": "unknown"}, 404)
    if request.app.state.double.weakness.needs_fhir:
        return JSONResponse({"error": "fhirAuthorization required"}, 412)
    return JSONResponse({"cards": [CARD]})


@feedback_router.post("/cds-services/{service_id}/feedback")
async def feedback(service_id: str, request: Request) -> Response:
    refused = await authenticate(request)
    if refused is not None:
        return refused
    body = await request.json()
    if service_id != SERVICE["id"] or not isinstance(body.get("feedback"), list):
        return JSONResponse({"error": "invalid"}, 400)
    return Response(status_code=200)


def create_double(weakness: Weakness, *, issuer: str, jwks_url: str, base_url: str, ca_file: Path) -> FastAPI:
    double = Double(weakness, issuer=issuer, jwks_url=jwks_url, base_url=base_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with make_http_client(ca_file=ca_file) as http:
            double.http, double.jwks = http, JwksCache(http, jwks_url)
            yield

    app = FastAPI(lifespan=lifespan)
    app.state.double = double
    app.include_router(router)
    if weakness.feedback:  # otherwise the framework answers every request to the path 404
        app.include_router(feedback_router)
    return app
