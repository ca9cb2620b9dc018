"""Example CDS Service settings (env prefix MOCKEHR_CDS_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings


class CdsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MOCKEHR_CDS_", extra="ignore", frozen=True)

    service_name: str = "cds-example"
    port: int = Field(default=9003, ge=0, le=65535)
    # The one CDS Client this service trusts (CDS Hooks 2.0 "Trusting CDS Clients"): its issuer
    # and the JWKS URL it was told to use. A jku in a token is accepted only if it equals this.
    ehr_issuer: str = "https://localhost:9000"
    ehr_jwks_url: str = "https://localhost:9000/.well-known/jwks.json"
