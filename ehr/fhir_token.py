"""The per-call FHIR token for a CDS Service: RFC 8693 token exchange, then RFC 7009 revocation.

CDS Hooks 2.0 §"Passing the Access Token to the CDS Service": the token in `fhirAuthorization`
SHALL be scoped to the invoked service and the current user, short-lived, and the client
SHOULD revoke it when the exchange is over (Argonaut R5, R7, R11, R15, R17). The EHR asks the
authorization server exactly as authserver/token_exchange.py documents:

    POST {authserver}/token
      grant_type=urn:ietf:params:oauth:grant-type:token-exchange
      client_assertion_type=...jwt-bearer, client_assertion=<EHR private_key_jwt, aud = token URL>
      subject_token=<the user's own session access token>   (…:token-type:access_token)
                 or <a user assertion, typ user+jwt, ≤ 60 s>  (…:token-type:jwt)
      cds_service=<the service's client_id>, patient=<id>, resource=<FHIR base>, scope=<approved>

and revokes it at `{authserver}/revoke` (authenticated the same way) once the service answered.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import httpx

from common.clock import Clock, system_clock
from common.errors import MockEhrError
from common.jose import new_jti, sign_jwt
from ehr.client_jwt import SignerSource

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_TYPE_ACCESS = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 - a URN
USER_ASSERTION_TYP = "user+jwt"
CLIENT_ASSERTION_LIFETIME = 60
USER_ASSERTION_LIFETIME = 30  # the authserver accepts ≤ 60 s


class TokenExchangeError(MockEhrError):
    """The authorization server refused (or could not be asked); `reason` is safe to record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ExchangedToken:
    access_token: str
    token_type: str
    expires_in: int
    scope: str
    patient: str | None

    def fhir_authorization(self, subject: str) -> dict[str, Any]:
        """CDS Hooks 2.0 `fhirAuthorization`; `subject` is the service's client_id."""
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
            "subject": subject,
        }
        if self.patient:
            body["patient"] = self.patient
        return body


def _oauth_error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        description = body.get("error_description")
        detail = f": {description}" if isinstance(description, str) and description else ""
        return f"{body['error']}{detail}"[:300]
    return f"HTTP {response.status_code}"


def _unusable(token: ExchangedToken, patient: str) -> str | None:
    """Why an issued token cannot go into `fhirAuthorization`, or None."""
    if token.token_type.lower() != "bearer" or not token.access_token or token.expires_in <= 0:
        return "token exchange answered without a usable bearer token"
    if token.patient is not None and token.patient != patient:
        return "token exchange answered for another patient"
    # CDS Hooks 2.0 §fhirAuthorization: `patient` is REQUIRED whenever patient/ scopes are granted.
    if token.patient is None and any(s.startswith("patient/") for s in token.scope.split()):
        return "token exchange granted patient/ scopes without naming the patient"
    return None


class TokenExchangeClient:
    """Asks the authorization server for per-call tokens and revokes them; one per app lifespan."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        keys: SignerSource,
        *,
        authserver_url: str,
        client_id: str,
        fhir_base_url: str,
        clock: Clock = system_clock,
    ) -> None:
        base = authserver_url.rstrip("/")
        self._http = http
        self._keys = keys
        self.token_url = f"{base}/token"
        self.revocation_url = f"{base}/revoke"
        self._client_id = client_id
        self._fhir_base = fhir_base_url
        self._clock = clock

    async def _signed(self, claims: dict[str, Any], typ: str, *, in_thread: bool = False) -> str:
        signer = await self._keys.signer()
        if in_thread:
            # For one signed ahead while the caller waits on I/O: OpenSSL's ECDSA releases the
            # GIL, so the signature overlaps that wait. In line otherwise (a thread hand-off
            # costs more than it saves when nothing else is waiting: ~0.14 ms vs a 0.23 ms sign).
            return await asyncio.to_thread(sign_jwt, claims, signer, typ=typ)
        return sign_jwt(claims, signer, typ=typ)

    async def client_assertion(self, *, in_thread: bool = False) -> str:
        """RFC 7523 §3 / SMART Backend Services: iss = sub = client_id, aud = the token URL."""
        now = int(self._clock())
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": self.token_url,
            "iat": now,
            "exp": now + CLIENT_ASSERTION_LIFETIME,
            "jti": new_jti(),
        }
        return await self._signed(claims, "JWT", in_thread=in_thread)

    async def user_assertion(self, user_ref: str) -> str:
        """The user as subject when the EHR holds no session token for them (first party only)."""
        now = int(self._clock())
        claims = {
            "iss": self._client_id,
            "sub": user_ref,
            "aud": self.token_url,
            "iat": now,
            "exp": now + USER_ASSERTION_LIFETIME,
            "jti": new_jti(),
        }
        return await self._signed(claims, USER_ASSERTION_TYP)

    async def _client_auth(self) -> dict[str, str]:
        return {"client_assertion_type": JWT_BEARER, "client_assertion": await self.client_assertion()}

    async def exchange(
        self,
        *,
        service_client_id: str,
        patient: str,
        scope: str,
        user_ref: str | None,
        user_token: str | None = None,
    ) -> ExchangedToken:
        """A token for this service, this user and this patient, no wider than `scope`."""
        if user_token:
            subject, subject_type = user_token, TOKEN_TYPE_ACCESS
        elif user_ref:
            subject, subject_type = await self.user_assertion(user_ref), TOKEN_TYPE_JWT
        else:
            raise TokenExchangeError("no user to exchange a token for")
        form = {
            "grant_type": TOKEN_EXCHANGE,
            **await self._client_auth(),
            "subject_token": subject,
            "subject_token_type": subject_type,
            "cds_service": service_client_id,
            "patient": patient,
            "resource": self._fhir_base,
            "scope": scope,
        }
        try:
            response = await self._http.post(self.token_url, data=form, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise TokenExchangeError(f"authorization server unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise TokenExchangeError(f"token exchange refused: {_oauth_error(response)}")
        try:
            body = response.json()
            token = ExchangedToken(
                access_token=str(body["access_token"]),
                token_type=str(body["token_type"]),
                expires_in=int(body["expires_in"]),
                scope=str(body["scope"]),
                patient=str(body["patient"]) if body.get("patient") else None,
            )
        except (ValueError, KeyError, TypeError):
            raise TokenExchangeError("token exchange answered without a usable token") from None
        problem = _unusable(token, patient)
        if problem is not None:
            # The token was issued all the same: it is revoked, never left live unused.
            if token.access_token:
                with contextlib.suppress(TokenExchangeError):
                    await self.revoke(token.access_token)
            raise TokenExchangeError(problem)
        return token

    async def revoke(self, access_token: str, *, client_assertion: str | None = None) -> None:
        """RFC 7009 §2.1: revoke the per-call token (the FHIR server honours it within ~1 s).

        `client_assertion`: one from `client_assertion()` signed ahead (while the service was
        answering) and never used before; without it a fresh one is signed here.
        """
        assertion = client_assertion or await self.client_assertion()
        form = {
            "token": access_token,
            "token_type_hint": "access_token",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
        }
        try:
            response = await self._http.post(self.revocation_url, data=form)
        except httpx.HTTPError as exc:
            raise TokenExchangeError(
                f"revocation failed: authorization server unreachable ({type(exc).__name__})"
            ) from None
        if response.status_code != 200:
            raise TokenExchangeError(f"revocation refused: {_oauth_error(response)}")
