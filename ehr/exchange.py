"""The vocabulary of one CDS Hooks exchange, shared by the engine (which runs it) and the registry,
API and exchange log (which configure, trigger and record it).

A *hook call* is one firing of a hook for one user and patient (one `hookInstance`); it fans out to
every allow-listed service registered for that hook, each of which yields a *service result*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ResultStatus = Literal["ok", "error"]


@dataclass(frozen=True)
class ServiceConfig:
    """One allow-listed CDS Service as the administrator approved it (CDS Hooks 2.0 §Discovery).

    `url` is the exact service endpoint `{discovery base}/{id}`; `prefetch` holds only the
    approved templates (minimum necessary, Argonaut R13); `client_id` is the service's OAuth
    client at the authorization server (it becomes `fhirAuthorization.subject`).
    """

    service_id: str  # the EHR's key for this service (unique across discovery endpoints)
    cds_id: str  # the `id` the service announced in discovery
    hook: str
    url: str
    discovery_url: str
    client_id: str
    scope: str  # approved scopes, space separated
    prefetch: dict[str, str] = field(default_factory=dict)
    deadline_seconds: float = 5.0
    allow_system_actions: bool = False
    # Plain http only by an explicit, loopback-only, per-service opt-in.
    allow_http_loopback: bool = False
    # Optional mutual TLS: the EHR presents this client certificate to the service.
    client_cert_file: str | None = None
    client_key_file: str | None = None
    enabled: bool = True
    title: str = ""


@dataclass(frozen=True)
class HookCall:
    """One firing of a hook: who, for whom, with what context (already validated for the hook)."""

    hook: str
    hook_instance: str  # a fresh UUID4 per firing, never reused (R3)
    user_ref: str | None  # "Practitioner/<id>" (None for hooks without a user, e.g. order-dispatch)
    patient_id: str
    context: dict[str, Any]


@dataclass
class Timings:
    """Milliseconds spent per phase of one service's exchange (None: the phase did not run)."""

    token_ms: float | None = None
    prefetch_ms: float | None = None
    call_ms: float | None = None
    revoke_ms: float | None = None
    total_ms: float | None = None


@dataclass
class DroppedCard:
    index: int
    reason: str


@dataclass
class ServiceResult:
    """What one service's exchange produced, and the record kept of it (secrets redacted)."""

    service_id: str
    status: ResultStatus
    reason: str | None = None  # why the service yielded no cards (status "error")
    http_status: int | None = None
    cards: list[dict[str, Any]] = field(default_factory=list)  # validated, sanitized cards
    system_actions: list[dict[str, Any]] = field(default_factory=list)
    # What became of the systemActions (None: the service sent none): {"applied": False,
    # "reason": ...} when refused, {"applied": True, "transaction": [...]} once written.
    system_actions_result: dict[str, Any] | None = None
    dropped: list[DroppedCard] = field(default_factory=list)
    # What was changed or left out without failing the exchange: links removed from cards,
    # prefetch keys omitted, systemActions dropped (each a short sentence).
    notes: list[str] = field(default_factory=list)
    request: dict[str, Any] | None = None  # the request body as sent, with secrets redacted
    response: Any = None  # the response body as received (parsed JSON or a truncated text)
    timings: Timings = field(default_factory=Timings)
    token_scope: str | None = None  # the scope granted to fhirAuthorization


@dataclass
class HookOutcome:
    call: HookCall
    results: list[ServiceResult]
    started_at: float = 0.0
    total_ms: float = 0.0
