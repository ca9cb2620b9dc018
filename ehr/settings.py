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

    # --- CDS Hooks client (ehr/client_jwt.py, ehr/invoke.py, ehr/cards.py, ehr/markdown.py) ---
    # Lifetime of the EHR's CDS Client JWT (CDS Hooks 2.0 "Trusting CDS Clients": exp ≤ 5 min).
    cds_jwt_lifetime_seconds: int = Field(default=60, ge=5, le=300)
    # Optional `tenant` claim of the CDS Client JWT.
    cds_tenant: str | None = None

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/.well-known/jwks.json"
