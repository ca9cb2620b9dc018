"""ehr.feedback: the body sent to `{service}/feedback`, its JWT audience, and that nothing the
service answers is read beyond its status (a hostile answer cannot flood the EHR's memory)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

import httpx

from common.clock import FrozenClock
from common.jose import unverified_claims
from common.keys import SigningKey, new_key_row
from ehr.client_jwt import ClientJwtSigner
from ehr.feedback import FeedbackSender, FeedbackTarget, accepted_entry

NOW = 1_800_000_000
SERVICE = "https://cds.example.org/cds-services/greeting"


class StaticKeys:
    def __init__(self, key: SigningKey) -> None:
        self.key = key

    async def signer(self) -> SigningKey:
        return self.key


class EndlessBody(httpx.AsyncByteStream):
    """An answer that never ends and fails the test if anyone reads it."""

    def __init__(self) -> None:
        self.read = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.read = True
        while True:
            yield b"x" * 65536


async def test_feedback_is_sent_with_its_own_audience_and_the_answer_body_is_never_read() -> None:
    _row, key = new_key_row("ehr", "ES384", os.urandom(32), NOW)
    signer = ClientJwtSigner(
        StaticKeys(key), issuer="https://ehr.test", jwks_url="https://ehr.test/jwks", clock=FrozenClock(NOW)
    )
    body = EndlessBody()
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, stream=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        sender = FeedbackSender(http, signer, ca_file=None)
        entry = accepted_entry("card-1", ["sugg-1"], FrozenClock(NOW))
        delivery = await sender.send(FeedbackTarget(SERVICE), [entry])
    assert delivery.as_json() == {"status": 200, "error": None, "delivered": True}
    assert body.read is False
    [request] = seen
    assert str(request.url) == f"{SERVICE}/feedback"
    assert unverified_claims(request.headers["authorization"].split()[1])["aud"] == f"{SERVICE}/feedback"
    assert json.loads(request.content) == {"feedback": [entry]}
