"""Acting on cards: accepting a suggestion, overriding a card, applying allowed systemActions.

CDS Hooks 2.0 §Suggestion / §Action: a suggestion's actions (create, update, delete) are applied
together as ONE FHIR transaction (all or nothing), as the user, inside the patient's compartment
(ehr/user_fhir.py); then `accepted` feedback goes to the service (ehr/feedback.py).

Only what the EHR itself recorded can be acted on: the card is looked up by uuid in the logged,
validated response of that hookInstance and service, and the suggestion by uuid inside it, so
a forged card or suggestion (or one of another user's exchange) is refused. `uuid` is optional
on both (CDS Hooks 2.0 §Card, §Suggestion): one without is named by its position in the recorded
card list / suggestion list instead — and only one without, so a uuid is never bypassed — and
the decision records "identified by position; no uuid". A card without uuid gets no feedback
(ehr/feedback.py NO_UUID); its decision is keyed by `position_key`. A card gets one
decision, recorded before anything is applied, so a suggestion is never applied twice. The
claim is released only when nothing can have been written (the token was refused, the FHIR
server was never reached, or it answered the atomic transaction with an error); when the answer
is lost after sending, the decision stays, recorded as of unknown outcome, and no feedback is sent.

A delete of one of that hook call's draft orders (its recorded `context.draftOrders`) is not sent
to the FHIR server, which never stored the draft: it is recorded as "draft discarded" (the
ordering UI drops the draft), the other actions are applied and `accepted` feedback still goes.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.clock import Clock
from ehr.errors import ApiError, Conflict, Forbidden, InvalidRequest, NotFound, UpstreamFailed
from ehr.exchange_log import exchange_rows
from ehr.feedback import NO_UUID, Delivery, FeedbackSender, FeedbackTarget, accepted_entry, overridden_entry
from ehr.models import CdsCardOutcomeRow, CdsExchangeRow, CdsServiceRow
from ehr.principal import Principal
from ehr.user_fhir import TransactionOutcomeUnknown, UserFhir

MAX_ACTIONS = 100
_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _reference(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidRequest("a delete action's resourceId must be a relative reference Type/id")
    kind, _, ident = value.partition("/")
    if not _TYPE.fullmatch(kind) or not _ID.fullmatch(ident):
        raise InvalidRequest(f"a delete action's resourceId must be a relative reference Type/id, not {value!r}")
    return value


def _resource(action: dict[str, Any]) -> dict[str, Any]:
    resource = action.get("resource")
    if not isinstance(resource, dict) or not _TYPE.fullmatch(str(resource.get("resourceType", ""))):
        raise InvalidRequest(f"a {action.get('type')} action needs a FHIR resource")
    return resource


def transaction_bundle(actions: list[dict[str, Any]]) -> dict[str, Any]:
    """The transaction Bundle applying `actions` (CDS Hooks 2.0 §Action) all or nothing."""
    if len(actions) > MAX_ACTIONS:
        raise InvalidRequest(f"more than {MAX_ACTIONS} actions")
    entries: list[dict[str, Any]] = []
    for action in actions:
        kind = action.get("type")
        if kind == "create":
            resource = {k: v for k, v in _resource(action).items() if k not in ("id", "meta")}
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                    "resource": resource,
                    "request": {"method": "POST", "url": resource["resourceType"]},
                }
            )
        elif kind == "update":
            resource = _resource(action)
            ident = resource.get("id")
            if not isinstance(ident, str) or not _ID.fullmatch(ident):
                raise InvalidRequest("an update action's resource needs its id")
            entries.append(
                {"resource": resource, "request": {"method": "PUT", "url": f"{resource['resourceType']}/{ident}"}}
            )
        elif kind == "delete":
            targets = action.get("resourceId")
            for target in targets if isinstance(targets, list) else [targets]:
                entries.append({"request": {"method": "DELETE", "url": _reference(target)}})
        else:
            raise InvalidRequest(f"unknown action type {kind!r}")
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def draft_orders(recorded_request: str | None) -> frozenset[str]:
    """`Type/id` of the draft orders a hook call carried (order-select / order-sign
    `context.draftOrders`, CDS Hooks 2.0), read from the request as the EHR recorded it.

    Drafts live in the ordering UI until signed; the FHIR server has never stored them."""
    try:
        request = json.loads(recorded_request) if recorded_request else None
    except ValueError:
        return frozenset()
    context = request.get("context") if isinstance(request, dict) else None
    bundle = context.get("draftOrders") if isinstance(context, dict) else None
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    found: set[str] = set()
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and isinstance(resource.get("id"), str):
            found.add(f"{resource.get('resourceType')}/{resource['id']}")
    return frozenset(found)


def without_drafts(actions: list[dict[str, Any]], drafts: frozenset[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The actions minus deletes of unsigned drafts, and the drafts so discarded.

    Deleting a draft means discarding it where it lives (the ordering UI); a DELETE sent to the
    FHIR server for it would change nothing there, so none is sent."""
    kept: list[dict[str, Any]] = []
    discarded: list[str] = []
    for action in actions:
        targets = action.get("resourceId")
        if action.get("type") != "delete" or not drafts:
            kept.append(action)
            continue
        targets = targets if isinstance(targets, list) else [targets]
        discarded += [t for t in targets if t in drafts]
        stored = [t for t in targets if t not in drafts]
        if stored:
            kept.append({**action, "resourceId": stored})
    return kept, discarded


