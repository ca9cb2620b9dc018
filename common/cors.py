"""CORS for the endpoints a browser app fetches itself, limited to configured origins (pure ASGI).

A service chooses which paths take part (`methods_for`: path → the methods a browser may use
there, or None when CORS never applies to it). On those paths only:

* an `Origin` that is exactly one of the configured origins, or that `registered` (an async
  predicate, e.g. `common.app_origins.RegisteredOrigins`: the origins of registered SMART apps,
  read at request time) accepts, gets `Access-Control-Allow-Origin` set to that origin — never
  `*` — and the configured `Access-Control-Expose-Headers`; any other origin (including `null`
  or a look-alike) gets no CORS header at all;
* credentials are never allowed (`Access-Control-Allow-Credentials` is never sent): these
  endpoints take bearer tokens or form posts, not cookies;
* every response carries `Vary: Origin` (Fetch standard, "CORS protocol and HTTP caches"), so a
  shared cache never serves one origin's answer to another, nor a no-`Origin` answer to a fetch;
* a preflight (OPTIONS with `Access-Control-Request-Method`) from an allowed origin is answered
  here with 204 — before routing, authentication or anything else — with the allowed methods,
  the requested headers that are allowed, and `Access-Control-Max-Age`. A preflight from any
  other origin passes through to the app, which answers it as any other OPTIONS request.

With no configured origins and no `registered` predicate the middleware does nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_AGE = 600


def check_origins(origins: list[str]) -> list[str]:
    """Each entry must be exactly scheme://host[:port] (RFC 6454): no wildcard, path, query or userinfo."""
    for origin in origins:
        parts = urlsplit(origin)
        if (
            parts.scheme not in ("https", "http")
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
            or "@" in parts.netloc
            or origin != f"{parts.scheme}://{parts.netloc}"
        ):
            raise ValueError(f"cors_origins: {origin!r} is not an origin (scheme://host[:port])")
    return origins


# A settings field type: browser origins allowed to use CORS, validated by `check_origins`.
CorsOrigins = Annotated[list[str], AfterValidator(check_origins)]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _with_vary_origin(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    kept: list[tuple[bytes, bytes]] = []
    vary: list[str] = []
    for key, value in headers:
        if key.lower() == b"vary":
            vary.extend(v.strip() for v in value.decode("latin-1").split(",") if v.strip())
        else:
            kept.append((key, value))
    if not any(v == "*" or v.lower() == "origin" for v in vary):
        vary.append("Origin")
    kept.append((b"vary", ", ".join(vary).encode("latin-1")))
    return kept


class CorsMiddleware:
    """See the module docstring. `allow_headers` and `expose_headers` are header names (any case)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        origins: Collection[str],
        methods_for: Callable[[str], str | None],
        allow_headers: Collection[str],
        expose_headers: Collection[str] = (),
        max_age: int = MAX_AGE,
        registered: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.app = app
        self.registered = registered
        self.origins = frozenset(origins)
        if "*" in self.origins:
            raise ValueError("CORS origins must be listed; '*' is never allowed")
        self.methods_for = methods_for
        self.allow_headers = frozenset(h.strip().lower() for h in allow_headers)
        self.expose = ", ".join(expose_headers).encode("latin-1")
        self.max_age = str(max_age).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (self.origins or self.registered):
            await self.app(scope, receive, send)
            return
        methods = self.methods_for(scope["path"])
        if methods is None:
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        allowed = origin is not None and (
            origin in self.origins or (self.registered is not None and await self.registered(origin))
        )
        if allowed and scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
            await self._preflight(scope, send, origin or "", methods)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = _with_vary_origin(message.get("headers", []))
                if allowed:
                    headers.append((b"access-control-allow-origin", (origin or "").encode("latin-1")))
                    if self.expose:
                        headers.append((b"access-control-expose-headers", self.expose))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, scope: Scope, send: Send, origin: str, methods: str) -> None:
        requested = _header(scope, b"access-control-request-headers") or ""
        granted = [h for h in (r.strip().lower() for r in requested.split(",")) if h in self.allow_headers]
        headers = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", methods.encode("latin-1")),
        ]
        if granted:
            headers.append((b"access-control-allow-headers", ", ".join(granted).encode("latin-1")))
        headers += [(b"access-control-max-age", self.max_age), (b"vary", b"Origin")]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
