"""Signing and verifying JWTs over joserfc, with algorithms always pinned and claims always checked.

Decoding a token is not validating it. `verify_jwt` names the algorithms, the expected `typ`,
issuer(s), audience and clock every time (RFC 8725 §3.1 pinned algorithms, §3.8 issuer,
§3.9 audience, §3.11 explicit typing). Only this module imports the JOSE library.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from common.clock import Clock, system_clock
from common.errors import TokenInvalidError
from common.keys import ALGORITHMS, SigningKey

# What verify_jwt can ever accept: our signing algorithms plus RS256, which some clients use for
# their assertions (accepted only where a service is configured to allow it).
# KeySet is re-exported so services can type key sets without importing joserfc.
__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "KeySet",
    "VerifiedToken",
    "check_header",
    "import_public_jwks",
    "new_jti",
    "sign_jwt",
    "unverified_claims",
    "unverified_header",
    "verify_jwt",
]

ASYMMETRIC_ALGORITHMS: tuple[str, ...] = (*ALGORITHMS, "RS256")
# Header members that would let a token choose its own verification key (RFC 8725 §3.10).
_KEY_CHOOSING_HEADERS = frozenset({"jwk", "x5u", "x5c"})


@dataclass(frozen=True)
class VerifiedToken:
    header: dict[str, Any]
    claims: dict[str, Any]


def new_jti() -> str:
    return secrets.token_urlsafe(24)


def sign_jwt(
    claims: Mapping[str, Any],
    key: SigningKey,
    *,
    typ: str,
    extra_header: Mapping[str, Any] | None = None,
) -> str:
    """Sign `claims` with `key`; the header always carries alg, kid and the explicit typ."""
    header: dict[str, Any] = dict(extra_header or {})
    header.update({"alg": key.alg, "kid": key.kid, "typ": typ})
    return jwt.encode(header, dict(claims), key.key, algorithms=[key.alg])


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, for key selection only: never trust anything in it before verify_jwt."""
    import base64

    try:
        head = token.split(".", 1)[0]
        raw = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TokenInvalidError("malformed JOSE header") from None
    if not isinstance(header, dict):
        raise TokenInvalidError("malformed JOSE header")
    return header


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload, unverified: only to find out which client's keys to verify it with."""
    import base64

    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, IndexError, UnicodeDecodeError, RecursionError):
        raise TokenInvalidError("malformed JWT payload") from None
    if not isinstance(claims, dict):
        raise TokenInvalidError("malformed JWT payload")
    return claims


def _typ_matches(actual: object, expected: str) -> bool:
    # RFC 7515 §4.1.9: media type compared case-insensitively, "application/" prefix optional.
    if not isinstance(actual, str):
        return False
    norm = actual.lower().removeprefix("application/")
    return norm == expected.lower().removeprefix("application/")


def _pinned_algorithms(algorithms: Collection[str]) -> list[str]:
    algs = [a for a in algorithms if a in ASYMMETRIC_ALGORITHMS]
    if not algs or len(algs) != len(list(algorithms)):
        raise ValueError("verify_jwt takes only asymmetric algorithms (ES384, RS384, ES256, RS256)")
    return algs


def _check_arguments(issuer: str | Collection[str], audience: str, require: Collection[str]) -> list[str]:
    """Programming errors that would silently turn a check off: refuse them outright."""
    issuers = [issuer] if isinstance(issuer, str) else list(issuer)
    if not issuers or not all(isinstance(i, str) and i for i in issuers):
        raise ValueError("verify_jwt needs at least one trusted issuer")
    if not isinstance(audience, str) or not audience:
        raise ValueError("verify_jwt needs the expected audience")
    if "exp" not in require:
        raise ValueError("verify_jwt always requires exp")
    return issuers


def check_header(
    header: Mapping[str, Any], *, algorithms: Collection[str], typ: str, allowed_jku: Collection[str] = ()
) -> str:
    """The header rules (RFC 8725 §3.1, §3.10, §3.11); returns the `kid`.

    Usable before any key is fetched: what the header alone refuses costs no JWKS request.
    """
    if header.get("alg") not in _pinned_algorithms(algorithms):
        raise TokenInvalidError(f"algorithm {header.get('alg')!r} not allowed")
    if not _typ_matches(header.get("typ"), typ):
        raise TokenInvalidError(f"typ {header.get('typ')!r} is not {typ!r}")
    if _KEY_CHOOSING_HEADERS & header.keys():
        raise TokenInvalidError("key-bearing header not allowed")
    if "jku" in header and header["jku"] not in allowed_jku:
        raise TokenInvalidError("jku not trusted")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenInvalidError("kid missing")
    return kid


