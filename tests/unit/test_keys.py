"""common.keys, the pure parts: key generation, kid = RFC 7638 thumbprint, public JWK, encrypted rows, JWKS."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

import pytest

from common.clock import FrozenClock
from common.errors import KeyDecryptionError, KeyNotFoundError
from common.jose import import_public_jwks, sign_jwt, verify_jwt
from common.keys import (
    ACTIVE,
    ALGORITHMS,
    PRIVATE_MEMBERS,
    RETIRED,
    RETIRING,
    SigningKey,
    SigningKeyRow,
    decrypt_row,
    generate_key,
    new_key_row,
    public_jwk,
    published,
)

NOW = 1_700_000_000
KEK = os.urandom(32)
SERVICE = "authserver"

# RFC 7638 §3.2: the required members of each key type, in lexicographic order.
REQUIRED_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}
EXPECTED = {"ES384": ("EC", "P-384"), "ES256": ("EC", "P-256"), "RS384": ("RSA", None)}


def rfc7638_thumbprint(jwk: dict[str, Any]) -> str:
    required = {name: jwk[name] for name in REQUIRED_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def b64u_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


@pytest.fixture(scope="module")
def made() -> dict[str, tuple[SigningKeyRow, SigningKey]]:
    """One row per algorithm (RS384 key generation is slow: once per module)."""
    return {alg: new_key_row(SERVICE, alg, KEK, NOW) for alg in ALGORITHMS}


def copy_row(row: SigningKeyRow, **changes: Any) -> SigningKeyRow:
    fields = {
        name: getattr(row, name)
        for name in (
            "kid",
            "service",
            "alg",
            "public_jwk",
            "private_jwk_enc",
            "status",
            "created_at",
            "rotated_at",
            "publish_until",
        )
    }
    fields.update(changes)
    return SigningKeyRow(**fields)


# --- generation and kid -----------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256"])
def test_generate_key_makes_the_key_type_and_curve_of_each_algorithm(
    alg: str, made: dict[str, tuple[SigningKeyRow, SigningKey]]
) -> None:
    jwk = json.loads(made[alg][0].public_jwk)
    kty, crv = EXPECTED[alg]

    assert jwk["kty"] == kty
    assert jwk.get("crv") == crv
    if kty == "RSA":
        assert len(b64u_decode(jwk["n"])) * 8 == 3072


@pytest.mark.parametrize("alg", ["HS256", "none", "RS256", "es384", "EdDSA", ""])
def test_generate_key_refuses_any_other_algorithm(alg: str) -> None:
    with pytest.raises(ValueError, match="unsupported signing algorithm"):
        generate_key(alg)  # type: ignore[arg-type]


@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256"])
def test_kid_is_the_rfc7638_sha256_thumbprint_of_the_public_key(
    alg: str, made: dict[str, tuple[SigningKeyRow, SigningKey]]
) -> None:
    row, key = made[alg]
    jwk = json.loads(row.public_jwk)

    expected = rfc7638_thumbprint(jwk)

    assert row.kid == key.kid == jwk["kid"] == expected
    assert len(b64u_decode(expected)) == 32
    assert "=" not in expected


def test_thumbprint_ignores_optional_members_so_kid_is_stable(
    made: dict[str, tuple[SigningKeyRow, SigningKey]],
) -> None:
    row, _ = made["ES384"]
    jwk = json.loads(row.public_jwk)

    assert rfc7638_thumbprint(dict(jwk, kid="other", use="enc", alg="ES256")) == row.kid


def test_two_generated_keys_have_different_kids() -> None:
    first, _ = new_key_row(SERVICE, "ES256", KEK, NOW)
    second, _ = new_key_row(SERVICE, "ES256", KEK, NOW)

    assert first.kid != second.kid


# --- public JWK -------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256"])
def test_public_jwk_has_no_private_member_and_carries_kid_alg_and_use_sig(
    alg: str, made: dict[str, tuple[SigningKeyRow, SigningKey]]
) -> None:
    _, key = made[alg]

    jwk = public_jwk(key.key, key.kid, alg)

    assert PRIVATE_MEMBERS.isdisjoint(jwk)
    assert jwk["kid"] == key.kid
    assert jwk["alg"] == alg
    assert jwk["use"] == "sig"
    assert set(jwk) == {*REQUIRED_MEMBERS[EXPECTED[alg][0]], "kid", "alg", "use"}
    assert json.loads(made[alg][0].public_jwk) == jwk


@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256"])
def test_the_private_key_does_have_private_members_that_public_jwk_drops(
    alg: str, made: dict[str, tuple[SigningKeyRow, SigningKey]]
) -> None:
    _, key = made[alg]
    private = key.key.as_dict(private=True)

    assert "d" in private
    assert not (PRIVATE_MEMBERS & public_jwk(key.key, key.kid, alg).keys())


def test_private_members_cover_every_private_parameter_of_rfc7518() -> None:
    # §6.2.2 (EC), §6.3.2 (RSA), §6.4.1 (oct).
    assert {"d", "p", "q", "dp", "dq", "qi", "oth", "k"} == PRIVATE_MEMBERS


# --- rows encrypted at rest -------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256"])
def test_new_key_row_is_an_active_row_of_the_service_with_no_rotation_yet(
    alg: str, made: dict[str, tuple[SigningKeyRow, SigningKey]]
) -> None:
    row, key = made[alg]

    assert (row.service, row.alg, row.status, row.created_at) == (SERVICE, alg, ACTIVE, NOW)
    assert row.rotated_at is None
    assert row.publish_until is None
    assert key.alg == alg
    assert key.kid == row.kid


@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256"])
def test_new_key_row_stores_the_private_part_encrypted(
    alg: str, made: dict[str, tuple[SigningKeyRow, SigningKey]]
) -> None:
    row, key = made[alg]
    private = key.key.as_dict(private=True)
    d = private["d"]
    assert isinstance(d, str)
    blob = row.private_jwk_enc
    assert blob is not None

    assert d.encode() not in blob
    assert b64u_decode(d) not in blob
    assert b'"d"' not in blob
    assert b"kty" not in blob
    assert json.dumps(private, separators=(",", ":")).encode() not in blob


@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256"])
def test_decrypt_row_round_trips_the_private_key(alg: str, made: dict[str, tuple[SigningKeyRow, SigningKey]]) -> None:
    row, key = made[alg]

    decrypted = decrypt_row(row, KEK)

    assert (decrypted.kid, decrypted.alg) == (key.kid, key.alg)
    assert decrypted.key.as_dict(private=True) == key.key.as_dict(private=True)


@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256"])
def test_a_decrypted_key_signs_tokens_that_verify_against_the_published_jwk(
    alg: str, made: dict[str, tuple[SigningKeyRow, SigningKey]]
) -> None:
    row, _ = made[alg]
    signer = decrypt_row(row, KEK)
    claims = {"iss": "https://a", "aud": "https://b", "exp": NOW + 60, "iat": NOW, "jti": "j"}
    token = sign_jwt(claims, signer, typ="JWT")

    verified = verify_jwt(
        token,
        import_public_jwks({"keys": published([row], NOW)}),
        algorithms=[alg],
        typ="JWT",
        issuer="https://a",
        audience="https://b",
        clock=FrozenClock(NOW),
    )

    assert verified.claims == claims


def test_decrypting_with_another_kek_raises_key_decryption_error(
    made: dict[str, tuple[SigningKeyRow, SigningKey]],
) -> None:
    row, _ = made["ES256"]

    with pytest.raises(KeyDecryptionError, match="key-encryption key differs"):
        decrypt_row(row, os.urandom(32))


@pytest.mark.parametrize("change", [{"kid": "another-kid"}, {"service": "fhirserver"}])
def test_an_encrypted_private_part_moved_onto_another_row_does_not_decrypt(
    change: dict[str, str], made: dict[str, tuple[SigningKeyRow, SigningKey]]
) -> None:
    """The AAD binds the ciphertext to service and kid: a swapped blob is refused, not used."""
    victim, _ = made["ES384"]
    other, _ = made["ES256"]
    moved = copy_row(victim, **change)

    with pytest.raises(KeyDecryptionError):
        decrypt_row(moved, KEK)
    # The real-world variant: another service's row receiving this row's blob.
    with pytest.raises(KeyDecryptionError):
        decrypt_row(copy_row(other, private_jwk_enc=victim.private_jwk_enc), KEK)


def test_decrypting_a_retired_row_raises_key_not_found(made: dict[str, tuple[SigningKeyRow, SigningKey]]) -> None:
    row, _ = made["ES256"]

    with pytest.raises(KeyNotFoundError, match="retired"):
        decrypt_row(copy_row(row, status=RETIRED, private_jwk_enc=None), KEK)


def test_decrypting_a_truncated_blob_raises_key_decryption_error(
    made: dict[str, tuple[SigningKeyRow, SigningKey]],
) -> None:
    row, _ = made["ES256"]
    assert row.private_jwk_enc is not None

    with pytest.raises(KeyDecryptionError):
        decrypt_row(copy_row(row, private_jwk_enc=row.private_jwk_enc[:-1]), KEK)


# --- published --------------------------------------------------------------------------------


def _row(kid: str, status: str, publish_until: int | None = None) -> SigningKeyRow:
    return SigningKeyRow(
        kid=kid,
        service=SERVICE,
        alg="ES256",
        public_jwk=json.dumps({"kid": kid}),
        private_jwk_enc=None if status == RETIRED else b"x",
        status=status,
        created_at=NOW - 1000,
        rotated_at=None if status == ACTIVE else NOW - 100,
        publish_until=publish_until,
    )


def test_published_lists_the_active_key_and_retiring_keys_strictly_before_publish_until() -> None:
    rows = [
        _row("active", ACTIVE),
        _row("retiring-later", RETIRING, publish_until=NOW + 1),
        _row("retiring-much-later", RETIRING, publish_until=NOW + 3600),
        _row("retiring-now", RETIRING, publish_until=NOW),
        _row("retiring-past", RETIRING, publish_until=NOW - 1),
        _row("retiring-no-deadline", RETIRING, publish_until=None),
        _row("retired", RETIRED, publish_until=NOW + 3600),
        _row("retired-past", RETIRED, publish_until=NOW - 3600),
        _row("unknown-status", "revoked", publish_until=NOW + 3600),
    ]

    assert [k["kid"] for k in published(rows, NOW)] == ["active", "retiring-later", "retiring-much-later"]


@pytest.mark.parametrize(
    ("now", "listed"),
    [(NOW + 99, True), (NOW + 100 - 1, True), (NOW + 100, False), (NOW + 101, False)],
)
def test_a_retiring_key_disappears_from_the_jwks_exactly_at_publish_until(now: int, listed: bool) -> None:
    rows = [_row("retiring", RETIRING, publish_until=NOW + 100)]

    assert (published(rows, now) == [{"kid": "retiring"}]) is listed


def test_published_never_lists_a_retired_key_whatever_its_deadline() -> None:
    rows = [_row("retired", RETIRED, publish_until=NOW + 10_000)]

    assert published(rows, NOW) == []


def test_published_returns_the_stored_public_jwks_unchanged(made: dict[str, tuple[SigningKeyRow, SigningKey]]) -> None:
    rows = [row for row, _ in made.values()]

    keys = published(rows, NOW)

    assert keys == [json.loads(row.public_jwk) for row in rows]
    assert all(PRIVATE_MEMBERS.isdisjoint(k) for k in keys)