def transaction_summary(body: Any) -> list[dict[str, Any]]:
    entries = body.get("entry", []) if isinstance(body, dict) else []
    summary: list[dict[str, Any]] = []
    for entry in entries:
        response = entry.get("response", {}) if isinstance(entry, dict) else {}
        summary.append({k: response[k] for k in ("status", "location", "etag") if k in response})
    return summary


def _outcome_message(status: int, body: Any) -> str:
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        issues = body.get("issue") or [{}]
        text = issues[0].get("diagnostics") or issues[0].get("details", {}).get("text") or issues[0].get("code")
        if text:
            return f"the FHIR server refused the transaction ({status}): {text}"
    return f"the FHIR server refused the transaction ({status})"


BY_POSITION = "identified by position; no uuid"


def position_key(cards: list[Any], index: int) -> str:
    """The decision key of the uuid-less card at `index` of an exchange's recorded cards: one no
    card of that exchange has as its uuid, so two cards never share one decision."""
    uuids = {c.get("uuid") for c in cards if isinstance(c, dict)}
    key = f"#position {index}"
    while key in uuids:
        key = "#" + key
    return key


@dataclass(frozen=True)
class CardRef:
    """A recorded card: by its uuid, or (a card without one) by its index in the exchange's cards."""

    hook_instance: str
    service_id: str
    card_uuid: str | None
    card_index: int | None = None


@dataclass(frozen=True)
class SuggestionRef:
    """A suggestion of that card: by its uuid, or (one without) by its index in the card."""

    uuid: str | None
    index: int | None = None


