"""Authorization server settings (env prefix MOCKEHR_AUTH_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings


class AuthSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MOCKEHR_AUTH_", extra="ignore", frozen=True)

    service_name: str = "authserver"
    port: int = Field(default=9001, ge=0, le=65535)
    # The FHIR server's base URL: the only resource (RFC 8707 audience) tokens are issued for.
    fhir_base_url: str = "https://localhost:9002/fhir"
