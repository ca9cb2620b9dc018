"""common.jose: signing and verifying JWTs with pinned algorithms, explicit typ and checked claims.

Every rule of `verify_jwt` is shown by mounting the attack it stops (RFC 8725) and asserting the
exact `TokenInvalidError.reason`, next to a control token that passes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from common.clock import FrozenClock
from common.errors import TokenInvalidError
from common.jose import VerifiedToken, import_public_jwks, new_jti, sign_jwt, unverified_header, verify_jwt
from common.keys import ALGORITHMS, SigningKey, generate_key, new_key_row

NOW = 1_700_000_000
ISS = "https://ehr.example.org"
AUD = "https://cds.example.org/cds-services/patient-greeting"
LEEWAY = 30
KEK = os.urandom(32)


# --- helpers ----------------------------------------------------------------------------------


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_part(obj: Any) -> str:
    return b64u(json.dumps(obj, separators=(",", ":")).encode())


def decode_part(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def raw_signature(key: SigningKey, signing_input: bytes) -> bytes:
    """A JWS signature (RFC 7518 §3.3, §3.4) made with the cryptography library, not joserfc."""
    private = key.key.private_key
    if isinstance(private, rsa.RSAPrivateKey):
        return private.sign(signing_input, padding.PKCS1v15(), hashes.SHA384())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    digest: hashes.HashAlgorithm = hashes.SHA384() if private.curve.key_size == 384 else hashes.SHA256()
    r, s = decode_dss_signature(private.sign(signing_input, ec.ECDSA(digest)))
    size = (private.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def forge(header: dict[str, Any], claims: dict[str, Any], key: SigningKey) -> str:
    """A correctly signed compact JWS with an arbitrary header (one sign_jwt would never make)."""
    signing_input = f"{encode_part(header)}.{encode_part(claims)}"
    return f"{signing_input}.{b64u(raw_signature(key, signing_input.encode()))}"


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{encode_part(header)}.{encode_part(claims)}."


def good_claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISS,
        "sub": ISS,
        "aud": AUD,
        "exp": NOW + 60,
        "iat": NOW,
        "jti": "jti-0001",
    }
    for name, value in changes.items():
        if value is DROP:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


DROP = object()


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signers() -> dict[str, tuple[SigningKey, dict[str, Any]]]:
    """One key per algorithm (RS384 key generation is slow: once per module)."""
    out: dict[str, tuple[SigningKey, dict[str, Any]]] = {}
    for alg in ALGORITHMS:
        row, key = new_key_row("test", alg, KEK, NOW)
        out[alg] = (key, json.loads(row.public_jwk))
    return out


@pytest.fixture(scope="module")
def intruders() -> dict[str, SigningKey]:
    """Another key per algorithm, never published: the attacker's."""
    out: dict[str, SigningKey] = {}
    for alg in ALGORITHMS:
        key = generate_key(alg)
        out[alg] = SigningKey(kid=key.thumbprint(), alg=alg, key=key)
    return out


@pytest.fixture(scope="module")
def keyset(signers: dict[str, tuple[SigningKey, dict[str, Any]]]) -> Any:
    return import_public_jwks({"keys": [jwk for _, jwk in signers.values()]})


@pytest.fixture(scope="module")
def es384(signers: dict[str, tuple[SigningKey, dict[str, Any]]]) -> SigningKey:
    return signers["ES384"][0]


@pytest.fixture
def verify(keyset: Any) -> Callable[..., VerifiedToken]:
    def _verify(token: Any, **overrides: Any) -> VerifiedToken:
        options: dict[str, Any] = {
            "algorithms": ["ES384"],
            "typ": "JWT",
            "issuer": ISS,
            "audience": AUD,
            "clock": FrozenClock(NOW),
            "leeway": LEEWAY,
        }
        options.update(overrides)
        return verify_jwt(token, options.pop("keys", keyset), **options)

    return _verify


