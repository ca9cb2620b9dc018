"""The CDS Hooks 2.0 wire shapes this service reads and writes (field names as on the wire).

Requests (§HTTP Request) and feedback (§Feedback) are validated on the way in; responses
(§CDS Service Response) are built from these models, so every card this service sends has what
the spec requires: summary < 140 characters, an indicator, a source, a uuid, suggestion uuids and
a selectionBehavior whenever there are suggestions.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, model_validator

FHIR_ID = r"^[A-Za-z0-9\-.]{1,64}$"


class _In(BaseModel):
    # Unknown members are ignored (the spec may grow); known ones are typed strictly.
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def wire(self) -> dict[str, Any]:
        """JSON-ready, optional members omitted rather than null (§HTTP Response)."""
        return self.model_dump(mode="json", exclude_none=True)


# --- request ---------------------------------------------------------------------------------


class FhirAuthorization(_In):
    """§fhirAuthorization. The token is a SecretStr so it cannot end up in a log or a repr."""

    access_token: SecretStr
    token_type: Literal["Bearer"]
    expires_in: int = Field(gt=0)
    scope: str
    subject: str = Field(min_length=1)
    patient: str | None = Field(default=None, pattern=FHIR_ID)


class HookRequest(_In):
    hook: str = Field(min_length=1)
    hookInstance: str = Field(min_length=1, max_length=256)
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _server_with_token(self) -> HookRequest:
        # §HTTP Request: fhirServer is required whenever fhirAuthorization is sent.
        if self.fhirAuthorization is not None and not self.fhirServer:
            raise ValueError("fhirAuthorization without fhirServer")
        return self


# --- response --------------------------------------------------------------------------------


class Coding(_Out):
    system: str
    code: str
    display: str


class Source(_Out):
    label: str = Field(min_length=1)
    url: str | None = None
    topic: Coding | None = None


class Action(_Out):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: str | None = None

    @model_validator(mode="after")
    def _target(self) -> Action:
        if self.type == "delete" and not self.resourceId:
            raise ValueError("a delete action names its resourceId")
        if self.type != "delete" and self.resource is None:
            raise ValueError("create and update actions carry a resource")
        return self


class Suggestion(_Out):
    label: str = Field(min_length=1)
    uuid: str
    isRecommended: bool | None = None
    actions: list[Action] = Field(min_length=1)


class Link(_Out):
    label: str = Field(min_length=1)
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None

    @model_validator(mode="after")
    def _app_context_for_smart_only(self) -> Link:
        if self.appContext is not None and self.type != "smart":
            raise ValueError("appContext is for smart links only")
        return self


class Card(_Out):
    uuid: str
    summary: str = Field(min_length=1, max_length=139)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[Link] | None = None

    @model_validator(mode="after")
    def _selection_with_suggestions(self) -> Card:
        if self.suggestions and self.selectionBehavior is None:
            raise ValueError("selectionBehavior is required when suggestions are present")
        return self


class CdsResponse(_Out):
    cards: list[Card]


# --- discovery -------------------------------------------------------------------------------


class ServiceDefinition(_Out):
    """§Discovery: one service as listed at GET /cds-services."""

    hook: str
    id: str = Field(pattern=r"^[A-Za-z0-9\-_.]+$")
    title: str
    description: str
    prefetch: dict[str, str] = Field(default_factory=dict)


# --- feedback --------------------------------------------------------------------------------


class AcceptedSuggestion(_In):
    id: str = Field(min_length=1)


class FeedbackCoding(_In):
    system: str | None = None
    code: str = Field(min_length=1)
    display: str | None = None


class OverrideReason(_In):
    reason: FeedbackCoding | None = None
    userComment: str | None = Field(default=None, max_length=2000)


class FeedbackItem(_In):
    card: str = Field(min_length=1, max_length=256)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = Field(default=None, max_length=50)
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: AwareDatetime

    @model_validator(mode="after")
    def _consistent(self) -> FeedbackItem:
        if self.outcome == "accepted" and self.overrideReason is not None:
            raise ValueError("an accepted card has no overrideReason")
        if self.outcome == "overridden" and self.acceptedSuggestions:
            raise ValueError("an overridden card has no acceptedSuggestions")
        return self


class FeedbackBody(_In):
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=100)
