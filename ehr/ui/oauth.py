"""The UI's side of OAuth at the authorization server, as the confidential client `ehr`.

- Sign-in: authorization code + PKCE S256 (RFC 7636; RFC 9700 §2.1.1), `state` bound to the
  browser by an encrypted cookie, `nonce`, and `iss` checked on the way back (RFC 9207).
- The code is redeemed with private_key_jwt (RFC 7523 §2.2: `iss` = `sub` = client_id, `aud` =
  the token endpoint, short `exp`, a fresh `jti`), signed with the EHR's current key.
- The id_token is verified (OpenID Connect Core §3.1.3.7: signature against the authserver's
  JWKS, `iss`, `aud` = ehr, `exp`, `nonce`); its `fhirUser` names the user.
- Refresh (rotation: each refresh token is used once) and revocation at sign-out (RFC 7009).
- EHR launch: `POST /launch` registers a SMART launch context (authserver/launch.py).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from common.clock import Clock
from common.errors import TokenInvalidError
from common.jose import new_jti, sign_jwt
from common.jwks import JwksCache
from common.jwt_verify import JwtRules, verify
from common.keys import ALGORITHMS, KeyStore
from ehr.ui.config import CLIENT_ID, SCOPE, UiConfig

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 60
log = logging.getLogger(__name__)


class OAuthFailure(Exception):
    """The authorization server refused or could not be reached; the message is for the user."""


@dataclass(frozen=True)
class Tokens:
    access_token: str
    expires_at: int
    refresh_token: str | None
    id_claims: dict[str, Any]


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class AuthClient:
    def __init__(self, config: UiConfig, http: httpx.AsyncClient, keys: KeyStore, clock: Clock) -> None:
        self.config = config
        self.http = http
        self.keys = keys
        self.clock = clock
        self.jwks = JwksCache(http, config.jwks_url, clock=clock)

    def authorize_url(self, state: str, verifier: str, nonce: str) -> str:
        params = {
            "response_type": "code",
            "client_id": CLIENT_ID,
            "redirect_uri": self.config.redirect_uri,
            "scope": SCOPE,
            "state": state,
            "aud": self.config.fhir_base_url,
            "nonce": nonce,
            "code_challenge": s256(verifier),
            "code_challenge_method": "S256",
        }
        return f"{self.config.authorize_url}?{urlencode(params)}"

    async def assertion(self) -> dict[str, str]:
        now = int(self.clock())
        claims = {
            "iss": CLIENT_ID,
            "sub": CLIENT_ID,
            "aud": self.config.token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
            "jti": new_jti(),
        }
        key = await self.keys.signer()
        return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": sign_jwt(claims, key, typ="JWT")}

    async def _post(self, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self.http.post(url, headers={"Accept": "application/json"}, **kwargs)
            body = response.json()
        except (httpx.HTTPError, ValueError):
            raise OAuthFailure("The authorization server could not be reached.") from None
        if response.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            log.info("authorization server answered %s (%s)", response.status_code, error)
            raise OAuthFailure(f"The authorization server refused the request ({error or response.status_code}).")
        return body

    def _tokens(self, body: dict[str, Any], id_claims: dict[str, Any]) -> Tokens:
        access = body.get("access_token")
        expires_in = body.get("expires_in")
        if not isinstance(access, str) or not isinstance(expires_in, int):
            raise OAuthFailure("The authorization server's answer lacks an access token.")
        refresh = body.get("refresh_token")
        return Tokens(access, int(self.clock()) + expires_in, refresh if isinstance(refresh, str) else None, id_claims)

    async def redeem(self, code: str, verifier: str, nonce: str) -> Tokens:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.config.redirect_uri,
            "code_verifier": verifier,
            **(await self.assertion()),
        }
        body = await self._post(self.config.token_url, data=form)
        claims = await self.verify_id_token(body.get("id_token"), nonce)
        return self._tokens(body, claims)

    async def verify_id_token(self, id_token: object, nonce: str) -> dict[str, Any]:
        if not isinstance(id_token, str):
            raise OAuthFailure("The authorization server sent no identity token.")
        rules = JwtRules(
            algorithms=ALGORITHMS,
            typ="JWT",
            issuer=self.config.authserver_url,
            audience=CLIENT_ID,
            clock=self.clock,
            require=("exp", "iat"),
        )
        try:
            verified = await verify(id_token, self.jwks.key_set, rules)
        except TokenInvalidError as exc:
            log.warning("id_token refused: %s", exc)
            raise OAuthFailure("The identity token could not be verified.") from None
        if verified.claims.get("nonce") != nonce:
            raise OAuthFailure("The identity token does not answer this sign-in.")
        return verified.claims

    async def refresh(self, refresh_token: str) -> Tokens:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token, **(await self.assertion())}
        return self._tokens(await self._post(self.config.token_url, data=form), {})

    async def revoke(self, token: str, hint: str) -> None:
        form = {"token": token, "token_type_hint": hint, **(await self.assertion())}
        try:
            await self.http.post(self.config.authserver_url + "/revoke", data=form)
        except httpx.HTTPError:
            log.warning("revocation at sign-out failed; the token expires on its own")

    async def register_launch(self, body: dict[str, Any]) -> str:
        """SMART EHR launch: the opaque `launch` value for this context (authserver POST /launch)."""
        answer = await self._post(self.config.authserver_url + "/launch", json={**body, **(await self.assertion())})
        launch = answer.get("launch")
        if not isinstance(launch, str):
            raise OAuthFailure("The authorization server did not register the launch.")
        return launch

    async def disable_client(self, admin_token: str, client_id: str) -> bool:
        try:
            response = await self.http.post(
                f"{self.config.authserver_url}/admin/clients/{client_id}/disable",
                headers={"Authorization": f"Bearer {admin_token}"},
            )
        except httpx.HTTPError:
            raise OAuthFailure("The authorization server could not be reached.") from None
        return response.status_code == 204