def refused(verify: Callable[..., VerifiedToken], token: Any, **overrides: Any) -> str:
    with pytest.raises(TokenInvalidError) as info:
        verify(token, **overrides)
    assert str(info.value) == info.value.reason
    return info.value.reason


# --- round trip -------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256"])
def test_a_token_signed_with_each_algorithm_verifies_back_to_the_same_claims_and_header(
    alg: str, signers: dict[str, tuple[SigningKey, dict[str, Any]]], verify: Callable[..., VerifiedToken]
) -> None:
    key, _ = signers[alg]
    claims = good_claims()
    token = sign_jwt(claims, key, typ="JWT")

    verified = verify(token, algorithms=[alg])

    assert verified.claims == claims
    assert verified.header == {"alg": alg, "kid": key.kid, "typ": "JWT"}


@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256"])
def test_sign_jwt_header_carries_alg_kid_and_typ_and_they_cannot_be_overridden_by_extra_header(
    alg: str, signers: dict[str, tuple[SigningKey, dict[str, Any]]]
) -> None:
    key, _ = signers[alg]
    token = sign_jwt(
        good_claims(),
        key,
        typ="at+jwt",
        extra_header={"alg": "none", "kid": "attacker", "typ": "JWT", "jku": "https://ehr.example.org/jwks"},
    )

    assert unverified_header(token) == {
        "alg": alg,
        "kid": key.kid,
        "typ": "at+jwt",
        "jku": "https://ehr.example.org/jwks",
    }


