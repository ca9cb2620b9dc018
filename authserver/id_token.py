"""OpenID Connect id_token for SMART's `openid fhirUser` (SMART App Launch 2.2 "Scopes for
requesting identity data"; OpenID Connect Core 1.0 §2 and §3.1.3.6).

Claims: iss (this server's base URL, the OIDC issuer), sub (the username), aud (the client_id),
iat, exp, jti, auth_time (when the user signed in), nonce (when the app sent one), at_hash (left
half of the access token's hash, with the hash of the signing algorithm), fhirUser (only with the
`fhirUser` scope: the absolute URL of the user's Practitioner or Patient resource) and name (only
with `profile`). Header typ `JWT` — never the access-token typ of common/access_token.py, so it
cannot pass for an access token at the FHIR server — signed with the authorization server's current key via common.jose.
"""

from __future__ import annotations

import base64
import hashlib

from authserver.users import User
from common.jose import new_jti, sign_jwt
from common.keys import KeyStore

ID_TOKEN_TYP = "JWT"  # noqa: S105 - a media type, not a secret
_HASH_FOR_ALG = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}


def at_hash(access_token: str, alg: str) -> str:
    """OIDC Core §3.1.3.6: base64url of the left half of the hash of the access token's ASCII."""
    digest = _HASH_FOR_ALG[alg[-3:]](access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()


async def make_id_token(
    keys: KeyStore,
    *,
    issuer: str,
    fhir_base: str,
    user: User,
    client_id: str,
    nonce: str | None,
    auth_time: int,
    access_token: str,
    now: int,
    lifetime: int,
    with_fhir_user: bool,
    with_profile: bool,
) -> str:
    signer = await keys.signer()
    claims: dict[str, object] = {
        "iss": issuer,
        "sub": user.username,
        "aud": client_id,
        "iat": now,
        "exp": now + lifetime,
        "jti": new_jti(),
        "auth_time": auth_time,
        "at_hash": at_hash(access_token, signer.alg),
    }
    if nonce:
        claims["nonce"] = nonce
    if with_fhir_user:
        claims["fhirUser"] = f"{fhir_base.rstrip('/')}/{user.fhir_user}"
    if with_profile:
        claims["name"] = user.display
    return sign_jwt(claims, signer, typ=ID_TOKEN_TYP)
