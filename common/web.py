"""Small response helpers shared by the services."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from common.keys import KeyStore

JWK_SET_MEDIA_TYPE = "application/jwk-set+json"  # RFC 7517 §8.5.1


async def jwks_response(keys: KeyStore | None) -> JSONResponse:
    """The public JWK Set of a signing service: the active key and keys still in their overlap."""
    if keys is None:
        raise RuntimeError("this service has no signing keys")
    return JSONResponse(
        await keys.jwks(),
        media_type=JWK_SET_MEDIA_TYPE,
        headers={"Cache-Control": "public, max-age=60"},
    )
