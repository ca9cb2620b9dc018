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
    # Lifetime of every access token; CDS Hooks asks for very short-lived tokens (≤ 300 s).
    access_token_lifetime_seconds: int = Field(default=300, ge=10, le=300)
    # Algorithms accepted in client assertions (SMART 2.2: RS384 and ES384; add ES256/RS256 here).
    client_assertion_algorithms: list[str] = Field(default_factory=lambda: ["RS384", "ES384"])
