"""common.jwt_verify: the one kid → keys → verify → replay sequence for every JWT the stack accepts.

Each rule is shown by what reached the key source and the replay store: a token refused by its
header costs no key fetch, a token refused by its signature or claims burns no jti, and a second
use of a jti is refused as a replay.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from common.clock import FrozenClock
from common.errors import TokenInvalidError
from common.jose import KeySet, import_public_jwks, sign_jwt
from common.jwt_verify import JwtRules, Replay, TokenReplayedError, fixed_keys, verify
from common.keys import ALGORITHMS, SigningKey, generate_key, public_jwk
from common.replay import MemoryReplayStore

NOW = 1_700_000_000
ISS = "https://client.example.org"
AUD = "https://server.example.org/token"
LEEWAY = 30


class RecordingKeys:
    """A key source that remembers every kid it was asked for."""

    def __init__(self, key_set: KeySet) -> None:
        self.key_set = key_set
        self.asked: list[str] = []

    async def __call__(self, kid: str) -> KeySet:
        self.asked.append(kid)
        return self.key_set


class RecordingReplay:
    def __init__(self, clock: FrozenClock) -> None:
        self.store = MemoryReplayStore(clock)
        self.calls: list[tuple[str, int]] = []

    async def first_use(self, key: str, expires_at: int) -> bool:
        self.calls.append((key, expires_at))
        return await self.store.first_use(key, expires_at)


@pytest.fixture(scope="module")
def signer() -> SigningKey:
    key = generate_key("ES384")
    return SigningKey(kid=key.thumbprint(), alg="ES384", key=key)


@pytest.fixture
def keys(signer: SigningKey) -> RecordingKeys:
    return RecordingKeys(import_public_jwks({"keys": [public_jwk(signer.key, signer.kid, signer.alg)]}))


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def replay(clock: FrozenClock) -> RecordingReplay:
    return RecordingReplay(clock)


def rules(clock: FrozenClock, **changes: Any) -> JwtRules:
    base: dict[str, Any] = {
        "algorithms": ALGORITHMS,
        "typ": "JWT",
        "issuer": ISS,
        "audience": AUD,
        "clock": clock,
        "leeway": LEEWAY,
        "max_lifetime": 300,
        "subject": ISS,
    }
    base.update(changes)
    return JwtRules(**base)


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISS, "sub": ISS, "aud": AUD, "iat": NOW, "exp": NOW + 60, "jti": "jti-1"}
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def b64u(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def with_header(token: str, **header: Any) -> str:
    """The token with another header (its signature no longer matches; the header check comes first)."""
    _, payload, signature = token.split(".")
    return f"{b64u(header)}.{payload}.{signature}"


async def test_a_valid_token_is_verified_with_the_keys_for_its_kid_and_its_jti_is_recorded(
    signer: SigningKey, keys: RecordingKeys, replay: RecordingReplay, clock: FrozenClock
) -> None:
    token = sign_jwt(claims(), signer, typ="JWT")

    verified = await verify(token, keys, rules(clock), Replay(replay.first_use, "client-a"))

    assert verified.claims["jti"] == "jti-1"
    assert verified.header["kid"] == signer.kid
    assert keys.asked == [signer.kid]
    assert replay.calls == [("client-a|jti-1", NOW + 60 + LEEWAY)]


async def test_a_second_use_of_a_jti_is_refused_as_a_replay(
    signer: SigningKey, keys: RecordingKeys, replay: RecordingReplay, clock: FrozenClock
) -> None:
    token = sign_jwt(claims(), signer, typ="JWT")
    await verify(token, keys, rules(clock), Replay(replay.first_use, "client-a"))

    with pytest.raises(TokenReplayedError) as refused:
        await verify(token, keys, rules(clock), Replay(replay.first_use, "client-a"))

    assert refused.value.reason == "jti replayed"
    # Another namespace (another client or kind of token) keeps its own record.
    await verify(token, keys, rules(clock), Replay(replay.first_use, "client-b"))


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        pytest.param({"alg": "none", "typ": "JWT", "kid": "k"}, "algorithm 'none' not allowed", id="alg-none"),
        pytest.param({"alg": "HS256", "typ": "JWT", "kid": "k"}, "algorithm 'HS256' not allowed", id="alg-hmac"),
        pytest.param({"alg": "ES384", "typ": "at+JWT", "kid": "k"}, "typ 'at+JWT' is not 'JWT'", id="another-typ"),
        pytest.param({"alg": "ES384", "typ": "JWT"}, "kid missing", id="no-kid"),
        pytest.param({"alg": "ES384", "typ": "JWT", "kid": ""}, "kid missing", id="empty-kid"),
        pytest.param({"alg": "ES384", "typ": "JWT", "kid": "k", "jwk": {}}, "key-bearing header not allowed", id="jwk"),
        pytest.param(
            {"alg": "ES384", "typ": "JWT", "kid": "k", "jku": "https://attacker.example/jwks"},
            "jku not trusted",
            id="untrusted-jku",
        ),
    ],
)
async def test_a_token_its_header_refuses_costs_no_key_fetch_and_no_jti(
    signer: SigningKey,
    keys: RecordingKeys,
    replay: RecordingReplay,
    clock: FrozenClock,
    header: dict[str, Any],
    reason: str,
) -> None:
    token = with_header(sign_jwt(claims(), signer, typ="JWT"), **header)

    with pytest.raises(TokenInvalidError) as refused:
        await verify(token, keys, rules(clock), Replay(replay.first_use, "client-a"))

    assert refused.value.reason == reason
    assert keys.asked == []
    assert replay.calls == []


@pytest.mark.parametrize(
    ("changes", "reason_start"),
    [
        pytest.param({"aud": "https://elsewhere.example/token"}, "claims: invalid_claim", id="another-audience"),
        pytest.param({"exp": NOW - 3600}, "claims: expired_token", id="expired"),
        pytest.param({"exp": NOW + 3600}, "exp too far in the future", id="too-long"),
        pytest.param({"sub": "someone-else"}, "sub differs from the expected subject", id="another-subject"),
    ],
)
async def test_a_token_refused_by_its_claims_burns_no_jti(
    signer: SigningKey,
    keys: RecordingKeys,
    replay: RecordingReplay,
    clock: FrozenClock,
    changes: dict[str, Any],
    reason_start: str,
) -> None:
    token = sign_jwt(claims(**changes), signer, typ="JWT")

    with pytest.raises(TokenInvalidError) as refused:
        await verify(token, keys, rules(clock), Replay(replay.first_use, "client-a"))

    assert refused.value.reason.startswith(reason_start)
    assert not isinstance(refused.value, TokenReplayedError)
    assert replay.calls == []


async def test_a_token_signed_by_another_key_under_a_known_kid_is_refused(
    signer: SigningKey, keys: RecordingKeys, replay: RecordingReplay, clock: FrozenClock
) -> None:
    intruder = SigningKey(kid=signer.kid, alg="ES384", key=generate_key("ES384"))
    token = sign_jwt(claims(), intruder, typ="JWT")

    with pytest.raises(TokenInvalidError) as refused:
        await verify(token, keys, rules(clock), Replay(replay.first_use, "client-a"))

    assert refused.value.reason == "bad signature or payload"
    assert replay.calls == []


async def test_with_a_replay_record_a_token_without_a_jti_is_refused_even_when_rules_do_not_require_one(
    signer: SigningKey, keys: RecordingKeys, replay: RecordingReplay, clock: FrozenClock
) -> None:
    token = sign_jwt(claims(jti=None), signer, typ="JWT")
    loose = rules(clock, require=("exp", "iat"))

    assert (await verify(token, keys, loose)).claims["sub"] == ISS
    with pytest.raises(TokenInvalidError) as refused:
        await verify(token, keys, loose, Replay(replay.first_use, "client-a"))

    assert refused.value.reason == "jti missing"
    assert replay.calls == []


async def test_fixed_keys_answer_the_same_key_set_for_any_kid(signer: SigningKey, clock: FrozenClock) -> None:
    key_set = import_public_jwks({"keys": [public_jwk(signer.key, signer.kid, signer.alg)]})
    token = sign_jwt(claims(), signer, typ="JWT")

    assert await fixed_keys(key_set)("any-kid") is key_set
    assert (await verify(token, fixed_keys(key_set), rules(clock))).claims["iss"] == ISS


async def test_garbage_is_refused_before_anything_is_asked(
    keys: RecordingKeys, replay: RecordingReplay, clock: FrozenClock
) -> None:
    for garbage in ("", "a.b", "a.b.c.d", "!!!.e30.sig"):
        with pytest.raises(TokenInvalidError):
            await verify(garbage, keys, rules(clock), Replay(replay.first_use, "client-a"))

    assert keys.asked == []
    assert replay.calls == []
