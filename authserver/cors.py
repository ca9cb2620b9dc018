"""CORS for the endpoints a browser-based SMART app calls itself (SMART App Launch 2.2 expects
token, keys and metadata to be usable from the browser): /token, /jwks, /.well-known/* and
/smart-style.json — and nothing else. Never /authorize or /login (those are top-level
navigations, not fetches), never /introspect, /revoke, /launch or the admin API.

Only the origins of registered, active SMART apps (`common.app_origins`, read at request time)
and those listed in `cors_origins` get `Access-Control-Allow-Origin` (the origin itself, never
`*`); no credentials are allowed (the token endpoint uses no cookies); any other origin gets no
CORS header at all. Preflights (OPTIONS with Access-Control-Request-Method) from an allowed origin are
answered with 204; anything else passes through. The mechanics are `common.cors.CorsMiddleware`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from starlette.types import ASGIApp

from common import cors

_ALLOWED_HEADERS = ("accept", "authorization", "content-type")
_POST_PATHS = frozenset({"/token"})
_GET_PATHS = frozenset({"/jwks", "/smart-style.json"})
_GET_PREFIXES = ("/.well-known/",)


def cors_methods(path: str) -> str | None:
    """The method a cross-origin browser may use on `path`, or None when CORS never applies."""
    if path in _POST_PATHS:
        return "POST"
    if path in _GET_PATHS or path.startswith(_GET_PREFIXES):
        return "GET"
    return None


class CorsMiddleware(cors.CorsMiddleware):
    def __init__(
        self,
        app: ASGIApp,
        *,
        origins: Collection[str],
        registered: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        super().__init__(
            app, origins=origins, methods_for=cors_methods, allow_headers=_ALLOWED_HEADERS, registered=registered
        )


__all__ = ["CorsMiddleware", "cors_methods"]
