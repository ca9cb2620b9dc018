"""The HTTP boundary of every service (pure ASGI, no per-request task overhead): security
headers on every response, and request bodies bounded before anything reads them."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.bodies import nesting_exceeds
from common.errors import BodyRefusedError, BodyTooLargeError, JsonTooDeepError

_BASE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
)
_HSTS = (b"strict-transport-security", b"max-age=31536000")


class SecurityHeadersMiddleware:
    """Adds nosniff, no-referrer, frame denial, a locked-down CSP for API responses, and HSTS on TLS.

    A route that renders HTML sets its own Content-Security-Policy; this one is only a default.
    """

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = _BASE_HEADERS + ((_HSTS,) if self.hsts else ())
                headers.extend(h for h in extra if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


Refuse = Callable[[Request, BodyRefusedError], Awaitable[Response]]
# Form bodies are parsed by python-multipart, which does not recurse; everything else may end
# up in a JSON parser (FastAPI parses a body without Content-Type as JSON).
_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


class BodyLimitMiddleware:
    """Caps every request body before a route, a dependency or an authentication check runs.

    - a Content-Length over `max_bytes` is refused at once, without reading a byte;
    - otherwise the body is read here, counted as it arrives, and refused as soon as it passes
      `max_bytes` (chunked bodies included): at most `max_bytes` is ever held;
    - a body that is not a form is refused if it nests deeper than `max_json_depth`;
    - what passes is handed on whole, so the app reads it as if from the socket.

    `refuse` renders the refusal in the service's protocol shape.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, max_json_depth: int, refuse: Refuse) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_depth = max_json_depth
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is None and "transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body (RFC 9112 §6.3)
            return
        too_large = BodyTooLargeError(f"the body is larger than {self.max_bytes} bytes")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send, too_large)
            return
        received = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            received += message.get("body", b"")
            if len(received) > self.max_bytes:
                await self._refuse(scope, receive, send, too_large)
                return
            if not message.get("more_body", False):
                break
        body = bytes(received)
        media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type not in _FORMS and nesting_exceeds(body, self.max_json_depth):
            refusal = JsonTooDeepError(f"the JSON body nests deeper than {self.max_json_depth} levels")
            await self._refuse(scope, receive, send, refusal)
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # after the body: only http.disconnect can come
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, error: BodyRefusedError) -> None:
        response = await self.refuse(Request(scope, receive), error)
        await response(scope, receive, send)


def limit_bodies(app: FastAPI, *, max_bytes: int, max_json_depth: int) -> None:
    """Install BodyLimitMiddleware on `app` (outside the routes, inside whatever is added later).

    Its refusals go through the app's exception handler for BodyRefusedError, so one handler per
    protocol shapes them whether the middleware or a route's `parse_json` raised them; until the
    service registers its own, they are plain text.
    """

    async def plain(_request: Request, exc: Exception) -> Response:
        status = exc.status if isinstance(exc, BodyRefusedError) else 400
        return PlainTextResponse(str(exc), status_code=status)

    async def refuse(request: Request, error: BodyRefusedError) -> Response:
        handler = next(
            (app.exception_handlers[cls] for cls in type(error).__mro__ if cls in app.exception_handlers), plain
        )
        response = handler(request, error)
        return await response if inspect.isawaitable(response) else response

    app.add_exception_handler(BodyRefusedError, plain)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_bytes, max_json_depth=max_json_depth, refuse=refuse)
