"""The example CDS Service trusts only its CDS Clients' correctly signed, fresh, single-use JWTs.

Each attack gets a bare 401 (no body, no card) on every endpoint; the correctly signed request is
the positive control that shows the failures are not an accident. The trusted clients are an EHR
and a probe, each with its own key and JWKS URL, served by a recording transport, so the tests
also see every key fetch the service makes (and the ones it must never make).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.clock import FrozenClock
from common.jose import new_jti, sign_jwt
from common.keys import SigningKey, generate_key, public_jwk
from ehr.app import create_app as create_ehr
from ehr.settings import EhrSettings
from examples.cds_service.app import create_app as create_cds
from examples.cds_service.settings import CdsSettings, TrustedClient
from tests.integration.apps import serving

EHR = "https://ehr.test"
PROBE = "https://probe.test"
CDS = "https://cds.test"
JWKS_URL = f"{EHR}/.well-known/jwks.json"
PROBE_JWKS_URL = f"{PROBE}/.well-known/jwks.json"
ATTACKER_JWKS_URL = "https://attacker.example/jwks.json"
DISCOVERY = f"{CDS}/cds-services"
SERVICE = f"{CDS}/cds-services/patient-greeting"
FEEDBACK = f"{SERVICE}/feedback"
PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [{"given": ["Ada"], "family": "Lovelace"}],
    "birthDate": "1990-12-10",
}
HOOK_BODY = {
    "hook": "patient-view",
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "context": {"userId": "Practitioner/1", "patientId": "p1"},
    "prefetch": {"patient": PATIENT},
}
FEEDBACK_BODY = {"feedback": [{"card": "x", "outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_jwt(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{_b64(signature)}"


def _key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES384", generate_key("ES384"))


def _jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [public_jwk(k.key, k.kid, k.alg) for k in keys]}


class Harness:
    def __init__(self, client: httpx.AsyncClient, clock: FrozenClock, fetches: list[str]) -> None:
        self.client, self.clock, self.fetches = client, clock, fetches
        self.key = _key("ehr-1")
        self.probe_key = _key("probe-1")
        self.jwks = _jwks(self.key)

    def claims(self, aud: str | list[str] = SERVICE, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock())
        claims: dict[str, Any] = {"iss": EHR, "aud": aud, "iat": now, "exp": now + 300, "jti": new_jti()}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, key: SigningKey | None = None, header: dict[str, Any] | None = None, **claims: Any) -> str:
        return sign_jwt(self.claims(**claims), key or self.key, typ="JWT", extra_header=header)

    async def call(
        self, token: str | None, *, scheme: str = "Bearer", url: str = SERVICE, body: Any = None
    ) -> httpx.Response:
        headers = {} if token is None else {"Authorization": f"{scheme} {token}"}
        path = url.removeprefix(CDS)
        if url == DISCOVERY:
            return await self.client.get(path, headers=headers)
        default = FEEDBACK_BODY if url == FEEDBACK else HOOK_BODY
        return await self.client.post(path, json=body if body is not None else default, headers=headers)


def recording_transport(routes: dict[str, Callable[[], dict[str, Any]]], fetches: list[str]) -> httpx.MockTransport:
    """Serves each JWKS URL in `routes` (anything else: an attacker's JWKS) and records every request."""
    attacker = _jwks(_key("attacker"))

    def handle(request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        fetches.append(url)
        return httpx.Response(200, json=routes[url]() if url in routes else attacker)

    return httpx.MockTransport(handle)


def cds_settings(tmp_path: Path, **overrides: Any) -> CdsSettings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "public_url": CDS,
        "ehr_issuer": EHR,
        "ehr_jwks_url": JWKS_URL,
        "trusted_clients": [TrustedClient(issuer=PROBE, jwks_url=PROBE_JWKS_URL)],
    }
    values.update(overrides)
    return CdsSettings(**values)


@pytest.fixture
async def cds(tmp_path: Path) -> AsyncIterator[Harness]:
    clock = FrozenClock(time.time())
    fetches: list[str] = []
    holder: dict[str, Harness] = {}
    routes = {JWKS_URL: lambda: holder["h"].jwks, PROBE_JWKS_URL: lambda: _jwks(holder["h"].probe_key)}
    async with httpx.AsyncClient(transport=recording_transport(routes, fetches)) as outbound:
        app = create_cds(cds_settings(tmp_path), clock=clock, http_client=outbound)
        async with serving(app, CDS) as client:
            holder["h"] = Harness(client, clock, fetches)
            yield holder["h"]


def _assert_bare_401(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.content == b""
    assert response.headers["www-authenticate"] == "Bearer"
    assert "content-type" not in response.headers


async def test_a_correctly_signed_request_gets_a_card_from_prefetch(cds: Harness) -> None:
    response = await cds.call(cds.token())
    assert response.status_code == 200
    card = response.json()["cards"][0]
    assert card["summary"].startswith("Now seeing: Ada Lovelace, ")
    assert card["indicator"] == "info" and card["source"]["label"]


async def test_the_ehrs_real_jwks_verifies_its_real_signing_key(tmp_path: Path, database_url: str) -> None:
    clock = FrozenClock(time.time())
    ehr_app = create_ehr(EhrSettings(data_dir=tmp_path, database_url=database_url, public_url=EHR), clock=clock)
    async with serving(ehr_app, EHR):
        transport = httpx.ASGITransport(app=ehr_app)
        async with httpx.AsyncClient(transport=transport) as to_ehr:
            app = create_cds(cds_settings(tmp_path, trusted_clients=[]), clock=clock, http_client=to_ehr)
            async with serving(app, CDS) as client:
                assert (await client.get("/readyz")).status_code == 200
                key = await ehr_app.state.runtime.keys.signer()
                now = int(clock())
                claims = {"iss": EHR, "aud": SERVICE, "iat": now, "exp": now + 300, "jti": new_jti()}
                headers = {"Authorization": f"Bearer {sign_jwt(claims, key, typ='JWT')}"}
                response = await client.post("/cds-services/patient-greeting", json=HOOK_BODY, headers=headers)
    assert response.status_code == 200
    assert response.json()["cards"][0]["summary"].startswith("Now seeing: Ada Lovelace")


async def test_aud_as_an_array_of_the_service_url_alone_is_accepted(cds: Harness) -> None:
    response = await cds.call(cds.token(aud=[SERVICE]))
    assert response.status_code == 200


async def test_discovery_and_feedback_require_the_jwt_with_their_own_url_as_aud(cds: Harness) -> None:
    ok = await cds.call(cds.token(aud=DISCOVERY), url=DISCOVERY)
    assert ok.status_code == 200 and "patient-greeting" in [s["id"] for s in ok.json()["services"]]
    _assert_bare_401(await cds.call(cds.token(), url=DISCOVERY))
    _assert_bare_401(await cds.call(cds.token(), url=FEEDBACK))
    assert (await cds.call(cds.token(aud=FEEDBACK), url=FEEDBACK)).status_code == 200


def _hs256_with_public_key(h: Harness, aud: str) -> str:
    header = {"alg": "HS256", "typ": "JWT", "kid": h.key.kid}
    secret = json.dumps(h.jwks["keys"][0]).encode()
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(h.claims(aud=aud)).encode())}"
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def _tampered(h: Harness, aud: str) -> str:
    header, _, signature = h.token(aud=aud).split(".")
    forged = h.claims(aud=aud)
    forged["patient_override"] = "someone-else"
    return f"{header}.{_b64(json.dumps(forged).encode())}.{signature}"