def _decode(token: str, keys: KeySet, kid: str, algs: list[str]) -> dict[str, Any]:
    try:
        key = keys.get_by_kid(kid)
    except (ValueError, KeyError, JoseError):
        raise TokenInvalidError("unknown kid") from None
    try:
        return dict(jwt.decode(token, key, algorithms=algs).claims)
    except (JoseError, ValueError, TypeError, RecursionError):
        raise TokenInvalidError("bad signature or payload") from None


def _check_claims(
    claims: dict[str, Any], *, issuers: list[str], audience: str, now: int, leeway: int, require: Collection[str]
) -> None:
    options: dict[str, Any] = {
        "iss": {"essential": True, "values": issuers},
        "exp": {"essential": True},
        "iat": {"essential": "iat" in require},
        "jti": {"essential": "jti" in require},
        "aud": {"essential": True, "value": audience},
    }
    try:
        JWTClaimsRegistry(now=now, leeway=leeway, **options).validate(claims)
    except JoseError as exc:
        raise TokenInvalidError(f"claims: {exc.error}: {exc.description}") from None
    # The registry checked that `aud` contains `audience`; here it must name nothing else.
    if isinstance(claims["aud"], list) and len(claims["aud"]) != 1:
        raise TokenInvalidError("aud names other audiences too")
    for name in ("exp", "iat", "nbf"):
        if name in claims and (isinstance(claims[name], bool) or not isinstance(claims[name], int | float)):
            raise TokenInvalidError(f"{name} is not a NumericDate")
    if "jti" in require and (not isinstance(claims.get("jti"), str) or not claims["jti"]):
        raise TokenInvalidError("jti missing")


def verify_jwt(
    token: str,
    keys: KeySet,
    *,
    algorithms: Collection[str],
    typ: str,
    issuer: str | Collection[str],
    audience: str,
    clock: Clock = system_clock,
    leeway: int = 30,
    max_lifetime: int | None = None,
    require: Collection[str] = ("exp", "iat", "jti"),
    allowed_jku: Collection[str] = (),
    check_audience: Callable[[object], bool] | None = None,
) -> VerifiedToken:
    """Verify signature and claims; raise TokenInvalidError (with a reason for logs) on any failure.

    - `algorithms` must be a non-empty subset of the asymmetric algorithms; `none` and HMAC can
      never be accepted, whatever the caller passes.
    - `kid` is required and must name a key of `keys` (no trial of every key).
    - `jwk`, `x5u` and `x5c` headers are refused; `jku` only if it is in `allowed_jku`.
    - `aud` must be `audience` exactly, as a string or as an array of that one member: a token
      that names other audiences too could be replayed here by any of them (RFC 7523 §3,
      CDS Hooks 2.0 "Trusting CDS Clients", OpenID Connect Core §3.1.3.7 step 3).
    - `exp` must not be past and, with `max_lifetime`, not further ahead than that;
      `iat` not in the future; `nbf` respected; all within `leeway` seconds.

    Services do not call this directly for a token they receive: `common/jwt_verify.py:verify`
    wraps it in the one kid → keys → verify → replay sequence.
    """
    algs = _pinned_algorithms(algorithms)
    issuers = _check_arguments(issuer, audience, require)
    if not isinstance(token, str) or token.count(".") != 2:
        raise TokenInvalidError("not a compact JWS")
    header = unverified_header(token)
    kid = check_header(header, algorithms=algs, typ=typ, allowed_jku=allowed_jku)
    claims = _decode(token, keys, kid, algs)
    now = int(clock())
    _check_claims(claims, issuers=issuers, audience=audience, now=now, leeway=leeway, require=require)
    if max_lifetime is not None and claims["exp"] > now + max_lifetime + leeway:
        raise TokenInvalidError("exp too far in the future")
    if check_audience is not None and not check_audience(claims.get("aud")):
        raise TokenInvalidError("aud rejected")
    return VerifiedToken(header=header, claims=claims)


def import_public_jwks(data: object) -> KeySet:
    """Import a JWK Set fetched from elsewhere, refusing any key that carries private members."""
    from common.keys import PRIVATE_MEMBERS

    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise TokenInvalidError("not a JWK Set")
    keys = [k for k in data["keys"] if isinstance(k, dict)]
    if any(PRIVATE_MEMBERS & k.keys() for k in keys):
        raise TokenInvalidError("JWK Set contains private key material")
    usable = [k for k in keys if k.get("kty") in ("EC", "RSA") and isinstance(k.get("kid"), str)]
    try:
        return KeySet.import_key_set({"keys": usable})
    except (JoseError, ValueError, TypeError):
        raise TokenInvalidError("JWK Set has an invalid key") from None
