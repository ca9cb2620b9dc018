"""The CDS Service response (CDS Hooks 2.0 §CDS Service Response, §Card attributes), validated
strictly and sanitized before anything reaches a clinician.

- The response must be a JSON object with a `cards` array (empty is fine); `systemActions` is an
  optional array of Actions.
- Each card is validated on its own: an invalid card is dropped with a recorded reason, the
  others are kept. Rules: `summary` < 140 characters, `indicator` info|warning|critical,
  `source.label` required, `uuid` (if any) a printable string of ≤ 128 characters unique in
  the response (feedback names a card by it: a repeat is dropped), suggestion uuids unique in
  their card (accepting names one by it), `suggestions` need `selectionBehavior`
  at-most-one|any — an unknown value makes the card an error (dropped). A card with suggestions
  but no `selectionBehavior` (the spec says it MUST be given; some services omit it) is kept and
  treated as `at-most-one`, the restrictive choice, with a note.
- Links: `type` absolute|smart (a link without `type` — seen in the wild — is treated as
  absolute, which never launches anything); `absolute` only https to an allowed host (the
  configured `cds_link_hosts` plus the answering service's own host: Argonaut R2, a card must
  not send the clinician to wherever a service likes); `smart` only when the url is
  the launch URL of a registered SMART app; `appContext` only on smart links. A link that fails
  is removed from its card (noted); `source.url`/`source.icon` that are not https are removed.
- At most `max_cards` cards are kept; the rest are dropped with a reason.
- `detail` is rendered to `detailHtml` (ehr.markdown); summary and labels stay plain text, and
  `summaryHtml` carries the escaped summary for HTML contexts.
- What the EHR ignores is noted, never silently dropped: `extension.systemActions` (the 2019 PAMA
  convention; 2.0 puts `systemActions` at the top level) and unknown top-level members.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ehr.errors import validation_reason
from ehr.exchange import DroppedCard
from ehr.markdown import MarkdownRenderer, escape_text, https_host

# CDS Hooks 2.0 §Card: "summary ... SHALL be less than 140 characters". Real services (e.g. the
# CDC opioid guideline samples) exceed it; a longer summary up to MAX_SUMMARY_INPUT is cut to
# 139 characters with an ellipsis (noted) rather than losing a clinical warning; beyond that the
# card is dropped.
MAX_SUMMARY = 139
MAX_SUMMARY_INPUT = 1024
# A card's or suggestion's uuid comes back in feedback and in the EHR's own API: bounded and
# printable (no control characters, which PostgreSQL would refuse when the decision is recorded).
UUID_PATTERN = r"^[^\x00-\x1f\x7f]{1,128}$"
# A 1 MiB answer could hold 300 000 tiny (invalid) cards or one megabyte of markdown: the EHR
# examines at most this many array items and renders at most this much detail per card, so a
# hostile service cannot spend the EHR's CPU (every item is still accounted for in `dropped`).
MAX_EXAMINED = 200
MAX_DETAIL = 64 * 1024
# CDS Hooks 2.0 §CDS Service Response: the members a response may carry.
RESPONSE_MEMBERS = frozenset({"cards", "systemActions", "extension"})
MAX_NAMED = 10  # unknown members named in a note (each cut to 64 characters)


class _Model(BaseModel):
    # Unknown members are ignored (not echoed); `extension` objects are allowed by the spec.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class Coding(_Model):
    system: str | None = None
    code: str = Field(min_length=1)
    display: str | None = None


class OverrideReason(Coding):
    # 2.0 §Card: overrideReasons are Codings whose display the EHR shows; it must be present.
    display: str = Field(min_length=1)


class Source(_Model):
    label: str = Field(min_length=1)
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None


class Action(_Model):
    type: Literal["create", "update", "delete"]
    description: str = Field(min_length=1)
    resource: dict[str, Any] | None = None
    resourceId: str | list[str] | None = None

    @model_validator(mode="after")
    def _target(self) -> Action:
        if self.type in ("create", "update"):
            if self.resource is None or not isinstance(self.resource.get("resourceType"), str):
                raise ValueError(f"a {self.type} action needs a FHIR resource")
        elif not self.resourceId:
            raise ValueError("a delete action needs resourceId")
        return self


class Suggestion(_Model):
    label: str = Field(min_length=1)
    uuid: str | None = Field(default=None, pattern=UUID_PATTERN)
    isRecommended: bool | None = None
    actions: list[Action] | None = None


class Link(_Model):
    label: str = Field(min_length=1)
    url: str = Field(min_length=1)
    type: Literal["absolute", "smart"] = "absolute"
    appContext: str | None = None
    autolaunchable: bool | None = None

    @model_validator(mode="after")
    def _app_context_only_for_smart(self) -> Link:
        if self.appContext is not None and self.type != "smart":
            raise ValueError("appContext is only allowed on smart links")
        return self


class Card(_Model):
    uuid: str | None = Field(default=None, pattern=UUID_PATTERN)
    summary: str = Field(min_length=1, max_length=MAX_SUMMARY_INPUT)
    detail: str | None = Field(default=None, max_length=MAX_DETAIL)
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[OverrideReason] | None = None
    links: list[Link] | None = None
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _suggestion_uuids_unique(self) -> Card:
        # Accepting names a suggestion by uuid: with a repeat, the clinician could click one
        # suggestion's label and have another suggestion's actions applied.
        uuids = [s.uuid for s in self.suggestions or [] if s.uuid is not None]
        if len(uuids) != len(set(uuids)):
            raise ValueError("two suggestions share one uuid")
        return self

    @field_validator("summary")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if any(ord(c) < 32 and c != "\t" for c in value):
            raise ValueError("summary is one line of plain text")
        return value


class ResponseError(ValueError):
    """The response as a whole is not a CDS Hooks response (the service yields no cards)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ValidatedResponse:
    cards: list[dict[str, Any]] = field(default_factory=list)
    system_actions: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[DroppedCard] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class CardValidator:
    """Validates and sanitizes one response; built once, used for every service's answer."""

    def __init__(self, renderer: MarkdownRenderer, *, max_cards: int = 20) -> None:
        self._renderer = renderer
        self._max_cards = max_cards

    def _links(
        self, card: Card, index: int, smart_urls: Collection[str], hosts: Collection[str], notes: list[str]
    ) -> list[dict[str, Any]]:
        kept: list[dict[str, Any]] = []
        for j, link in enumerate(card.links or []):
            if https_host(link.url) is None:
                notes.append(f"card {index}: link {j} removed: only https links are allowed")
                continue
            if link.type == "smart" and link.url not in smart_urls:
                notes.append(f"card {index}: link {j} removed: smart link to an app that is not registered")
                continue
            if link.type != "smart" and not self._renderer.link_allowed(link.url, hosts):
                notes.append(f"card {index}: link {j} removed: host not on the EHR's link allow-list")
                continue
            kept.append(link.model_dump(exclude_none=True))
        return kept

    def _card(
        self, raw: Any, index: int, smart_urls: Collection[str], hosts: Collection[str], notes: list[str]
    ) -> dict[str, Any]:
        card = Card.model_validate(raw)
        out = card.model_dump(exclude_none=True)
        source = dict(out["source"])
        for member in ("url", "icon"):
            if member in source and https_host(source[member]) is None:
                notes.append(f"card {index}: source.{member} removed: not an https URL")
                del source[member]
        out["source"] = source
        if card.suggestions and card.selectionBehavior is None:
            notes.append(f"card {index}: suggestions without selectionBehavior: treated as at-most-one")
            out["selectionBehavior"] = "at-most-one"
        if card.links is not None:
            links = self._links(card, index, smart_urls, hosts, notes)
            if links:
                out["links"] = links
            else:
                del out["links"]
        if len(card.summary) > MAX_SUMMARY:
            notes.append(f"card {index}: summary longer than {MAX_SUMMARY} characters: shortened")
            out["summary"] = card.summary[: MAX_SUMMARY - 1] + "…"
        out["summaryHtml"] = escape_text(out["summary"])
        if card.detail is not None:
            out["detailHtml"] = self._renderer.render(card.detail, hosts)
        return out

    def validate(
        self, body: Any, *, smart_urls: Collection[str] = (), link_hosts: Collection[str] = ()
    ) -> ValidatedResponse:
        """Validate a parsed response body; ResponseError when it is not a response at all.

        `link_hosts` are hosts allowed for this answer's links besides the configured ones (the
        engine passes the answering service's own host).
        """
        hosts = frozenset(h.lower() for h in link_hosts)
        if not isinstance(body, dict):
            raise ResponseError("the response is not a JSON object")
        cards = body.get("cards")
        if not isinstance(cards, list):
            raise ResponseError("the response has no cards array")
        result = ValidatedResponse()
        uuids: dict[str, int] = {}
        for index, raw in enumerate(cards[:MAX_EXAMINED]):
            if len(result.cards) >= self._max_cards:
                result.dropped.append(DroppedCard(index, f"more than {self._max_cards} cards"))
                continue
            try:
                card = self._card(raw, index, smart_urls, hosts, result.notes)
            except ValidationError as exc:
                result.dropped.append(DroppedCard(index, validation_reason(exc)))
                continue
            # Feedback names a card by its uuid: two cards with one uuid would be confused.
            if "uuid" in card and card["uuid"] in uuids:
                result.dropped.append(DroppedCard(index, f"uuid repeats card {uuids[card['uuid']]}"))
                continue
            if "uuid" in card:
                uuids[card["uuid"]] = index
            result.cards.append(card)
        if len(cards) > MAX_EXAMINED:
            result.dropped.append(
                DroppedCard(MAX_EXAMINED, f"{len(cards) - MAX_EXAMINED} more cards not examined (over {MAX_EXAMINED})")
            )
        self._ignored(body, result.notes)
        actions = body.get("systemActions")
        if actions is not None:
            if not isinstance(actions, list):
                raise ResponseError("systemActions is not an array")
            if len(actions) > MAX_EXAMINED:
                result.notes.append(f"systemActions beyond the first {MAX_EXAMINED} dropped unexamined")
            for index, raw in enumerate(actions[:MAX_EXAMINED]):
                try:
                    result.system_actions.append(Action.model_validate(raw).model_dump(exclude_none=True))
                except ValidationError as exc:
                    result.notes.append(f"systemActions[{index}] dropped: {validation_reason(exc)}")
        return result

    @staticmethod
    def _ignored(body: dict[str, Any], notes: list[str]) -> None:
        extension = body.get("extension")
        if isinstance(extension, dict) and "systemActions" in extension:
            notes.append(
                "extension.systemActions ignored: CDS Hooks 2.0 takes systemActions at the top level "
                "of the response (extension.systemActions is the 2019 PAMA convention)"
            )
        unknown = sorted(str(k) for k in body if k not in RESPONSE_MEMBERS)
        if unknown:
            named = ", ".join(repr(k[:64]) for k in unknown[:MAX_NAMED])
            more = f" and {len(unknown) - MAX_NAMED} more" if len(unknown) > MAX_NAMED else ""
            notes.append(f"unknown top-level members of the response ignored: {named}{more}")


def needs_smart_urls(body: Any) -> bool:
    """Whether any card carries a smart link (only then is the SMART app registry consulted)."""
    if not isinstance(body, dict) or not isinstance(body.get("cards"), list):
        return False
    for card in body["cards"]:
        links = card.get("links") if isinstance(card, dict) else None
        if isinstance(links, list) and any(isinstance(link, dict) and link.get("type") == "smart" for link in links):
            return True
    return False
