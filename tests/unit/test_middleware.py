"""BodyLimitMiddleware: bodies bounded before the app (and so any authentication) runs."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Message, Receive, Scope, Send

from common.errors import BodyRefusedError
from common.middleware import BodyLimitMiddleware

LIMIT = 4096
CHUNK = 1024


class App:
    """Records what reached it: the body it read, if it was called at all."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        await PlainTextResponse("ok")(scope, receive, send)


class Client:
    """Feeds a body in chunks (forever, if asked) and counts what the middleware pulled."""

    def __init__(self, chunks: int | None, content: bytes = b"x" * CHUNK) -> None:
        self.chunks = chunks
        self.content = content
        self.pulled = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        self.pulled += 1
        more = self.chunks is None or self.pulled < self.chunks
        return {"type": "http.request", "body": self.content, "more_body": more}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


async def _refuse(_request: Request, error: BodyRefusedError) -> Response:
    return PlainTextResponse(f"refused: {error.message}", status_code=error.status)


async def _call(headers: dict[str, str], client: Client, method: str = "POST") -> App:
    app = App()
    middleware = BodyLimitMiddleware(app, max_bytes=LIMIT, max_json_depth=8, refuse=_refuse)
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": "/anything",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "query_string": b"",
    }
    await middleware(scope, client.receive, client.send)
    return app


async def test_a_declared_oversized_body_is_refused_without_reading_a_byte() -> None:
    client = Client(chunks=None)
    app = await _call({"Content-Length": str(50 * 1024 * 1024)}, client)

    assert client.status == 413
    assert client.body == f"refused: the body is larger than {LIMIT} bytes".encode()
    assert client.pulled == 0
    assert app.bodies == []


async def test_a_chunked_body_is_cut_off_as_soon_as_it_passes_the_limit() -> None:
    client = Client(chunks=None)  # never ends
    app = await _call({"Transfer-Encoding": "chunked"}, client)

    assert client.status == 413
    assert client.pulled == LIMIT // CHUNK + 1
    assert app.bodies == []


async def test_a_body_larger_than_its_declared_length_is_cut_off_at_the_limit_too() -> None:
    client = Client(chunks=None)
    app = await _call({"Content-Length": "10"}, client)

    assert client.status == 413
    assert client.pulled == LIMIT // CHUNK + 1
    assert app.bodies == []


async def test_a_body_within_the_limit_reaches_the_app_whole() -> None:
    client = Client(chunks=LIMIT // CHUNK)
    app = await _call({"Transfer-Encoding": "chunked", "Content-Type": "application/json"}, client)

    assert client.status == 200
    assert app.bodies == [b"x" * LIMIT]


async def test_a_deeply_nested_body_is_refused_before_the_app_whatever_its_content_type() -> None:
    for headers in ({"Content-Type": "application/json"}, {"Content-Type": "text/plain"}, {}):
        client = Client(chunks=1, content=b"[" * 9 + b"]" * 9)
        app = await _call({"Content-Length": "18", **headers}, client)

        assert client.status == 400, headers
        assert client.body == b"refused: the JSON body nests deeper than 8 levels"
        assert app.bodies == []


async def test_a_form_is_not_measured_as_json() -> None:
    client = Client(chunks=1, content=b"a=" + b"[" * 20)
    app = await _call({"Content-Length": "22", "Content-Type": "application/x-www-form-urlencoded"}, client)

    assert client.status == 200
    assert app.bodies == [b"a=" + b"[" * 20]


async def test_a_request_without_a_body_passes_untouched() -> None:
    client = Client(chunks=1, content=b"")
    app = await _call({}, client, method="GET")

    assert client.status == 200
    assert app.bodies == [b""]
