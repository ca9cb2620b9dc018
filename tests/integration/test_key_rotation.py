"""Signing keys in the database: one active key per service, rotation with overlap, retirement."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.clock import FrozenClock
from common.errors import KeyDecryptionError, TokenInvalidError
from common.jose import import_public_jwks, new_jti, sign_jwt, verify_jwt
from common.keys import RETIRED, RETIRING, KeyStore, SigningKeyRow, ensure_active_key, rotate

KEK = b"k" * 32
OTHER_KEK = b"o" * 32
OVERLAP = 330
Sessions = async_sessionmaker[AsyncSession]


def _token(key, clock: FrozenClock) -> str:  # type: ignore[no-untyped-def]
    now = int(clock())
    claims = {"iss": "https://ehr", "aud": "https://svc", "iat": now, "exp": now + 300, "jti": new_jti()}
    return sign_jwt(claims, key, typ="JWT")


def _verify(token: str, jwks: dict, clock: FrozenClock) -> dict:  # type: ignore[type-arg]
    keys = import_public_jwks(jwks)
    return verify_jwt(
        token, keys, algorithms=["ES384"], typ="JWT", issuer="https://ehr", audience="https://svc", clock=clock
    ).claims


async def _store(sessions: Sessions, clock: FrozenClock, kek: bytes = KEK) -> KeyStore:
    store = KeyStore(sessions, "ehr", kek, refresh_seconds=5, clock=clock)
    await store.reload()
    return store


async def test_ensure_active_key_is_idempotent_and_safe_when_replicas_race(sessions: Sessions) -> None:
    kids = await asyncio.gather(*(ensure_active_key(sessions, "ehr", "ES384", KEK, 1000) for _ in range(5)))
    assert len(set(kids)) == 1
    async with sessions() as session:
        rows = (await session.execute(select(SigningKeyRow))).scalars().all()
    assert [r.kid for r in rows] == [kids[0]]
    assert await ensure_active_key(sessions, "ehr", "ES384", KEK, 2000) == kids[0]


async def test_private_keys_are_stored_encrypted_and_jwks_holds_public_members_only(sessions: Sessions) -> None:
    clock = FrozenClock(1_000_000)
    await ensure_active_key(sessions, "ehr", "ES384", KEK, int(clock()))
    store = await _store(sessions, clock)
    signer = await store.signer()
    d = signer.key.as_dict(private=True)["d"]
    assert isinstance(d, str)
    async with sessions() as session:
        row = (await session.execute(select(SigningKeyRow))).scalar_one()
    assert row.private_jwk_enc is not None
    assert d.encode() not in row.private_jwk_enc
    assert base64.urlsafe_b64decode(d + "==") not in row.private_jwk_enc
    jwks = await store.jwks()
    assert [set(k) for k in jwks["keys"]] == [{"kty", "crv", "x", "y", "kid", "alg", "use"}]


async def test_a_replica_with_another_key_encryption_key_cannot_load_the_keys(sessions: Sessions) -> None:
    await ensure_active_key(sessions, "ehr", "ES384", KEK, 1000)
    with pytest.raises(KeyDecryptionError):
        await _store(sessions, FrozenClock(1000), kek=OTHER_KEK)


async def test_rotation_publishes_both_keys_signs_with_the_new_one_then_retires_the_old(sessions: Sessions) -> None:
    clock = FrozenClock(1_000_000)
    old_kid = await ensure_active_key(sessions, "ehr", "ES384", KEK, int(clock()))
    store = await _store(sessions, clock)
    old_token = _token(await store.signer(), clock)

    new_kid, retired = await rotate(sessions, "ehr", "ES384", KEK, int(clock()), OVERLAP)
    assert retired == old_kid and new_kid != old_kid

    # Before the refresh interval the running process still uses what it loaded…
    assert (await store.signer()).kid == old_kid
    # …and after it, the new key signs and both keys are published.
    clock.advance(5)
    assert (await store.signer()).kid == new_kid
    jwks = await store.jwks()
    assert {k["kid"] for k in jwks["keys"]} == {old_kid, new_kid}
    assert _verify(old_token, jwks, clock)["iss"] == "https://ehr"
    new_token = _token(await store.signer(), clock)
    assert json.loads(base64.urlsafe_b64decode(new_token.split(".")[0] + "=="))["kid"] == new_kid

    # Until the overlap ends, the old key still verifies the tokens it signed.
    clock.advance(OVERLAP - 10)
    await store.reload()
    assert {k["kid"] for k in (await store.jwks())["keys"]} == {old_kid, new_kid}

    # After the overlap it is gone from the JWKS and its private part is destroyed.
    clock.advance(10)
    await store.reload()
    jwks = await store.jwks()
    assert {k["kid"] for k in jwks["keys"]} == {new_kid}
    with pytest.raises(TokenInvalidError) as caught:
        _verify(old_token, jwks, clock)
    assert caught.value.reason == "unknown kid"
    async with sessions() as session:
        old = await session.get(SigningKeyRow, old_kid)
    assert old is not None and old.status == RETIRED and old.private_jwk_enc is None


async def test_rotating_twice_keeps_every_key_whose_overlap_is_running(sessions: Sessions) -> None:
    clock = FrozenClock(time.time())
    first = await ensure_active_key(sessions, "authserver", "ES384", KEK, int(clock()))
    second, _ = await rotate(sessions, "authserver", "RS384", KEK, int(clock()), OVERLAP)
    third, _ = await rotate(sessions, "authserver", "ES256", KEK, int(clock()) + 1, OVERLAP)
    store = KeyStore(sessions, "authserver", KEK, refresh_seconds=5, clock=clock)
    await store.reload()
    jwks = await store.jwks()
    assert {k["kid"] for k in jwks["keys"]} == {first, second, third}
    assert {k["alg"] for k in jwks["keys"]} == {"ES384", "RS384", "ES256"}
    assert (await store.signer()).alg == "ES256"
    async with sessions() as session:
        statuses = {r.kid: r.status for r in (await session.execute(select(SigningKeyRow))).scalars()}
    assert statuses == {first: RETIRING, second: RETIRING, third: "active"}


async def test_a_rotated_in_key_is_published_before_it_signs(sessions: Sessions) -> None:
    clock = FrozenClock(2_000_000)
    old_kid = await ensure_active_key(sessions, "ehr", "ES384", KEK, int(clock()))
    store = KeyStore(sessions, "ehr", KEK, refresh_seconds=1, publish_ahead=10, clock=clock)
    await store.reload()
    new_kid, _ = await rotate(sessions, "ehr", "ES384", KEK, int(clock()), OVERLAP)
    clock.advance(1)
    await store.reload()
    # Published at once, so verifiers can learn it…
    assert {k["kid"] for k in (await store.jwks())["keys"]} == {old_kid, new_kid}
    # …but the old key keeps signing until the new one has been published for publish_ahead.
    assert (await store.signer()).kid == old_kid
    clock.advance(9)
    await store.reload()
    assert (await store.signer()).kid == new_kid