def test_the_hand_forged_control_token_verifies_so_the_attacks_below_fail_for_their_own_reason(
    es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = forge({"alg": "ES384", "kid": es384.kid, "typ": "JWT"}, good_claims(), es384)

    assert verify(token).claims == good_claims()


def test_new_jti_is_random_url_safe_and_long_enough() -> None:
    values = {new_jti() for _ in range(100)}

    assert len(values) == 100
    assert all(
        len(v) >= 32 and set(v) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        for v in values
    )


# --- algorithm attacks ------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_verify_refuses_alg_none_in_any_letter_case(
    alg: str, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = unsigned({"alg": alg, "kid": es384.kid, "typ": "JWT"}, good_claims())

    assert refused(verify, token, algorithms=list(ALGORITHMS)) == f"algorithm {alg!r} not allowed"


def test_verify_refuses_a_token_without_alg(es384: SigningKey, verify: Callable[..., VerifiedToken]) -> None:
    token = forge({"kid": es384.kid, "typ": "JWT"}, good_claims(), es384)

    assert refused(verify, token) == "algorithm None not allowed"


@pytest.mark.parametrize("hmac_alg", ["HS256", "HS384", "HS512", "hs256"])
@pytest.mark.parametrize("secret_form", ["pem", "jwk_json", "jwk_json_compact"])
def test_verify_refuses_hmac_signed_with_the_public_key_as_secret(
    hmac_alg: str,
    secret_form: str,
    signers: dict[str, tuple[SigningKey, dict[str, Any]]],
    verify: Callable[..., VerifiedToken],
) -> None:
    """The classic key-confusion attack: the verifier's public key is public, so anyone can HMAC with it."""
    key, jwk = signers["ES384"]
    secrets = {
        "pem": key.key.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "jwk_json": json.dumps(jwk).encode(),
        "jwk_json_compact": json.dumps(jwk, separators=(",", ":")).encode(),
    }
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[hmac_alg.upper()]
    signing_input = f"{encode_part({'alg': hmac_alg, 'kid': key.kid, 'typ': 'JWT'})}.{encode_part(good_claims())}"
    mac = hmac.new(secrets[secret_form], signing_input.encode(), digest).digest()
    token = f"{signing_input}.{b64u(mac)}"

    assert refused(verify, token, algorithms=list(ALGORITHMS)) == f"algorithm {hmac_alg!r} not allowed"


@pytest.mark.parametrize(("signed_with", "allowed"), [("ES256", ["ES384"]), ("RS384", ["ES384"]), ("ES384", ["ES256"])])
def test_verify_refuses_an_algorithm_outside_the_pinned_list_even_when_the_key_is_known(
    signed_with: str,
    allowed: list[str],
    signers: dict[str, tuple[SigningKey, dict[str, Any]]],
    verify: Callable[..., VerifiedToken],
) -> None:
    token = sign_jwt(good_claims(), signers[signed_with][0], typ="JWT")

    assert refused(verify, token, algorithms=allowed) == f"algorithm {signed_with!r} not allowed"


def test_verify_refuses_a_header_alg_that_does_not_match_the_key_named_by_kid(
    signers: dict[str, tuple[SigningKey, dict[str, Any]]], verify: Callable[..., VerifiedToken]
) -> None:
    es256, _ = signers["ES256"]
    rs384, _ = signers["RS384"]
    # Signed by the RSA key but claiming to be ES256 and naming the EC key.
    token = forge({"alg": "ES256", "kid": es256.kid, "typ": "JWT"}, good_claims(), rs384)

    assert refused(verify, token, algorithms=list(ALGORITHMS)) == "bad signature or payload"


@pytest.mark.parametrize(
    "algorithms", [["HS256"], ["none"], ["ES384", "HS256"], ["ES384", "none"], [], ["es384"], ["PS256"]]
)
def test_verify_jwt_with_a_non_asymmetric_or_unknown_algorithm_is_a_programming_error(
    algorithms: list[str], es384: SigningKey, keyset: Any
) -> None:
    token = sign_jwt(good_claims(), es384, typ="JWT")

    with pytest.raises(ValueError, match="only asymmetric algorithms"):
        verify_jwt(token, keyset, algorithms=algorithms, typ="JWT", issuer=ISS, audience=AUD, clock=FrozenClock(NOW))


# --- signature and key selection ----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256"])
def test_verify_refuses_a_signature_by_another_key_that_reuses_a_published_kid(
    alg: str,
    signers: dict[str, tuple[SigningKey, dict[str, Any]]],
    intruders: dict[str, SigningKey],
    verify: Callable[..., VerifiedToken],
) -> None:
    victim, _ = signers[alg]
    impostor = SigningKey(kid=victim.kid, alg=alg, key=intruders[alg].key)
    token = sign_jwt(good_claims(), impostor, typ="JWT")

    assert refused(verify, token, algorithms=[alg]) == "bad signature or payload"


@pytest.mark.parametrize(
    "change", [{"sub": "admin"}, {"aud": AUD}, {"exp": NOW + 3600}, {"iss": ISS, "scope": "system/*.*"}]
)
def test_verify_refuses_a_tampered_payload_under_the_original_signature(
    change: dict[str, Any], es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    header, payload, signature = sign_jwt(good_claims(), es384, typ="JWT").split(".")
    claims = decode_part(payload)
    claims.update(change)
    # Re-encoded with other separators, so even an "unchanged" claim set is different bytes.
    tampered = f"{header}.{b64u(json.dumps(claims, indent=1).encode())}.{signature}"

    assert refused(verify, tampered) == "bad signature or payload"


def test_verify_refuses_a_tampered_header_under_the_original_signature(
    es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    _, payload, signature = sign_jwt(good_claims(), es384, typ="JWT").split(".")
    header = encode_part({"alg": "ES384", "kid": es384.kid, "typ": "JWT", "x-extra": 1})

    assert refused(verify, f"{header}.{payload}.{signature}") == "bad signature or payload"


@pytest.mark.parametrize("signature", ["", "AAAA", "flip"])
def test_verify_refuses_a_stripped_or_corrupted_signature(
    signature: str, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    header, payload, original = sign_jwt(good_claims(), es384, typ="JWT").split(".")
    if signature == "flip":
        raw = bytearray(base64.urlsafe_b64decode(original + "=" * (-len(original) % 4)))
        raw[10] ^= 0x01
        signature = b64u(bytes(raw))

    assert refused(verify, f"{header}.{payload}.{signature}") == "bad signature or payload"


@pytest.mark.parametrize("kid", [DROP, "", 42, None, ["kid"]])
def test_verify_refuses_a_token_whose_kid_is_missing_or_not_a_string(
    kid: Any, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    header: dict[str, Any] = {"alg": "ES384", "typ": "JWT"}
    if kid is not DROP:
        header["kid"] = kid
    token = forge(header, good_claims(), es384)

    assert refused(verify, token) == "kid missing"


def test_verify_refuses_an_unknown_kid_rather_than_trying_every_key(
    es384: SigningKey, intruders: dict[str, SigningKey], verify: Callable[..., VerifiedToken]
) -> None:
    attacker = intruders["ES384"]
    token = sign_jwt(good_claims(), attacker, typ="JWT")

    assert refused(verify, token) == "unknown kid"


@pytest.mark.parametrize("member", ["jwk", "x5u", "x5c"])
def test_verify_refuses_a_header_that_brings_its_own_key(
    member: str,
    signers: dict[str, tuple[SigningKey, dict[str, Any]]],
    intruders: dict[str, SigningKey],
    verify: Callable[..., VerifiedToken],
) -> None:
    victim, _ = signers["ES384"]
    attacker = intruders["ES384"]
    values = {
        "jwk": dict(attacker.key.as_dict(private=False), kid=victim.kid),
        "x5u": "https://attacker.example/cert.pem",
        "x5c": ["MIIBszCCAVmgAwIBAgIU"],
    }
    # Signed by the attacker, naming the victim's kid: a library that trusted the header key would accept it.
    token = forge({"alg": "ES384", "kid": victim.kid, "typ": "JWT", member: values[member]}, good_claims(), attacker)

    assert refused(verify, token) == "key-bearing header not allowed"


@pytest.mark.parametrize("member", ["jwk", "x5u", "x5c"])
def test_verify_refuses_a_key_bearing_header_even_on_a_genuinely_signed_token(
    member: str, signers: dict[str, tuple[SigningKey, dict[str, Any]]], verify: Callable[..., VerifiedToken]
) -> None:
    key, jwk = signers["ES384"]
    values = {"jwk": jwk, "x5u": "https://ehr.example.org/cert.pem", "x5c": ["MIIBszCCAVmgAwIBAgIU"]}
    token = sign_jwt(good_claims(), key, typ="JWT", extra_header={member: values[member]})

    assert refused(verify, token) == "key-bearing header not allowed"


@pytest.mark.parametrize("allowed_jku", [(), ("https://ehr.example.org/jwks",), ("https://attacker.example/jwks/",)])
def test_verify_refuses_a_jku_that_is_not_in_allowed_jku(
    allowed_jku: tuple[str, ...], es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(), es384, typ="JWT", extra_header={"jku": "https://attacker.example/jwks"})

    assert refused(verify, token, allowed_jku=allowed_jku) == "jku not trusted"


def test_verify_accepts_a_jku_that_is_in_allowed_jku(es384: SigningKey, verify: Callable[..., VerifiedToken]) -> None:
    jku = "https://ehr.example.org/jwks"
    token = sign_jwt(good_claims(), es384, typ="JWT", extra_header={"jku": jku})

    verified = verify(token, allowed_jku=(jku, "https://other.example/jwks"))

    assert verified.header == {"alg": "ES384", "kid": es384.kid, "typ": "JWT", "jku": jku}
    assert verified.claims == good_claims()


# --- typ --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        ("JWT", "JWT"),
        ("JWT", "jwt"),
        ("JWT", "application/JWT"),
        ("JWT", "application/jwt"),
        ("JWT", "APPLICATION/JWT"),
        ("JWT", "Application/Jwt"),
        ("at+jwt", "at+jwt"),
        ("at+jwt", "application/at+JWT"),
        ("application/at+jwt", "at+jwt"),
    ],
)
def test_verify_accepts_typ_case_insensitively_with_or_without_the_application_prefix(
    expected: str, actual: str, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(), es384, typ=actual)

    assert verify(token, typ=expected).header["typ"] == actual


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        ("JWT", "at+jwt"),
        ("JWT", "JWS"),
        ("JWT", "text/jwt"),
        ("JWT", "application/application/jwt"),
        ("JWT", ""),
        ("JWT", " JWT"),
        ("at+jwt", "JWT"),
        ("JWT", 1),
        ("JWT", ["JWT"]),
        ("JWT", DROP),
    ],
)
def test_verify_refuses_a_wrong_or_missing_typ(
    expected: str, actual: Any, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    header: dict[str, Any] = {"alg": "ES384", "kid": es384.kid}
    if actual is not DROP:
        header["typ"] = actual
    token = forge(header, good_claims(), es384)

    shown = None if actual is DROP else actual
    assert refused(verify, token, typ=expected) == f"typ {shown!r} is not {expected!r}"


# --- iss / aud --------------------------------------------------------------------------------


@pytest.mark.parametrize("iss", ["https://attacker.example", ISS + "/", ISS.upper(), ""])
def test_verify_refuses_an_issuer_that_is_not_allowed(
    iss: str, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(iss=iss), es384, typ="JWT")

    assert refused(verify, token) == "claims: invalid_claim: Invalid claim: 'iss'"


def test_verify_refuses_an_issuer_given_as_an_array(es384: SigningKey, verify: Callable[..., VerifiedToken]) -> None:
    token = sign_jwt(good_claims(iss=[ISS]), es384, typ="JWT")

    assert refused(verify, token) == "claims: invalid_claim: Claim 'iss' must be a StringOrURI value"


def test_verify_refuses_a_token_without_iss(es384: SigningKey, verify: Callable[..., VerifiedToken]) -> None:
    token = sign_jwt(good_claims(iss=DROP), es384, typ="JWT")

    assert refused(verify, token) == "claims: missing_claim: Missing claim: 'iss'"


def test_verify_accepts_any_issuer_of_an_allowed_collection(
    es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(iss="https://second.example"), es384, typ="JWT")

    assert verify(token, issuer=[ISS, "https://second.example"]).claims["iss"] == "https://second.example"
    assert refused(verify, token, issuer=(ISS,)) == "claims: invalid_claim: Invalid claim: 'iss'"


@pytest.mark.parametrize("issuer", [[], (), frozenset()])
def test_verify_with_an_empty_issuer_collection_accepts_no_issuer(
    issuer: Any, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(iss="https://attacker.example"), es384, typ="JWT")

    with pytest.raises((TokenInvalidError, ValueError)):
        verify(token, issuer=issuer)


@pytest.mark.parametrize(
    ("aud", "reason"),
    [
        ("https://other.example/cds-services/patient-greeting", "claims: invalid_claim: Invalid claim: 'aud'"),
        (AUD + "/", "claims: invalid_claim: Invalid claim: 'aud'"),
        (AUD.upper(), "claims: invalid_claim: Invalid claim: 'aud'"),
        (AUD + "?x=1", "claims: invalid_claim: Invalid claim: 'aud'"),
        ("", "claims: invalid_claim: Invalid claim: 'aud'"),
        (["https://other.example", AUD + "/"], "claims: invalid_claim: Invalid claim: 'aud'"),
        ([], "claims: invalid_claim: Invalid claim: 'aud'"),
        (DROP, "claims: missing_claim: Missing claim: 'aud'"),
        (None, "claims: missing_claim: Missing claim: 'aud'"),
        (7, "claims: invalid_claim: Claim 'aud' must be an array of StringOrURI value or a single StringOrURI value"),
    ],
)
def test_verify_refuses_a_token_for_another_audience_or_without_one(
    aud: Any, reason: str, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(aud=aud), es384, typ="JWT")

    assert refused(verify, token) == reason


def test_verify_accepts_the_audience_as_an_array_of_that_one_member(
    es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(aud=[AUD]), es384, typ="JWT")

    assert verify(token).claims["aud"] == [AUD]


@pytest.mark.parametrize(
    "aud", [["https://other.example", AUD], [AUD, "https://other.example"], [AUD, AUD + "/"], [AUD, AUD]]
)
def test_verify_refuses_an_audience_array_that_names_anything_besides_the_audience(
    aud: list[str], es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    # The other audience received the same token and could replay it here.
    token = sign_jwt(good_claims(aud=aud), es384, typ="JWT")

    assert refused(verify, token) == "aud names other audiences too"


def test_verify_applies_check_audience_after_the_standard_checks(
    es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(), es384, typ="JWT")
    seen: list[object] = []

    def deny(aud: object) -> bool:
        seen.append(aud)
        return False

    assert refused(verify, token, check_audience=deny) == "aud rejected"
    assert seen == [AUD]
    assert verify(token, check_audience=lambda aud: aud == AUD).claims == good_claims()


# --- time claims ------------------------------------------------------------------------------


@pytest.mark.parametrize("exp", [NOW - LEEWAY - 1, NOW - LEEWAY, NOW - 3600, 0])
def test_verify_refuses_an_exp_in_the_past_beyond_the_leeway(
    exp: int, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(exp=exp, iat=exp - 60), es384, typ="JWT")

    assert refused(verify, token) == "claims: expired_token: The token is expired"


@pytest.mark.parametrize("exp", [NOW - LEEWAY + 1, NOW - 1, NOW, NOW + 1])
def test_verify_accepts_an_exp_just_inside_the_leeway(
    exp: int, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(exp=exp, iat=exp - 60), es384, typ="JWT")

    assert verify(token).claims["exp"] == exp


def test_verify_follows_the_clock_it_is_given(es384: SigningKey, verify: Callable[..., VerifiedToken]) -> None:
    token = sign_jwt(good_claims(exp=NOW + 60), es384, typ="JWT")
    clock = FrozenClock(NOW)

    assert verify(token, clock=clock).claims["exp"] == NOW + 60
    clock.advance(60 + LEEWAY)
    assert refused(verify, token, clock=clock) == "claims: expired_token: The token is expired"


@pytest.mark.parametrize("claim", ["exp", "iat", "jti"])
def test_verify_refuses_a_token_missing_a_required_claim(
    claim: str, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(**{claim: DROP}), es384, typ="JWT")

    assert refused(verify, token) == f"claims: missing_claim: Missing claim: '{claim}'"


def test_verify_cannot_be_asked_to_accept_a_token_without_exp(
    es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(exp=DROP), es384, typ="JWT")

    with pytest.raises(ValueError, match="always requires exp"):
        verify(token, require=("iat", "jti"))


@pytest.mark.parametrize("exp", [NOW + 10 * 365 * 24 * 3600, NOW + 301 + LEEWAY, 2**63, 1e300])
def test_verify_refuses_an_exp_absurdly_far_ahead_when_max_lifetime_is_set(
    exp: float, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(exp=exp), es384, typ="JWT")

    assert refused(verify, token, max_lifetime=300) == "exp too far in the future"


def test_verify_accepts_an_exp_at_the_max_lifetime_plus_leeway(
    es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(exp=NOW + 300 + LEEWAY), es384, typ="JWT")

    assert verify(token, max_lifetime=300).claims["exp"] == NOW + 300 + LEEWAY


@pytest.mark.parametrize("iat", [NOW + LEEWAY + 1, NOW + 3600])
def test_verify_refuses_an_iat_in_the_future_beyond_the_leeway(
    iat: int, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(iat=iat, exp=iat + 60), es384, typ="JWT")

    assert refused(verify, token) == "claims: invalid_claim: The token was issued in the future"


def test_verify_accepts_an_iat_in_the_future_within_the_leeway(
    es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(iat=NOW + LEEWAY), es384, typ="JWT")

    assert verify(token).claims["iat"] == NOW + LEEWAY


@pytest.mark.parametrize("nbf", [NOW + LEEWAY + 1, NOW + 3600])
def test_verify_refuses_a_token_before_its_nbf(
    nbf: int, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(nbf=nbf, exp=nbf + 60), es384, typ="JWT")

    assert refused(verify, token) == "claims: invalid_claim: The token is not yet valid"


@pytest.mark.parametrize("nbf", [NOW, NOW + LEEWAY, NOW - 10])
def test_verify_accepts_a_token_at_or_after_its_nbf_within_the_leeway(
    nbf: int, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(nbf=nbf), es384, typ="JWT")

    assert verify(token).claims["nbf"] == nbf


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", [str(NOW + 60), True, False, None, [NOW + 60], {"t": NOW}])
def test_verify_refuses_a_time_claim_that_is_not_a_numericdate(
    claim: str, value: Any, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(**{claim: value}), es384, typ="JWT")

    reason = refused(verify, token)

    if value is None and claim != "nbf":
        assert reason == f"claims: missing_claim: Missing claim: '{claim}'"
    else:
        assert reason == f"claims: invalid_claim: Claim '{claim}' must be a NumericDate value"


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_verify_refuses_a_time_claim_of_nan_or_infinity(
    claim: str, literal: str, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    header = {"alg": "ES384", "kid": es384.kid, "typ": "JWT"}
    claims = good_claims()
    claims[claim] = float(literal.lower().replace("infinity", "inf"))
    token = forge(header, claims, es384)  # json.dumps writes NaN / Infinity, which json.loads reads back

    assert refused(verify, token) == f"claims: invalid_claim: Claim '{claim}' must be a NumericDate value"


@pytest.mark.parametrize(
    ("jti", "reason"),
    [
        (DROP, "claims: missing_claim: Missing claim: 'jti'"),
        (None, "claims: missing_claim: Missing claim: 'jti'"),
        ("", "claims: invalid_claim: Invalid claim: 'jti'"),
        (123, "claims: invalid_claim: Claim 'jti' must be a string"),
        (["a"], "claims: invalid_claim: Claim 'jti' must be a string"),
    ],
)
def test_verify_refuses_a_missing_empty_or_non_string_jti(
    jti: Any, reason: str, es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(jti=jti), es384, typ="JWT")

    assert refused(verify, token) == reason


# --- not a JWS --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "not a compact JWS"),
        ("garbage", "not a compact JWS"),
        ("a.b", "not a compact JWS"),
        ("a.b.c.d", "not a compact JWS"),
        ("a.b.c.d.e", "not a compact JWS"),
        ("..", "malformed JOSE header"),
        ("!!!.b.c", "malformed JOSE header"),
        ("abc.def.ghi", "malformed JOSE header"),
        (b64u(b"[1,2]") + ".e30.", "malformed JOSE header"),
        (b64u(b'"ES384"') + ".e30.", "malformed JOSE header"),
        (b64u(bytes([0xFF, 0xFE])) + ".e30.", "malformed JOSE header"),
        (None, "not a compact JWS"),
        (b"a.b.c", "not a compact JWS"),
        (42, "not a compact JWS"),
    ],
)
def test_verify_refuses_input_that_is_not_a_compact_jws(
    token: Any, reason: str, verify: Callable[..., VerifiedToken]
) -> None:
    assert refused(verify, token) == reason


def test_verify_refuses_a_five_part_jwe_made_from_a_valid_token(
    es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    token = sign_jwt(good_claims(), es384, typ="JWT")

    assert refused(verify, token + ".AAAA.BBBB") == "not a compact JWS"


def test_verify_refuses_a_payload_that_is_not_a_json_object(
    es384: SigningKey, verify: Callable[..., VerifiedToken]
) -> None:
    header = {"alg": "ES384", "kid": es384.kid, "typ": "JWT"}
    signing_input = f"{encode_part(header)}.{b64u(b'[1,2,3]')}"
    token = f"{signing_input}.{b64u(raw_signature(es384, signing_input.encode()))}"

    assert refused(verify, token) == "bad signature or payload"


def test_verify_refuses_a_deeply_nested_header_as_malformed(verify: Callable[..., VerifiedToken]) -> None:
    token = f"{b64u(b'[' * 100_000)}.e30.c2ln"

    assert refused(verify, token) == "malformed JOSE header"


def test_unverified_header_returns_the_header_without_checking_anything() -> None:
    header = {"alg": "none", "kid": "k", "typ": "JWT", "jwk": {"kty": "EC"}}

    assert unverified_header(unsigned(header, {})) == header


@pytest.mark.parametrize("token", ["", "%%%", b64u(b"[]") + ".x.y", b64u(b"null") + ".x.y"])
def test_unverified_header_raises_token_invalid_for_garbage(token: str) -> None:
    with pytest.raises(TokenInvalidError) as info:
        unverified_header(token)

    assert info.value.reason == "malformed JOSE header"


# --- import_public_jwks -----------------------------------------------------------------------


def test_import_public_jwks_imports_published_keys_by_kid(
    signers: dict[str, tuple[SigningKey, dict[str, Any]]],
) -> None:
    keyset = import_public_jwks({"keys": [jwk for _, jwk in signers.values()]})

    for key, jwk in signers.values():
        assert keyset.get_by_kid(key.kid).as_dict(private=False) == jwk


def test_import_public_jwks_skips_keys_without_kid_or_of_another_type(
    signers: dict[str, tuple[SigningKey, dict[str, Any]]], verify: Callable[..., VerifiedToken]
) -> None:
    key, jwk = signers["ES384"]
    no_kid = {k: v for k, v in signers["ES256"][1].items() if k != "kid"}
    keyset = import_public_jwks(
        {"keys": [jwk, no_kid, {"kty": "OKP", "kid": "x", "crv": "Ed25519", "x": "AA"}, "junk"]}
    )
    token = sign_jwt(good_claims(), key, typ="JWT")

    assert verify(token, keys=keyset).claims == good_claims()
    assert refused(
        verify, sign_jwt(good_claims(), signers["ES256"][0], typ="JWT"), keys=keyset, algorithms=["ES256"]
    ) == ("unknown kid")


@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256"])
def test_import_public_jwks_refuses_a_set_containing_a_private_key(
    alg: str, signers: dict[str, tuple[SigningKey, dict[str, Any]]]
) -> None:
    key, jwk = signers[alg]
    private = dict(key.key.as_dict(private=True), kid=key.kid)

    with pytest.raises(TokenInvalidError) as info:
        import_public_jwks({"keys": [jwk, private]})

    assert info.value.reason == "JWK Set contains private key material"


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "oth", "k"])
def test_import_public_jwks_refuses_any_private_member(
    member: str, signers: dict[str, tuple[SigningKey, dict[str, Any]]]
) -> None:
    _, jwk = signers["ES384"]

    with pytest.raises(TokenInvalidError) as info:
        import_public_jwks({"keys": [dict(jwk, **{member: "AAAA"})]})

    assert info.value.reason == "JWK Set contains private key material"


def test_import_public_jwks_refuses_a_symmetric_key() -> None:
    with pytest.raises(TokenInvalidError) as info:
        import_public_jwks({"keys": [{"kty": "oct", "kid": "h", "k": b64u(b"secret")}]})

    assert info.value.reason == "JWK Set contains private key material"


@pytest.mark.parametrize(
    "data", [None, [], "keys", b"{}", 42, {}, {"keys": "x"}, {"keys": {"kty": "EC"}}, {"keys": None}]
)
def test_import_public_jwks_refuses_anything_but_a_jwk_set(data: Any) -> None:
    with pytest.raises(TokenInvalidError) as info:
        import_public_jwks(data)

    assert info.value.reason == "not a JWK Set"


def test_import_public_jwks_refuses_an_invalid_key(signers: dict[str, tuple[SigningKey, dict[str, Any]]]) -> None:
    _, jwk = signers["ES384"]

    with pytest.raises(TokenInvalidError) as info:
        import_public_jwks({"keys": [dict(jwk, x="AAAA")]})

    assert info.value.reason == "JWK Set has an invalid key"
