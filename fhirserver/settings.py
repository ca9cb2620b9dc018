"""FHIR server settings (env prefix MOCKEHR_FHIR_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings


class FhirSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MOCKEHR_FHIR_", extra="ignore", frozen=True)

    service_name: str = "fhirserver"
    port: int = Field(default=9002, ge=0, le=65535)
    # The authorization server whose tokens this server accepts (issuer and JWKS).
    authserver_url: str = "https://localhost:9001"
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_bundle_entries: int = Field(default=5000, ge=1)

    @property
    def fhir_base_url(self) -> str:
        """The FHIR base (this server's public URL + /fhir): the audience its tokens must carry."""
        return f"{self.base_url}/fhir"

    @property
    def authserver_jwks_url(self) -> str:
        return f"{self.authserver_url.rstrip('/')}/jwks"
