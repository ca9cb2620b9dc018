"""Writing to the FHIR server as the user, inside one patient's compartment.

What the user accepts (a card's suggestion) and what an allowed service asks the EHR to do
(systemActions) is applied with the user's authority, never the EHR's own: the EHR exchanges
the user's credential for a token for itself bound to that user and that patient (RFC 8693 token
exchange without `cds_service`; `patient/` scopes narrowed to the user's role at the
authserver), sends one FHIR transaction with it, and revokes it (RFC 7009). The FHIR server's
guard then keeps every entry inside the patient's compartment.

The user's credential is the UI session's own access token when there is one (subject token
type access_token), otherwise a user assertion the EHR signs (`typ` user+jwt, ≤ 60 s, fresh
jti) — the admin API path, where the administrator names the user.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from ehr.errors import Forbidden, UpstreamFailed
from ehr.fhir_token import (
    JWT_BEARER,
    TOKEN_EXCHANGE,
    TOKEN_TYPE_ACCESS,
    TOKEN_TYPE_JWT,
    TokenExchangeClient,
    TokenExchangeError,
)

WRITE_SCOPE = "patient/*.cruds"


class TransactionOutcomeUnknown(UpstreamFailed):
    """The transaction was sent but no answer came back: it may or may not have been applied."""


class UserFhir:
    def __init__(self, http: httpx.AsyncClient, tokens: TokenExchangeClient, *, fhir_base_url: str) -> None:
        self._http = http
        self._tokens = tokens
        self._fhir = fhir_base_url.rstrip("/")

    async def _token(self, user_ref: str, patient_id: str, session_token: str | None) -> str:
        if session_token:
            subject = {"subject_token": session_token, "subject_token_type": TOKEN_TYPE_ACCESS}
        else:
            assertion = await self._tokens.user_assertion(user_ref)
            subject = {"subject_token": assertion, "subject_token_type": TOKEN_TYPE_JWT}
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": await self._tokens.client_assertion(),
            # No cds_service: a token for the EHR itself, as this user, for this patient.
            "patient": patient_id,
            "resource": self._fhir,
            "scope": WRITE_SCOPE,
            **subject,
        }
        try:
            response = await self._http.post(self._tokens.token_url, data=form)
        except httpx.HTTPError as exc:
            raise UpstreamFailed(f"the authorization server is unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            error = _oauth_error(response)
            if error in ("invalid_grant", "invalid_scope"):
                raise Forbidden("the user may not change this patient's record")
            raise UpstreamFailed(f"the authorization server refused a token for the user ({error})")
        try:
            return str(response.json()["access_token"])
        except (ValueError, KeyError, TypeError):
            raise UpstreamFailed("the authorization server answered without a token") from None

    @asynccontextmanager
    async def as_user(self, user_ref: str, patient_id: str, session_token: str | None) -> AsyncIterator[str]:
        """A token for the EHR acting as `user_ref` for `patient_id`, revoked on exit."""
        token = await self._token(user_ref, patient_id, session_token)
        try:
            yield token
        finally:
            # The token lives ≤ 300 s; a failed revocation leaves it to expire.
            with contextlib.suppress(TokenExchangeError):
                await self._tokens.revoke(token)

    async def transaction(self, token: str, bundle: dict[str, Any]) -> tuple[int, Any]:
        """POST a transaction Bundle to the FHIR base; returns (HTTP status, parsed body)."""
        try:
            response = await self._http.post(
                self._fhir,
                json=bundle,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/fhir+json",
                    "Accept": "application/fhir+json",
                },
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # Never connected: nothing was sent, so nothing was applied.
            raise UpstreamFailed(f"the FHIR server is unreachable ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            # Sent (at least in part) and the answer lost: the FHIR server may have committed it.
            raise TransactionOutcomeUnknown(
                f"the FHIR server's answer to the transaction was lost ({type(exc).__name__}); "
                "it may have been applied: check the record before acting again"
            ) from None
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        return response.status_code, body


def _oauth_error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.status_code))
    except (ValueError, AttributeError):
        return str(response.status_code)