def _without_kid(h: Harness, aud: str) -> str:
    token = h.token(aud=aud)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    del header["kid"]
    return f"{_b64(json.dumps(header).encode())}.{token.split('.', 1)[1]}"


Attack = Callable[[Harness, str], Any]
ATTACKS: list[Any] = [
    pytest.param(lambda h, aud: None, id="no-authorization-header"),
    pytest.param(lambda h, aud: ("Basic", h.token(aud=aud)), id="non-bearer-scheme"),
    pytest.param(lambda h, aud: "garbage", id="garbage-token"),
    pytest.param(lambda h, aud: h.token(aud=f"{CDS}/cds-services/other"), id="aud-of-another-service"),
    pytest.param(
        lambda h, aud: h.token(aud=SERVICE if aud == DISCOVERY else DISCOVERY), id="aud-of-discovery-or-service"
    ),
    pytest.param(lambda h, aud: h.token(aud=CDS), id="aud-of-the-base-url"),
    pytest.param(lambda h, aud: h.token(aud=f"{aud}/"), id="aud-with-a-trailing-slash"),
    pytest.param(lambda h, aud: h.token(aud=[aud, f"{CDS}/cds-services/other"]), id="aud-naming-another-service-too"),
    pytest.param(lambda h, aud: h.token(aud=aud.replace("https://", "http://")), id="aud-with-http-scheme"),
    pytest.param(lambda h, aud: h.token(aud=aud, iss="https://evil.example"), id="untrusted-iss"),
    pytest.param(lambda h, aud: h.token(aud=aud, iss=f"{EHR}/"), id="iss-with-a-trailing-slash"),
    pytest.param(lambda h, aud: h.token(aud=aud, iss=PROBE), id="ehr-key-claiming-the-probes-iss"),
    pytest.param(lambda h, aud: h.token(aud=aud, exp=int(h.clock()) - 120), id="expired"),
    pytest.param(lambda h, aud: h.token(aud=aud, exp=None), id="exp-missing"),
    pytest.param(lambda h, aud: h.token(aud=aud, exp=int(h.clock()) + 86400), id="exp-absurdly-far"),
    pytest.param(lambda h, aud: h.token(aud=aud, iat=int(h.clock()) + 600), id="iat-in-the-future"),
    pytest.param(lambda h, aud: h.token(aud=aud, iat=None), id="iat-missing"),
    pytest.param(lambda h, aud: h.token(aud=aud, jti=None), id="jti-missing"),
    pytest.param(lambda h, aud: h.token(aud=aud, header={"jku": ATTACKER_JWKS_URL}), id="untrusted-jku"),
    pytest.param(lambda h, aud: h.token(aud=aud, header={"jku": JWKS_URL.replace("https", "http")}), id="http-jku"),
    pytest.param(lambda h, aud: h.token(aud=aud, header={"jku": PROBE_JWKS_URL}), id="jku-of-another-client"),
    pytest.param(lambda h, aud: h.token(aud=aud, header={"jwk": h.jwks["keys"][0]}), id="embedded-jwk"),
    pytest.param(lambda h, aud: h.token(aud=aud, header={"x5u": ATTACKER_JWKS_URL}), id="x5u-header"),
    pytest.param(lambda h, aud: h.token(key=_key(h.key.kid), aud=aud), id="unknown-key-with-a-known-kid"),
    pytest.param(lambda h, aud: h.token(key=_key("unknown-kid"), aud=aud), id="unknown-kid"),
    pytest.param(
        lambda h, aud: _raw_jwt({"alg": "none", "typ": "JWT", "kid": h.key.kid}, h.claims(aud=aud)), id="none"
    ),
    pytest.param(
        lambda h, aud: _raw_jwt({"alg": "nOnE", "typ": "JWT", "kid": h.key.kid}, h.claims(aud=aud)), id="none-mixed"
    ),
    pytest.param(_hs256_with_public_key, id="hs256-keyed-with-the-public-key"),
    pytest.param(_tampered, id="tampered-payload"),
    pytest.param(_without_kid, id="kid-missing"),
    pytest.param(lambda h, aud: sign_jwt(h.claims(aud=aud), h.key, typ="at+jwt"), id="typ-not-jwt"),
    pytest.param(
        lambda h, aud: sign_jwt(h.claims(aud=aud), SigningKey(h.key.kid, "ES256", generate_key("ES256")), typ="JWT"),
        id="es256-not-allowed",
    ),
]


