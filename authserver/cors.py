"""CORS for the endpoints a browser-based SMART app calls itself (SMART App Launch 2.2 expects
token, keys and metadata to be usable from the browser): /token, /jwks, /.well-known/* and
/smart-style.json — and nothing else. Never /authorize or /login (those are top-level
navigations, not fetches), never /introspect, /revoke, /launch or the admin API.

Only origins listed in `cors_origins` get `Access-Control-Allow-Origin` (the origin itself, never
`*`); no credentials are allowed (the token endpoint uses no cookies). An empty list sends no CORS
header at all. Preflights (OPTIONS with Access-Control-Request-Method) from an allowed origin are
answered here with 204; anything else passes through untouched.
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_ALLOWED_HEADERS = ("accept", "authorization", "content-type")
_POST_PATHS = frozenset({"/token"})
_GET_PATHS = frozenset({"/jwks", "/smart-style.json"})
_GET_PREFIXES = ("/.well-known/",)
MAX_AGE = "600"


def cors_methods(path: str) -> str | None:
    """The method a cross-origin browser may use on `path`, or None when CORS never applies."""
    if path in _POST_PATHS:
        return "POST"
    if path in _GET_PATHS or path.startswith(_GET_PREFIXES):
        return "GET"
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class CorsMiddleware:
    def __init__(self, app: ASGIApp, *, origins: Collection[str]) -> None:
        self.app = app
        self.origins = frozenset(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.origins:
            await self.app(scope, receive, send)
            return
        methods = cors_methods(scope["path"])
        origin = _header(scope, b"origin")
        if methods is None or origin is None:
            await self.app(scope, receive, send)
            return
        allowed = origin in self.origins
        if allowed and scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
            requested = _header(scope, b"access-control-request-headers") or ""
            headers = [h.strip().lower() for h in requested.split(",") if h.strip()]
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        (b"access-control-allow-origin", origin.encode("latin-1")),
                        (b"access-control-allow-methods", methods.encode()),
                        (
                            b"access-control-allow-headers",
                            ", ".join(h for h in headers if h in _ALLOWED_HEADERS).encode(),
                        ),
                        (b"access-control-max-age", MAX_AGE.encode()),
                        (b"vary", b"Origin"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"vary"]
                vary = [v.decode("latin-1") for k, v in message.get("headers", []) if k.lower() == b"vary"]
                headers.append((b"vary", ", ".join([*vary, "Origin"]).encode("latin-1")))
                if allowed:
                    headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_cors)