class CardActions:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        user_fhir: UserFhir,
        feedback: FeedbackSender,
        clock: Clock,
    ) -> None:
        self._sessions = sessions
        self._fhir = user_fhir
        self._feedback = feedback
        self._clock = clock

    async def _exchange(self, principal: Principal, ref: CardRef, user_id: str | None) -> CdsExchangeRow:
        """The logged exchange the card came from, if this principal may act on it."""
        rows = [r for r in await exchange_rows(self._sessions, ref.hook_instance) if r.service_id == ref.service_id]
        row = rows[0] if rows else None
        acting_for = principal.user_ref if not principal.is_admin else (user_id or (row.user_ref if row else None))
        # Someone else's exchange looks exactly like a missing one.
        if row is None or row.status != "ok" or row.user_ref is None or row.user_ref != acting_for:
            raise NotFound("no such card in a recorded exchange of this user")
        return row

    @staticmethod
    def _card(row: CdsExchangeRow, ref: CardRef) -> tuple[dict[str, Any], str]:
        """The recorded card and the key its decision is recorded under."""
        cards = json.loads(row.cards)
        if ref.card_uuid is not None:
            for card in cards:
                if isinstance(card, dict) and card.get("uuid") == ref.card_uuid:
                    return card, ref.card_uuid
        elif ref.card_index is not None and 0 <= ref.card_index < len(cards):
            card = cards[ref.card_index]
            # Position names only a card without uuid: one with a uuid is named by it.
            if isinstance(card, dict) and "uuid" not in card:
                return card, position_key(cards, ref.card_index)
        raise NotFound("no such card in a recorded exchange of this user")

    @staticmethod
    def _suggestion(card: dict[str, Any], ref: SuggestionRef) -> dict[str, Any]:
        suggestions = [s for s in card.get("suggestions") or [] if isinstance(s, dict)]
        if ref.uuid is not None:
            found = next((s for s in suggestions if s.get("uuid") == ref.uuid), None)
        elif ref.index is not None and 0 <= ref.index < len(suggestions) and "uuid" not in suggestions[ref.index]:
            found = suggestions[ref.index]
        else:
            found = None
        if found is None:
            raise NotFound("no such suggestion on this card")
        return found

    async def _claim(self, row: CdsExchangeRow, ref: CardRef, key: str, outcome: str, suggestion: str | None) -> int:
        try:
            async with self._sessions() as session, session.begin():
                claim = CdsCardOutcomeRow(
                    hook_instance=ref.hook_instance,
                    service_id=ref.service_id,
                    card_uuid=key,
                    outcome=outcome,
                    suggestion_uuid=suggestion,
                    user_ref=row.user_ref,
                    detail="{}",
                    created_at=int(self._clock()),
                )
                session.add(claim)
                await session.flush()
                return claim.id
        except IntegrityError:
            raise Conflict("a decision on this card was already recorded") from None

    async def _release(self, claim_id: int) -> None:
        async with self._sessions() as session, session.begin():
            await session.execute(delete(CdsCardOutcomeRow).where(CdsCardOutcomeRow.id == claim_id))

    async def _finish(self, claim_id: int, detail: dict[str, Any], delivery: Delivery) -> None:
        async with self._sessions() as session, session.begin():
            claim = await session.get(CdsCardOutcomeRow, claim_id)
            if claim is not None:
                claim.detail = json.dumps(detail)
                claim.feedback_status = delivery.status
                claim.feedback_error = delivery.error

    async def _send(self, service_id: str, entry: dict[str, Any]) -> Delivery:
        async with self._sessions() as session:
            service = await session.get(CdsServiceRow, service_id)
        if service is None or not service.enabled:
            # A service that is not allow-listed is never called, feedback included.
            return Delivery(None, "the service is not enabled; no feedback was sent")
        target = FeedbackTarget(
            service.url, service.allow_http_loopback, service.client_cert_file, service.client_key_file
        )
        return await self._feedback.send(target, [entry])

    async def apply(
        self, user_ref: str, patient_id: str, session_token: str | None, actions: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Apply `actions` as one transaction as the user, in the patient's compartment."""
        bundle = transaction_bundle(actions)
        if not bundle["entry"]:
            return []
        async with self._fhir.as_user(user_ref, patient_id, session_token) as token:
            status, body = await self._fhir.transaction(token, bundle)
        if status == 403:
            raise Forbidden(_outcome_message(status, body))
        if status != 200:
            raise UpstreamFailed(_outcome_message(status, body))
        return transaction_summary(body)

    async def accept(
        self, principal: Principal, ref: CardRef, which: SuggestionRef, user_id: str | None = None
    ) -> dict[str, Any]:
        row = await self._exchange(principal, ref, user_id)
        card, key = self._card(row, ref)
        suggestion = self._suggestion(card, which)
        actions = [a for a in suggestion.get("actions") or [] if isinstance(a, dict)]
        transaction_bundle(actions)  # refuse a malformed suggestion before claiming the card
        user_ref = str(row.user_ref)  # never None: _exchange checked it
        claim = await self._claim(row, ref, key, "accepted", which.uuid)
        session_token = principal.session_token if not principal.is_admin else None
        writes, discarded = without_drafts(actions, draft_orders(row.request))
        identified = _identified(ref, which)
        try:
            summary = await self.apply(user_ref, row.patient_id, session_token, writes)
        except TransactionOutcomeUnknown as exc:
            # The FHIR server may have applied it: the decision stays recorded, so a retry can
            # never apply the suggestion a second time; no feedback claims an outcome we lack.
            detail = {"transaction": None, "error": exc.message, **identified}
            await self._finish(claim, detail, Delivery(None, "not sent"))
            raise
        except ApiError:
            # Refused before anything was written (token refused, FHIR server unreachable, or
            # the transaction answered with an error and, being atomic, applied nothing): the
            # user may still decide.
            await self._release(claim)
            raise
        # Anything else (a bug, a cancelled request) leaves the claim: never risk a double apply.
        if ref.card_uuid is None:
            delivery = NO_UUID
        else:
            accepted = [which.uuid] if which.uuid is not None else []
            delivery = await self._send(ref.service_id, accepted_entry(ref.card_uuid, accepted, self._clock))
        drafts = [{"resource": ref, "outcome": "draft discarded"} for ref in discarded]
        await self._finish(claim, {"transaction": summary, "drafts": drafts, **identified}, delivery)
        return {
            "outcome": "accepted",
            "transaction": summary,
            "drafts": drafts,
            "feedback": delivery.as_json(),
            **identified,
        }

    async def override(
        self,
        principal: Principal,
        ref: CardRef,
        reason: dict[str, Any] | None,
        comment: str | None,
        user_id: str | None = None,
    ) -> dict[str, Any]:
        row = await self._exchange(principal, ref, user_id)
        card, key = self._card(row, ref)
        if reason is not None:
            offered = [r for r in card.get("overrideReasons") or [] if isinstance(r, dict)]
            wanted = (reason.get("system"), reason.get("code"))
            match = next((r for r in offered if (r.get("system"), r.get("code")) == wanted), None)
            if match is None:
                raise InvalidRequest("overrideReason must be one of the card's overrideReasons")
            reason = match  # what the service offered, not what the caller typed
        claim = await self._claim(row, ref, key, "overridden", None)
        identified = _identified(ref, None)
        if ref.card_uuid is None:
            delivery = NO_UUID
        else:
            delivery = await self._send(ref.service_id, overridden_entry(ref.card_uuid, reason, comment, self._clock))
        await self._finish(claim, {"overrideReason": reason, "userComment": comment, **identified}, delivery)
        return {"outcome": "overridden", "feedback": delivery.as_json(), **identified}


def _identified(ref: CardRef, which: SuggestionRef | None) -> dict[str, Any]:
    """How the card and suggestion were named, when by position (recorded with the decision)."""
    out: dict[str, Any] = {}
    if ref.card_uuid is None:
        out["card"] = {"index": ref.card_index, "identifiedBy": f"card {BY_POSITION}"}
    if which is not None and which.uuid is None:
        out["suggestion"] = {"index": which.index, "identifiedBy": f"suggestion {BY_POSITION}"}
    return out