@pytest.mark.parametrize("url", [SERVICE, DISCOVERY, FEEDBACK], ids=["service", "discovery", "feedback"])
@pytest.mark.parametrize("attack", ATTACKS)
async def test_every_invalid_token_gets_a_bare_401_and_no_card(cds: Harness, attack: Attack, url: str) -> None:
    token = attack(cds, url)
    if isinstance(token, tuple):
        response = await cds.call(token[1], scheme=token[0], url=url)
    else:
        response = await cds.call(token, url=url)
    _assert_bare_401(response)
    # The positive control on the same endpoint: the failure was the attack, not the set-up.
    assert (await cds.call(cds.token(aud=url), url=url)).status_code == 200


async def test_a_replayed_token_is_refused(cds: Harness) -> None:
    token = cds.token()
    assert (await cds.call(token)).status_code == 200
    _assert_bare_401(await cds.call(token))


async def test_a_replay_is_refused_even_after_a_failed_first_try_of_another_endpoint(cds: Harness) -> None:
    token = cds.token(aud=DISCOVERY)
    assert (await cds.call(token, url=DISCOVERY)).status_code == 200
    cds.clock.advance(200)  # still within the token's lifetime
    _assert_bare_401(await cds.call(token, url=DISCOVERY))


async def test_an_untrusted_jku_is_never_fetched(cds: Harness) -> None:
    assert (await cds.call(cds.token())).status_code == 200  # the configured JWKS is now cached
    before = list(cds.fetches)
    _assert_bare_401(await cds.call(cds.token(header={"jku": ATTACKER_JWKS_URL}, key=_key("fresh-kid"))))
    assert ATTACKER_JWKS_URL not in cds.fetches
    assert cds.fetches == before


