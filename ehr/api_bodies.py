"""The EHR API's request bodies and the patterns of its identifiers (ehr/api.py serves them).

Bodies are validated strictly (unknown fields refused); a body that fails is a 400 with the first
problem named (ehr/errors.py), never a trace.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ehr.errors import InvalidRequest, NotFound, validation_message
from ehr.registry import Approval

USER_REF = r"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}$"
UUIDISH = r"^[A-Za-z0-9\-._:]{1,128}$"
# A registry key: a discovery id (ehr/discovery.py SERVICE_ID_PATTERN), maybe with ".hook-N".
SERVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._~:-]{0,127}$"
# A card's or suggestion's uuid as the service chose it: printable, no control characters (a NUL
# would otherwise reach the database, where PostgreSQL refuses it).
CARD_ID = r"^[^\x00-\x1f\x7f]{1,128}$"
PATIENT_ID = r"^[A-Za-z0-9\-.]{1,64}$"
HOOK_NAME = r"^[a-z][a-z0-9-]{0,63}$"
# Exchange row ids (the `before` cursor) are 32-bit integers in the database.
MAX_ROW_ID = 2**31 - 1
# A card's or suggestion's position in a recorded response (far above what ehr/cards.py keeps).
MAX_POSITION = 1000


M = TypeVar("M", bound=BaseModel)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HookRequest(_Body):
    userId: str | None = Field(default=None, pattern=USER_REF)
    patientId: str = Field(pattern=PATIENT_ID)
    encounterId: str | None = Field(default=None, pattern=PATIENT_ID)
    context: dict[str, Any] = Field(default_factory=dict)
    services: list[Annotated[str, Field(pattern=SERVICE_ID)]] | None = Field(default=None, min_length=1, max_length=50)


def _one_of(body: BaseModel, by_uuid: str, by_index: str) -> None:
    # CDS Hooks 2.0: `uuid` is optional on cards and suggestions; one without is named by its
    # position in the recorded response instead (ehr/suggestions.py). Exactly one way, never both.
    if (getattr(body, by_uuid) is None) == (getattr(body, by_index) is None):
        raise ValueError(f"give exactly one of {by_uuid} and {by_index}")


class AcceptRequest(_Body):
    hookInstance: str = Field(pattern=UUIDISH)
    serviceId: str = Field(pattern=SERVICE_ID)
    cardUuid: str | None = Field(default=None, pattern=CARD_ID)
    cardIndex: int | None = Field(default=None, ge=0, le=MAX_POSITION)
    suggestionUuid: str | None = Field(default=None, pattern=CARD_ID)
    suggestionIndex: int | None = Field(default=None, ge=0, le=MAX_POSITION)
    userId: str | None = Field(default=None, pattern=USER_REF)

    @model_validator(mode="after")
    def _named_once(self) -> AcceptRequest:
        _one_of(self, "cardUuid", "cardIndex")
        _one_of(self, "suggestionUuid", "suggestionIndex")
        return self


class Coding(BaseModel):
    model_config = ConfigDict(extra="allow")

    system: str | None = Field(default=None, max_length=512)
    code: str = Field(min_length=1, max_length=256)
    display: str | None = Field(default=None, max_length=512)


class FeedbackRequest(_Body):
    hookInstance: str = Field(pattern=UUIDISH)
    serviceId: str = Field(pattern=SERVICE_ID)
    cardUuid: str | None = Field(default=None, pattern=CARD_ID)
    cardIndex: int | None = Field(default=None, ge=0, le=MAX_POSITION)
    outcome: str = Field(pattern=r"^overridden$")
    overrideReason: Coding | None = None
    userComment: str | None = Field(default=None, max_length=2000)
    userId: str | None = Field(default=None, pattern=USER_REF)

    @model_validator(mode="after")
    def _named_once(self) -> FeedbackRequest:
        _one_of(self, "cardUuid", "cardIndex")
        return self


class ServiceAdd(_Body):
    discoveryUrl: str = Field(min_length=8, max_length=512)
    hooks: list[str] = Field(default_factory=list)
    prefetch: list[str] = Field(default_factory=list)
    approveAllPrefetch: bool = False
    scope: list[str] = Field(default_factory=list)
    # By announced service id: scopes approved for that service alone (least privilege).
    serviceScopes: dict[str, list[str]] = Field(default_factory=dict, max_length=256)
    clientId: str | None = None
    deadlineSeconds: float = 5.0
    allowSystemActions: bool = False
    allowHttpLoopback: bool = False
    clientCertFile: str | None = None
    clientKeyFile: str | None = None

    def approval(self) -> Approval:
        """What the administrator approves for the services found at discoveryUrl."""
        return Approval(
            hooks=tuple(self.hooks),
            prefetch=tuple(self.prefetch),
            approve_all_prefetch=self.approveAllPrefetch,
            scope=tuple(self.scope),
            service_scopes={k: tuple(v) for k, v in self.serviceScopes.items()},
            client_id=self.clientId,
            deadline_seconds=self.deadlineSeconds,
            allow_system_actions=self.allowSystemActions,
            allow_http_loopback=self.allowHttpLoopback,
            client_cert_file=self.clientCertFile,
            client_key_file=self.clientKeyFile,
        )


class ServicePatch(_Body):
    prefetch: list[str] | None = None
    scope: list[str] | None = None
    deadlineSeconds: float | None = None
    allowSystemActions: bool | None = None
    allowHttpLoopback: bool | None = None
    clientCertFile: str | None = None
    clientKeyFile: str | None = None
    enabled: bool | None = None


def service_id_or_404(service_id: str) -> str:
    """A path's service id; one that cannot be a registry key is simply not found."""
    if not re.fullmatch(SERVICE_ID, service_id):
        raise NotFound(f"no CDS Service {service_id[:128]!r}")
    return service_id


async def parse_body(request: Request, model: type[M]) -> M:
    # At most max_body_bytes, nested at most max_json_depth: BodyLimitMiddleware saw to both.
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc)) from None
