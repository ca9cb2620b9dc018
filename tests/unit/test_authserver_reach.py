"""The authorization server's reach answers (authserver/reach.py) are cached per process for no
longer than the 1 s revocation guarantee: a practitioner taken off a patient's panel loses the
patient at every replica within a second (issue 18)."""

from __future__ import annotations

from typing import cast

import httpx

from authserver.reach import FhirReach
from authserver.users import User
from common.clock import FrozenClock
from common.keys import KeyStore, SigningKey, generate_key

FHIR = "https://fhir.test/fhir"


class OneKey:
    def __init__(self) -> None:
        key = generate_key("ES384")
        self.key = SigningKey(key.thumbprint(), "ES384", key)

    async def signer(self) -> SigningKey:
        return self.key


async def test_a_patient_leaving_the_panel_is_refused_within_one_second_not_five() -> None:
    on_panel = {"value": True}
    asked: list[str] = []

    def fhir(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(200, json={"resourceType": "Bundle", "total": 1 if on_panel["value"] else 0})

    clock = FrozenClock()
    async with httpx.AsyncClient(transport=httpx.MockTransport(fhir)) as http:
        reach = FhirReach(http, cast(KeyStore, OneKey()), "https://auth.test", FHIR, clock)
        doctor = User("doc", "Practitioner/p1", "Dr Doc")
        assert await reach.can_see(doctor, "pat-1")
        on_panel["value"] = False  # taken off the panel at the FHIR server
        clock.advance(0.5)
        assert await reach.can_see(doctor, "pat-1")  # within the cache's half second
        clock.advance(0.5)
        assert not await reach.can_see(doctor, "pat-1")
    assert len(asked) == 2
