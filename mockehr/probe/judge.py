"""Verdicts: what a response to a check means.

A refusal is a 401 (CDS Hooks 2.0.1 §Security; RFC 6750 §3) or a 403 (a generic refusal, which
the CDS Hooks security guidance also allows), with no card. Everything else is judged so a CI step
can trust a pass:

- 2xx: the service accepted the request: fail. So is a 412 (the service got past authentication
  and found it lacked data); a 412 to the positive control counts as accepted.
- 401/403 with cards in the body: fail (it refused and answered anyway).
- 429: inconclusive (rate limited: whether the token would have been accepted is unknown).
- any other status (3xx, 400, 404, 422, 5xx): fail. The request was identical to the accepted
  positive control except for its credentials, so the service either evaluated it without
  authenticating the caller first or crashed on the credentials; neither is the bare 401 a CDS
  Client expects.
- no response (timeout, connection reset, TLS failure): inconclusive.

An endpoint that answers the correctly signed positive control with 404 is not served (a service
that takes no feedback has no `{service}/feedback`, CDS Hooks 2.0.1 §Feedback): its checks are
"skipped", counted apart from those run, never read as failed attacks (see runner).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["pass", "fail", "inconclusive", "skipped"]
NOT_FOUND = 404

# Words that name the check a token failed (word boundaries; case-insensitive).
_REASON = re.compile(
    r"\b(expired?|expiry|exp|iat|nbf|not yet valid|signature|audience|aud|issuer|iss|algorithms?|alg|"
    r"kid|jti|replay(ed)?|jku|jwks?|jwk|claims?|typ|decode|malformed|hs256|es384|rs384)\b",
    re.IGNORECASE,
)
_STACK = re.compile(
    r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+|\bat [\w$.<>]+\([\w$]+\.(java|kt|scala):\d+\)"
    r"|\bat .+ \(.+\.[cm]?[jt]s:\d+:\d+\)|Exception in thread|\bat [\w.`<>]+\(.*\) in .+:line \d+|node_modules/"
    r"|\.rb:\d+:in `|goroutine \d+ \[",
)
BODY_LIMIT = 65536  # bytes of a response body the probe reads and examines
PRECONDITION_FAILED = 412


@dataclass(frozen=True)
class Exchange:
    """One request the probe sent and what came back."""

    status: int | None
    body: str = ""
    www_authenticate: str = ""
    error: str = ""

    @property
    def accepted(self) -> bool:
        """The service authenticated the caller: a 2xx, or a 412 (CDS Hooks 2.0.1 §HTTP Response:
        the service lacks data it needs, which it can only know after accepting the call). So a
        service that needs FHIR data the probe cannot lend can still be probed."""
        return self.status is not None and (200 <= self.status < 300 or self.status == PRECONDITION_FAILED)

    @property
    def refused(self) -> bool:
        return self.status in (401, 403) and not cards(self.body)

    def describe(self) -> str:
        return f"no response ({self.error})" if self.status is None else f"HTTP {self.status}"


def cards(body: str) -> int:
    """The number of cards in a CDS Hooks response body (0 if it is not one)."""
    try:
        data = json.loads(body)
    except ValueError:
        return 0
    if isinstance(data, dict) and isinstance(data.get("cards"), list):
        return len(data["cards"])
    return 0


def judge_refusal(exchange: Exchange) -> tuple[Verdict, str]:
    status = exchange.status
    if status is None:
        return "inconclusive", exchange.describe()
    n = cards(exchange.body)
    if 200 <= status < 300:
        return "fail", f"accepted: HTTP {status}" + (f" with {n} card(s)" if n else "")
    if status in (401, 403):
        if n:
            return "fail", f"HTTP {status} but {n} card(s) in the body"
        return "pass", f"refused: HTTP {status}"
    if status == 429:
        return "inconclusive", "HTTP 429: rate limited, so the token was not judged"
    if status == PRECONDITION_FAILED:
        return "fail", "HTTP 412: the service accepted the credentials and went on to look for its data"
    if status >= 500:
        return "fail", f"HTTP {status}: the service failed on the credentials instead of refusing them"
    return "fail", f"HTTP {status} instead of 401: the request was processed or refused for another reason"


def judge_acceptance(exchange: Exchange) -> tuple[Verdict, str]:
    if exchange.accepted:
        return "pass", f"accepted: HTTP {exchange.status}"
    if exchange.status is None:
        return "fail", exchange.describe()
    return "fail", f"refused: HTTP {exchange.status}"


def _error_description(www_authenticate: str) -> str:
    match = re.search(r'error_description\s*=\s*"([^"]*)"', www_authenticate)
    return match.group(1) if match else ""


def leaked_reason(exchange: Exchange) -> str | None:
    """A word naming the failed check in the body or in WWW-Authenticate's error_description."""
    for where, text in (("body", exchange.body), ("WWW-Authenticate", _error_description(exchange.www_authenticate))):
        match = _REASON.search(text)
        if match:
            return f"{where} says {match.group(0)!r}"
    return None


def stack_trace(exchange: Exchange) -> str | None:
    match = _STACK.search(exchange.body)
    return f"body contains {match.group(0)[:60]!r}" if match else None


def echoed(exchange: Exchange, secrets: Iterable[str]) -> str | None:
    """Whether the response repeats the token, a part of it (≥ 16 characters) or its jti."""
    haystack = exchange.body + "\n" + exchange.www_authenticate
    for secret in secrets:
        if len(secret) >= 16 and secret in haystack:
            return (
                "the response repeats the token" if secret.count(".") == 2 else "the response repeats part of the token"
            )
    return None


def token_parts(authorization: str | None) -> list[str]:
    """What must never come back: the token, its segments and its jti."""
    if not authorization:
        return []
    _, _, token = authorization.partition(" ")
    segments = token.split(".")
    parts = [token, *segments]
    if len(segments) == 3:
        try:
            claims = json.loads(base64.urlsafe_b64decode(segments[1] + "=" * (-len(segments[1]) % 4)))
        except ValueError:
            claims = None
        if isinstance(claims, dict) and isinstance(claims.get("jti"), str):
            parts.append(claims["jti"])
    return [p for p in parts if p]
