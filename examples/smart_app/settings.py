"""Example SMART app settings (env prefix MOCKEHR_SMART_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings


class SmartAppSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MOCKEHR_SMART_", extra="ignore", frozen=True)

    service_name: str = "smart-example"
    port: int = Field(default=9004, ge=0, le=65535)
    # Its public client at the authorization server.
    client_id: str = "smart-example"
    # The FHIR servers this app agrees to be launched against: a launch with any other `iss` is
    # refused before anything is fetched from it (SMART App Launch 2.2 "EHR Launch": the app
    # SHOULD check iss against an allow list; otherwise an attacker picks the server).
    fhir_base_url: str = "https://localhost:9002/fhir"
    # The scope it asks for.
    scope: str = "launch openid fhirUser patient/Patient.rs patient/Observation.rs patient/MedicationRequest.rs"
    # How long a started launch may take to come back to /callback.
    pending_seconds: int = Field(default=600, ge=30, le=3600)

    @property
    def launch_url(self) -> str:
        return f"{self.base_url}/launch"

    @property
    def redirect_uri(self) -> str:
        return f"{self.base_url}/callback"
