"""The exchange log: every service's part of every hook firing, kept for the developer whose
service was called (issue 5 §6) and as the record a suggestion or feedback is checked against.

Stored: hookInstance, hook, service, user, patient, status and reason, the HTTP status, the
request as sent with secrets redacted, the response as received, the validated cards and
systemActions and what applying them did (written or refused, and why), why cards were dropped,
and the timings of token / prefetch / call / revoke. The exchange's JSON adds the user's decisions
on its cards (accepted / overridden, how the card was named, whether feedback was sent).
Never stored: the `fhirAuthorization.access_token`, the EHR's JWT, or anything else shaped like
a credential — redaction runs here again whatever the engine already did.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ehr.exchange import HookOutcome, ServiceResult
from ehr.models import CdsCardOutcomeRow, CdsExchangeRow

REDACTED = "[redacted]"
SECRET_KEYS = frozenset(
    {"access_token", "refresh_token", "id_token", "authorization", "client_secret", "client_assertion", "password"}
)
# Three base64url segments: a JWS compact serialization (the EHR's JWT, an access token).
JWT_SHAPED = re.compile(r"^[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+$")
MAX_STORED_CHARS = 1024 * 1024


def redact(value: Any) -> Any:
    """A copy of `value` with credentials replaced, at any depth."""
    if isinstance(value, dict):
        return {k: REDACTED if str(k).lower() in SECRET_KEYS else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and JWT_SHAPED.match(value):
        return REDACTED
    return value


def _dump(value: Any) -> str:
    text = json.dumps(redact(value), separators=(",", ":"), default=str)
    if len(text) > MAX_STORED_CHARS:
        return json.dumps({"truncated": True, "text": text[:MAX_STORED_CHARS]})
    return text


def _row(outcome: HookOutcome, result: ServiceResult, now: int) -> CdsExchangeRow:
    call = outcome.call
    return CdsExchangeRow(
        hook_instance=call.hook_instance,
        hook=call.hook,
        service_id=result.service_id,
        user_ref=call.user_ref,
        patient_id=call.patient_id,
        status=result.status,
        reason=result.reason,
        http_status=result.http_status,
        request=_dump(result.request) if result.request is not None else None,
        response=_dump(result.response) if result.response is not None else None,
        cards=_dump(result.cards),
        system_actions=_dump(result.system_actions),
        system_actions_result=_dump(result.system_actions_result) if result.system_actions_result else None,
        dropped=_dump([asdict(d) for d in result.dropped]),
        notes=_dump(result.notes),
        timings=_dump(asdict(result.timings)),
        token_scope=result.token_scope,
        total_ms=result.timings.total_ms,
        created_at=now,
    )


async def record(sessions: async_sessionmaker[AsyncSession], outcome: HookOutcome, now: int) -> None:
    """Store one row per service result of a hook firing (a hookInstance is never reused)."""
    if not outcome.results:
        return
    try:
        async with sessions() as session, session.begin():
            session.add_all([_row(outcome, r, now) for r in outcome.results])
    except IntegrityError:
        # A hookInstance is a fresh UUID4 per firing (R3); a duplicate is a bug worth failing on.
        raise RuntimeError("hookInstance recorded twice") from None


async def record_system_actions(
    sessions: async_sessionmaker[AsyncSession], hook_instance: str, service_id: str, applied: dict[str, Any]
) -> None:
    """Add to a recorded exchange what applying its systemActions did: the transaction-response
    entries (status, location) as written, or why nothing was (CDS Hooks 2.0 §systemActions)."""
    async with sessions() as session, session.begin():
        query = select(CdsExchangeRow).where(
            CdsExchangeRow.hook_instance == hook_instance, CdsExchangeRow.service_id == service_id
        )
        row = (await session.execute(query)).scalar_one_or_none()
        if row is not None:
            row.system_actions_result = _dump(applied)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def summary_json(row: CdsExchangeRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "hookInstance": row.hook_instance,
        "hook": row.hook,
        "serviceId": row.service_id,
        "userId": row.user_ref,
        "patientId": row.patient_id,
        "status": row.status,
        "reason": row.reason,
        "httpStatus": row.http_status,
        "cardCount": len(json.loads(row.cards)),
        "droppedCount": len(json.loads(row.dropped)),
        "timings": json.loads(row.timings),
        "createdAt": row.created_at,
    }


def detail_json(row: CdsExchangeRow) -> dict[str, Any]:
    return {
        "serviceId": row.service_id,
        "status": row.status,
        "reason": row.reason,
        "httpStatus": row.http_status,
        "request": _load(row.request),
        "response": _load(row.response),
        "cards": json.loads(row.cards),
        "systemActions": json.loads(row.system_actions),
        "systemActionsResult": _load(row.system_actions_result),
        "dropped": json.loads(row.dropped),
        "notes": json.loads(row.notes),
        "timings": json.loads(row.timings),
        "tokenScope": row.token_scope,
        "createdAt": row.created_at,
    }


async def list_exchanges(
    sessions: async_sessionmaker[AsyncSession],
    *,
    user_ref: str | None = None,
    patient_id: str | None = None,
    service_id: str | None = None,
    hook: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Newest first; `before` (an id) pages back. `user_ref` restricts to one user's firings."""
    query = select(CdsExchangeRow)
    if user_ref is not None:
        query = query.where(CdsExchangeRow.user_ref == user_ref)
    if patient_id is not None:
        query = query.where(CdsExchangeRow.patient_id == patient_id)
    if service_id is not None:
        query = query.where(CdsExchangeRow.service_id == service_id)
    if hook is not None:
        query = query.where(CdsExchangeRow.hook == hook)
    if before is not None:
        query = query.where(CdsExchangeRow.id < before)
    query = query.order_by(CdsExchangeRow.id.desc()).limit(limit)
    async with sessions() as session:
        return [summary_json(r) for r in (await session.execute(query)).scalars()]


async def exchange_rows(sessions: async_sessionmaker[AsyncSession], hook_instance: str) -> list[CdsExchangeRow]:
    async with sessions() as session:
        query = select(CdsExchangeRow).where(CdsExchangeRow.hook_instance == hook_instance)
        return list((await session.execute(query.order_by(CdsExchangeRow.service_id))).scalars())


async def card_decisions(sessions: async_sessionmaker[AsyncSession], hook_instance: str) -> dict[str, list[Any]]:
    """The decisions recorded on an exchange's cards, per service, oldest first."""
    query = select(CdsCardOutcomeRow).where(CdsCardOutcomeRow.hook_instance == hook_instance)
    found: dict[str, list[Any]] = {}
    async with sessions() as session:
        for row in (await session.execute(query.order_by(CdsCardOutcomeRow.id))).scalars():
            found.setdefault(row.service_id, []).append(
                {
                    "card": row.card_uuid,
                    "outcome": row.outcome,
                    "suggestion": row.suggestion_uuid,
                    "detail": json.loads(row.detail),
                    "feedback": {"status": row.feedback_status, "error": row.feedback_error},
                    "createdAt": row.created_at,
                }
            )
    return found


def exchange_json(rows: list[CdsExchangeRow], decisions: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    first = rows[0]
    decisions = decisions or {}
    return {
        "hookInstance": first.hook_instance,
        "hook": first.hook,
        "userId": first.user_ref,
        "patientId": first.patient_id,
        "createdAt": first.created_at,
        "services": [{**detail_json(r), "decisions": decisions.get(r.service_id, [])} for r in rows],
    }
