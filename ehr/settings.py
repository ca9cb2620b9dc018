"""EHR settings (env prefix MOCKEHR_EHR_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings


class EhrSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MOCKEHR_EHR_", extra="ignore", frozen=True)

    service_name: str = "ehr"
    port: int = Field(default=9000, ge=0, le=65535)
    # The authorization server: token exchange and revocation per CDS call, UI sign-in, admin API.
    authserver_url: str = "https://localhost:9001"
    # The `fhirServer` sent to CDS Services, the audience of their tokens, where prefetch runs.
    fhir_base_url: str = "https://localhost:9002/fhir"

    # --- CDS Hooks client (ehr/client_jwt.py, ehr/invoke.py, ehr/cards.py, ehr/markdown.py) ---
    # Lifetime of the EHR's CDS Client JWT (CDS Hooks 2.0 "Trusting CDS Clients": exp ≤ 5 min).
    cds_jwt_lifetime_seconds: int = Field(default=60, ge=5, le=300)
    # Optional `tenant` claim of the CDS Client JWT.
    cds_tenant: str | None = None
    # The OAuth client_id of the EHR at the authserver (private_key_jwt, first party).
    cds_oauth_client_id: str = "ehr"
    # A hook call answers within this, whatever its services do (each also has its own deadline).
    cds_total_deadline_seconds: float = Field(default=8.0, gt=0, le=60)
    # Caps on a CDS Service response (R4 of the risk assessment: a service cannot flood the EHR).
    cds_max_cards: int = Field(default=20, ge=1, le=200)
    cds_max_response_bytes: int = Field(default=1024 * 1024, ge=1024, le=16 * 1024 * 1024)
    # Hosts to which links in card `detail` markdown stay clickable (https only); others become text.
    cds_link_hosts: list[str] = Field(default_factory=list)
    # The API's hook requests may carry a whole draft order: a larger body limit than 1 MiB.
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/.well-known/jwks.json"
