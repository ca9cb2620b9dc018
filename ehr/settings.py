"""EHR settings (env prefix MOCKEHR_EHR_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings


class EhrSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MOCKEHR_EHR_", extra="ignore", frozen=True)

    service_name: str = "ehr"
    port: int = Field(default=9000, ge=0, le=65535)
    authserver_url: str = "https://localhost:9001"
    fhir_base_url: str = "https://localhost:9002/fhir"

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/.well-known/jwks.json"
