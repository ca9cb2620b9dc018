"""The EHR's CDS Client JWT (CDS Hooks 2.0, "Trusting CDS Clients").

Every request the EHR makes to a CDS Service — discovery, a hook call, feedback — carries
`Authorization: Bearer <JWT>` signed with the EHR's current key. Header: `alg` (the key's
algorithm: ES384 by default, RS384 as an option; never `none` or HMAC), `kid` (the RFC 7638
thumbprint, unique in the JWKS), `typ` = `JWT`, `jku` = the EHR's JWKS URL (3.0 recommends it).
Claims: `iss` = the EHR's base URL, `aud` = the exact URL being called, `iat`, `exp` (at most
five minutes ahead), a fresh random `jti` per request, and `tenant` when configured. The spec
dropped `sub` in 2018, so none is sent.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from common.clock import Clock, system_clock
from common.jose import new_jti, sign_jwt
from common.keys import SigningKey

# CDS Hooks 2.0: "exp ... SHALL be no more than 5 minutes in the future".
MAX_LIFETIME_SECONDS = 300
CLIENT_JWT_TYP = "JWT"


class SignerSource(Protocol):
    """Where the current signing key comes from (common.keys.KeyStore in the app)."""

    async def signer(self) -> SigningKey: ...


class ClientJwtSigner:
    """Signs CDS Client JWTs; one per app lifespan, one fresh JWT per outbound request."""

    def __init__(
        self,
        keys: SignerSource,
        *,
        issuer: str,
        jwks_url: str,
        lifetime_seconds: int = 60,
        tenant: str | None = None,
        clock: Clock = system_clock,
    ) -> None:
        if not 0 < lifetime_seconds <= MAX_LIFETIME_SECONDS:
            raise ValueError(f"CDS client JWT lifetime must be 1..{MAX_LIFETIME_SECONDS} s")
        if not issuer or not jwks_url:
            raise ValueError("CDS client JWT needs an issuer and a JWKS URL")
        self._keys = keys
        self._issuer = issuer
        self._jwks_url = jwks_url
        self._lifetime = lifetime_seconds
        self._tenant = tenant
        self._clock = clock

    @property
    def issuer(self) -> str:
        return self._issuer

    @property
    def jwks_url(self) -> str:
        return self._jwks_url

    def claims(self, audience: str) -> dict[str, Any]:
        """The claims for one request to `audience` (the exact URL called)."""
        if not audience:
            raise ValueError("the CDS client JWT needs the exact URL called as aud")
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": audience,
            "iat": now,
            "exp": now + self._lifetime,
            "jti": new_jti(),
        }
        if self._tenant:
            claims["tenant"] = self._tenant
        return claims

    async def sign(self, audience: str, *, in_thread: bool = False) -> str:
        """A fresh JWT whose `aud` is `audience`; never reuse it for another request.

        `in_thread`: for one signed ahead while the caller waits on I/O (the engine signs during
        the prefetch queries); OpenSSL's ECDSA releases the GIL, so the signature overlaps that
        wait. In line otherwise: a thread hand-off costs more than it saves when nothing waits.
        """
        key = await self._keys.signer()
        claims = self.claims(audience)
        header = {"jku": self._jwks_url}
        if in_thread:
            return await asyncio.to_thread(sign_jwt, claims, key, typ=CLIENT_JWT_TYP, extra_header=header)
        return sign_jwt(claims, key, typ=CLIENT_JWT_TYP, extra_header=header)

    async def authorization(self, audience: str) -> dict[str, str]:
        """The `Authorization` header for one request to `audience`."""
        return {"Authorization": f"Bearer {await self.sign(audience)}"}
