"""CDS Hooks 2.0 §Feedback: telling a service what the user did with its card.

`POST {service url}/feedback` with a fresh CDS Client JWT whose `aud` is that feedback URL, body

    {"feedback": [{"card": <card uuid>, "outcome": "accepted" | "overridden",
                   "acceptedSuggestions": [{"id": <suggestion uuid>}],          (accepted)
                   "overrideReason": {"reason": <Coding>, "userComment": "..."}, (overridden)
                   "outcomeTimestamp": <ISO 8601 instant>}]}

Only cards with a uuid get feedback (nothing is sent for ignored cards): the spec names a card
by its uuid, so a decision on a card without one is recorded with NO_UUID and nothing is sent. A
suggestion without a uuid cannot be named in `acceptedSuggestions`, which is then empty. The call is made once,
not retried, never follows a redirect, and its answer is recorded with the card's outcome.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from common.clock import Clock
from common.http import check_outbound_url
from ehr.client_jwt import ClientJwtSigner
from ehr.discovery import ClientCertificate, mtls_context
from ehr.errors import ApiError


@dataclass(frozen=True)
class FeedbackTarget:
    service_url: str
    allow_http_loopback: bool = False
    client_cert_file: str | None = None
    client_key_file: str | None = None

    @property
    def url(self) -> str:
        return f"{self.service_url.rstrip('/')}/feedback"


@dataclass(frozen=True)
class Delivery:
    status: int | None  # the service's HTTP status, None when it could not be reached
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.error, "delivered": self.error is None}


# CDS Hooks 2.0 §Feedback: `card` is the card's uuid, which the spec makes optional.
NO_UUID = Delivery(None, "no feedback could be sent: the card has no uuid (CDS Hooks 2.0 §Feedback names a card by it)")


def timestamp(clock: Clock) -> str:
    return dt.datetime.fromtimestamp(clock(), tz=dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def accepted_entry(card_uuid: str, suggestion_uuids: list[str], clock: Clock) -> dict[str, Any]:
    return {
        "card": card_uuid,
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": s} for s in suggestion_uuids],
        "outcomeTimestamp": timestamp(clock),
    }


def overridden_entry(
    card_uuid: str, reason: dict[str, Any] | None, comment: str | None, clock: Clock
) -> dict[str, Any]:
    entry: dict[str, Any] = {"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": timestamp(clock)}
    override: dict[str, Any] = {}
    if reason is not None:
        override["reason"] = reason
    if comment:
        override["userComment"] = comment
    if override:
        entry["overrideReason"] = override
    return entry


class FeedbackSender:
    def __init__(self, http: httpx.AsyncClient, signer: ClientJwtSigner, *, ca_file: Path | None) -> None:
        self._http = http
        self._signer = signer
        self._ca_file = ca_file

    def _tls(self, target: FeedbackTarget) -> ssl.SSLContext | None:
        if target.client_cert_file and target.client_key_file:
            try:
                cert = ClientCertificate(Path(target.client_cert_file), Path(target.client_key_file))
                return mtls_context(self._ca_file, cert)
            except ApiError:
                return None
        return None

    async def send(self, target: FeedbackTarget, entries: list[dict[str, Any]]) -> Delivery:
        url = target.url
        try:
            check_outbound_url(url, allow_loopback_http=target.allow_http_loopback)
        except ValueError:
            return Delivery(None, "the feedback URL is not https")
        headers = {"Content-Type": "application/json", **(await self._signer.authorization(url))}
        body = {"feedback": entries}
        try:
            if target.client_cert_file and target.client_key_file:
                ctx = self._tls(target)
                if ctx is None:
                    return Delivery(None, "the client certificate for mutual TLS cannot be loaded")
                async with httpx.AsyncClient(
                    verify=ctx, timeout=self._http.timeout, follow_redirects=False, trust_env=False
                ) as http:
                    status = await _post_status(http, url, body, headers)
            else:
                status = await _post_status(self._http, url, body, headers)
        except httpx.HTTPError as exc:
            return Delivery(None, f"the service could not be reached ({type(exc).__name__})")
        if 200 <= status < 300:
            return Delivery(status)
        return Delivery(status, f"the service answered HTTP {status}")


async def _post_status(http: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]) -> int:
    """POST and return only the status: the answer's body is never read, so a service cannot
    make the EHR hold an unbounded feedback answer in memory."""
    async with http.stream("POST", url, json=body, headers=headers) as response:
        return response.status_code
