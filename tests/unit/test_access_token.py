"""common.access_token: the RFC 9068 profile, minted and verified in one place."""

from __future__ import annotations

from typing import Any

import pytest

from common import access_token
from common.clock import FrozenClock
from common.errors import TokenInvalidError
from common.jose import KeySet, import_public_jwks, sign_jwt, unverified_header
from common.jwt_verify import fixed_keys
from common.keys import ALGORITHMS, SigningKey, generate_key, public_jwk

NOW = 1_700_000_000
ISS = "https://auth.example.org"
FHIR = "https://fhir.example.org/fhir"
LEEWAY = 30


@pytest.fixture(scope="module")
def signer() -> SigningKey:
    key = generate_key("ES384")
    return SigningKey(kid=key.thumbprint(), alg="ES384", key=key)


@pytest.fixture(scope="module")
def key_set(signer: SigningKey) -> KeySet:
    return import_public_jwks({"keys": [public_jwk(signer.key, signer.kid, signer.alg)]})


def built(**changes: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "issuer": ISS,
        "subject": "dr-a",
        "audience": FHIR,
        "client_id": "app",
        "scope": "user/Patient.rs",
        "now": NOW,
        "lifetime": 300,
    }
    arguments.update(changes)
    return access_token.claims(**arguments)


async def verified(token: str, key_set: KeySet, audience: str | list[str] = FHIR) -> dict[str, Any]:
    return await access_token.verify_access_token(
        token, fixed_keys(key_set), issuer=ISS, audience=audience, clock=FrozenClock(NOW), leeway=LEEWAY
    )


def test_the_profile_is_rfc_9068() -> None:
    assert access_token.TYP == "at+jwt"
    assert access_token.ALGORITHMS == ALGORITHMS
    assert set(access_token.REQUIRED_CLAIMS) == {"iss", "exp", "aud", "sub", "client_id", "iat", "jti"}


def test_the_claims_builder_writes_every_required_claim_and_only_the_context_it_is_given() -> None:
    plain = built()
    assert set(access_token.REQUIRED_CLAIMS) <= plain.keys()
    assert plain["exp"] == NOW + 300
    assert not {"patient", "encounter", "fhirUser", "act"} & plain.keys()

    full = built(patient="p1", encounter="e1", fhir_user=f"{FHIR}/Practitioner/dr-a", actor_client_id="cds")
    assert (full["patient"], full["encounter"], full["fhirUser"]) == ("p1", "e1", f"{FHIR}/Practitioner/dr-a")
    assert full["act"] == {"sub": "cds"}  # RFC 8693 §4.1


def test_every_minted_token_has_its_own_jti() -> None:
    assert len({built()["jti"] for _ in range(20)}) == 20


@pytest.mark.parametrize("lifetime", [0, -1, access_token.MAX_LIFETIME + 1])
def test_the_builder_refuses_a_lifetime_outside_the_profile(lifetime: int) -> None:
    with pytest.raises(ValueError, match="an access token lives"):
        built(lifetime=lifetime)


async def test_a_signed_token_carries_the_profile_header_and_verifies(signer: SigningKey, key_set: KeySet) -> None:
    claims = built(patient="p1")
    token = access_token.sign(claims, signer)

    assert unverified_header(token) == {"alg": "ES384", "kid": signer.kid, "typ": "at+jwt"}
    assert await verified(token, key_set) == claims


async def test_a_token_for_one_of_several_audiences_verifies_and_for_none_is_refused(
    signer: SigningKey, key_set: KeySet
) -> None:
    token = access_token.sign(built(audience=f"{ISS}/introspect"), signer)

    assert (await verified(token, key_set, [FHIR, f"{ISS}/introspect"]))["aud"] == f"{ISS}/introspect"
    with pytest.raises(TokenInvalidError):
        await verified(token, key_set, [FHIR, f"{FHIR}/"])


@pytest.mark.parametrize("typ", ["JWT", "user+jwt", "JOSE"])
async def test_a_jwt_of_another_type_is_never_an_access_token(signer: SigningKey, key_set: KeySet, typ: str) -> None:
    token = sign_jwt(built(), signer, typ=typ)

    with pytest.raises(TokenInvalidError) as refused:
        await verified(token, key_set)

    assert refused.value.reason == f"typ {typ!r} is not 'at+jwt'"


@pytest.mark.parametrize("missing", ["sub", "client_id"])
async def test_a_token_without_a_claim_rfc_9068_requires_is_refused(
    signer: SigningKey, key_set: KeySet, missing: str
) -> None:
    claims = built()
    del claims[missing]
    token = access_token.sign(claims, signer)

    with pytest.raises(TokenInvalidError) as refused:
        await verified(token, key_set)

    assert refused.value.reason == f"{missing} missing"


@pytest.mark.parametrize(
    ("changes", "reason_start"),
    [
        pytest.param({"iss": "https://other-auth.example.org"}, "claims: invalid_claim", id="another-issuer"),
        pytest.param({"jti": None}, "claims: missing_claim", id="no-jti"),
        pytest.param({"iat": None}, "claims: missing_claim", id="no-iat"),
        pytest.param({"exp": NOW + access_token.MAX_LIFETIME + LEEWAY + 1}, "exp too far", id="beyond-max-lifetime"),
    ],
)
async def test_a_token_outside_the_profile_is_refused(
    signer: SigningKey, key_set: KeySet, changes: dict[str, Any], reason_start: str
) -> None:
    claims = {**built(), **changes}
    token = access_token.sign({k: v for k, v in claims.items() if v is not None}, signer)

    with pytest.raises(TokenInvalidError) as refused:
        await verified(token, key_set)

    assert refused.value.reason.startswith(reason_start)