async def test_an_unknown_issuer_causes_no_fetch_at_all(cds: Harness) -> None:
    for iss in ("https://evil.example", ATTACKER_JWKS_URL, ""):
        _assert_bare_401(await cds.call(cds.token(iss=iss, header={"jku": ATTACKER_JWKS_URL})))
    assert cds.fetches == []


async def test_the_probe_is_trusted_with_its_own_keys_fetched_only_when_it_calls(cds: Harness) -> None:
    assert (await cds.client.get("/readyz")).status_code == 200
    assert cds.fetches == [JWKS_URL]  # readiness needs the EHR's keys, not the probe's
    response = await cds.call(cds.token(key=cds.probe_key, iss=PROBE))
    assert response.status_code == 200 and response.json()["cards"]
    assert cds.fetches == [JWKS_URL, PROBE_JWKS_URL]
    # The probe's key does not speak for the EHR, nor the EHR's for the probe.
    _assert_bare_401(await cds.call(cds.token(key=cds.probe_key, iss=EHR)))
    _assert_bare_401(await cds.call(cds.token(key=cds.key, iss=PROBE)))


async def test_the_same_jti_from_two_issuers_is_two_tokens(cds: Harness) -> None:
    jti = new_jti()
    assert (await cds.call(cds.token(jti=jti))).status_code == 200
    assert (await cds.call(cds.token(key=cds.probe_key, iss=PROBE, jti=jti))).status_code == 200
    _assert_bare_401(await cds.call(cds.token(jti=jti)))


async def test_made_up_kids_do_not_cause_a_fetch_storm(cds: Harness) -> None:
    await cds.call(cds.token())
    start = len(cds.fetches)
    for i in range(20):
        _assert_bare_401(await cds.call(cds.token(key=SigningKey(f"made-up-{i}", "ES384", cds.key.key))))
    assert len(cds.fetches) - start <= 1


async def test_a_rotated_in_key_is_picked_up_by_refetching_on_its_unknown_kid(cds: Harness) -> None:
    assert (await cds.call(cds.token())).status_code == 200
    new_key = _key("ehr-2")
    cds.jwks = _jwks(cds.key, new_key)
    cds.clock.advance(2)  # past the minimum refetch interval
    assert (await cds.call(cds.token(key=new_key))).status_code == 200
    assert cds.fetches == [JWKS_URL, JWKS_URL]


async def test_an_unauthenticated_caller_cannot_tell_services_or_bodies_apart(cds: Harness) -> None:
    for url, body in ((f"{CDS}/cds-services/no-such-service", HOOK_BODY), (SERVICE, {"not": "a hook call"})):
        _assert_bare_401(await cds.call(None, url=url, body=body))


async def test_with_redis_a_token_used_at_one_replica_is_refused_at_another(tmp_path: Path) -> None:
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    from tests.integration.test_replay_redis import REDIS_URL

    probe = Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        await probe.ping()
    except (RedisError, OSError):
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    finally:
        await probe.aclose()
    clock = FrozenClock(time.time())
    key = _key("ehr-1")
    fetches: list[str] = []
    async with httpx.AsyncClient(transport=recording_transport({JWKS_URL: lambda: _jwks(key)}, fetches)) as outbound:
        settings = cds_settings(tmp_path, redis_url=REDIS_URL)
        replica_a = create_cds(settings, clock=clock, http_client=outbound)
        replica_b = create_cds(settings, clock=clock, http_client=outbound)
        async with serving(replica_a, CDS) as a, serving(replica_b, CDS) as b:
            now = int(clock())
            claims = {"iss": EHR, "aud": SERVICE, "iat": now, "exp": now + 300, "jti": new_jti()}
            token = sign_jwt(claims, key, typ="JWT")
            headers = {"Authorization": f"Bearer {token}"}
            assert (await a.post("/cds-services/patient-greeting", json=HOOK_BODY, headers=headers)).status_code == 200
            _assert_bare_401(await b.post("/cds-services/patient-greeting", json=HOOK_BODY, headers=headers))
