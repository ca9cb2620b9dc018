"""The access-token profile (RFC 9068 "JWT Profile for OAuth 2.0 Access Tokens"), stated once.

Every access token the stack mints — `authserver/tokens.py:issue` for every grant and the
authorization server's internal reach token (`authserver/reach.py`) — is built by `claims` and
signed by `sign`; every access token the stack accepts — the FHIR guard, the authorization
server's introspection, revocation and token exchange — is checked by `verify_access_token`.

- `typ` is `at+jwt` (RFC 9068 §2.1; §4: a verifier refuses any other, so an id_token, a CDS
  Hooks JWT or a client assertion can never pass for an access token);
- signed with one of the stack's asymmetric algorithms (`common/keys.py:ALGORITHMS`);
- the claims RFC 9068 §2.2 requires: iss, exp, aud, sub, client_id, iat, jti;
- `aud` one resource server exactly (RFC 8707), lifetime at most MAX_LIFETIME.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common.clock import Clock
from common.errors import TokenInvalidError
from common.jose import new_jti, sign_jwt
from common.jwt_verify import JwtRules, KeySource, verify
from common.keys import ALGORITHMS as SIGNING_ALGORITHMS
from common.keys import SigningKey

TYP = "at+jwt"  # RFC 9068 §2.1 (media type application/at+jwt)
ALGORITHMS: tuple[str, ...] = SIGNING_ALGORITHMS
# The longest lifetime a verifier accepts (and a minter may ask for); the authorization server's
# own setting stays far below it (authserver/settings.py access_token_lifetime_seconds ≤ 300).
MAX_LIFETIME = 3600
REQUIRED_CLAIMS = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")  # RFC 9068 §2.2
# verify_jwt checks iss, exp, aud, iat and jti itself; these are checked here.
_REQUIRED_STRINGS = ("sub", "client_id")

__all__ = ["ALGORITHMS", "MAX_LIFETIME", "REQUIRED_CLAIMS", "TYP", "claims", "sign", "verify_access_token"]


def claims(
    *,
    issuer: str,
    subject: str,
    audience: str,
    client_id: str,
    scope: str,
    now: int,
    lifetime: int,
    patient: str | None = None,
    encounter: str | None = None,
    fhir_user: str | None = None,
    actor_client_id: str | None = None,
) -> dict[str, Any]:
    """The claims of one access token (RFC 9068 §2.2, SMART `patient`/`encounter`/`fhirUser`)."""
    if not 0 < lifetime <= MAX_LIFETIME:
        raise ValueError(f"an access token lives 1..{MAX_LIFETIME} s, not {lifetime}")
    built: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "client_id": client_id,
        "scope": scope,
        "iat": now,
        "exp": now + lifetime,
        "jti": new_jti(),
    }
    if patient:
        built["patient"] = patient
    if encounter:
        built["encounter"] = encounter
    if fhir_user:
        built["fhirUser"] = fhir_user
    if actor_client_id:
        built["act"] = {"sub": actor_client_id}  # RFC 8693 §4.1
    return built


def sign(token_claims: dict[str, Any], key: SigningKey) -> str:
    """Sign access-token claims with the header RFC 9068 §2.1 asks for (alg, kid, typ at+jwt)."""
    return sign_jwt(token_claims, key, typ=TYP)


async def verify_access_token(
    token: str, keys: KeySource, *, issuer: str, audience: str | Sequence[str], clock: Clock, leeway: int
) -> dict[str, Any]:
    """The claims of a valid access token from `issuer` for `audience` (or one of several).

    Raises TokenInvalidError. Revocation is the caller's business (the guard's revocation view,
    the authorization server's token records).
    """
    audiences = [audience] if isinstance(audience, str) else list(audience)
    last = TokenInvalidError("no audience")
    for one in audiences:
        rules = JwtRules(
            algorithms=ALGORITHMS,
            typ=TYP,
            issuer=issuer,
            audience=one,
            clock=clock,
            leeway=leeway,
            max_lifetime=MAX_LIFETIME,
        )
        try:
            verified = (await verify(token, keys, rules)).claims
        except TokenInvalidError as exc:
            last = exc
            continue
        missing = [name for name in _REQUIRED_STRINGS if not isinstance(verified.get(name), str) or not verified[name]]
        if missing:
            raise TokenInvalidError(f"{', '.join(missing)} missing")
        return verified
    raise last
