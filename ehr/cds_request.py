"""The CDS Hooks request body (CDS Hooks 2.0 §HTTP Request), as the EHR builds and checks it.

`hook`, `hookInstance` (a UUID), `context` (validated against the hook, ehr.hooks) are required;
`fhirServer`, `fhirAuthorization`, `prefetch`, `extension` are optional, but `fhirServer` is
required whenever `fhirAuthorization` is sent. `fhirAuthorization` carries access_token,
token_type `Bearer`, expires_in, scope and subject (the service's client_id); `patient` whenever
a patient/ scope is granted. Prefetch values are FHIR resources or `null` — never Bundle entries
(`{"response": ..., "resource": ...}`).

Validated with `context={"outbound": True}` (what the engine does before sending), the EHR's own
rule applies too: `fhirServer` must be https whenever a token goes with it (spec: "MUST be https
when production data is exchanged"). Without it the model accepts the wire samples of the spec
and its test cases, which use plain http test servers.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ehr.errors import validation_reason
from ehr.hooks import HookContextError, validate_context


class FhirAuthorization(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    access_token: str = Field(min_length=1)
    token_type: Literal["Bearer"]
    expires_in: int = Field(gt=0)
    scope: str = Field(min_length=1)
    subject: str = Field(min_length=1)
    patient: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _patient_with_patient_scopes(self) -> FhirAuthorization:
        if any(s.startswith("patient/") for s in self.scope.split()) and not self.patient:
            raise ValueError("fhirAuthorization.patient is required when patient/ scopes are granted")
        return self


class CdsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hook: str = Field(min_length=1)
    hookInstance: str
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, dict[str, Any] | None] | None = None
    extension: dict[str, Any] | None = None

    @field_validator("hookInstance")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            uuid.UUID(value)
        except ValueError:
            raise ValueError("hookInstance must be a UUID") from None
        return value

    @field_validator("fhirServer")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("fhirServer must be an absolute http(s) URL")
        return value

    @field_validator("prefetch")
    @classmethod
    def _prefetch_values_are_resources(
        cls, value: dict[str, dict[str, Any] | None] | None
    ) -> dict[str, dict[str, Any] | None] | None:
        for key, item in (value or {}).items():
            if item is None:
                continue
            if not isinstance(item.get("resourceType"), str):
                shape = "a Bundle entry" if "resource" in item else "not a resource"
                raise ValueError(f"prefetch[{key!r}] must be a FHIR resource or null ({shape})")
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> CdsRequest:
        options = info.context or {}
        if not options.get("context_checked"):
            try:
                validate_context(self.hook, self.context)
            except HookContextError as exc:
                raise ValueError(exc.reason) from None
        if self.fhirAuthorization is not None:
            if self.fhirServer is None:
                raise ValueError("fhirServer is required when fhirAuthorization is sent")
            outbound = bool(options.get("outbound"))
            if outbound and urlsplit(self.fhirServer).scheme != "https":
                raise ValueError("fhirServer must be https when fhirAuthorization is sent")
        return self


class CdsRequestError(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_request(data: Any, *, outbound: bool = False, context_checked: bool = False) -> CdsRequest:
    """Validate a CDS Hooks request body; CdsRequestError names the first rule it breaks.

    `context_checked`: the caller already validated `context` with ehr.hooks.validate_context
    (the engine does, once per hook call), so it is not validated again per service.
    """
    try:
        return CdsRequest.model_validate(data, context={"outbound": outbound, "context_checked": context_checked})
    except ValidationError as exc:
        raise CdsRequestError(validation_reason(exc)) from None
