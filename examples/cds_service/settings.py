"""Example CDS Service settings (env prefix MOCKEHR_CDS_)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from common.cors import CorsOrigins
from common.settings import ServiceSettings

MIB = 1024 * 1024


def _https_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{what} must be an https URL without query, fragment or userinfo: {value!r}")
    return value


class TrustedClient(BaseModel):
    """A CDS Client this service trusts: its `iss` and the one JWKS URL its keys are taken from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str = Field(min_length=1)
    jwks_url: str

    @field_validator("jwks_url")
    @classmethod
    def _jwks_https(cls, value: str) -> str:
        return _https_url(value, "jwks_url")


class CdsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MOCKEHR_CDS_", extra="ignore", frozen=True)

    service_name: str = "cds-example"
    port: int = Field(default=9003, ge=0, le=65535)

    # CDS Hooks 2.0 "Trusting CDS Clients". The primary CDS Client (the EHR): its issuer and the
    # JWKS URL it was told to use; readiness depends on that JWKS. Empty issuer = no primary.
    ehr_issuer: str = "https://localhost:9000"
    # Where the EHR's keys come from (https); a token's `jku` must equal it and is never fetched.
    ehr_jwks_url: str = "https://localhost:9000/.well-known/jwks.json"
    # Further CDS Clients (JSON: [{"issuer": ..., "jwks_url": ...}]), e.g. `mockehr probe`. Their
    # JWKS is fetched only when one of their tokens arrives. A token's `iss` selects the client;
    # an unknown `iss` is refused before anything is fetched.
    trusted_clients: list[TrustedClient] = Field(default_factory=list)

    # FHIR servers this service may call with fhirAuthorization (exact base URLs). A request
    # naming any other `fhirServer` gets no outbound call (SSRF), only its prefetch is used.
    fhir_servers: list[str] = Field(default_factory=lambda: ["https://localhost:9002/fhir"])
    # Per FHIR request; a larger answer than max_fhir_response_bytes counts as unavailable.
    fhir_timeout_seconds: float = Field(default=4.0, gt=0, le=30)
    max_fhir_response_bytes: int = Field(default=8 * MIB, ge=1024, le=64 * MIB)
    # Hook requests carry prefetch: a larger body limit than the other services' 1 MiB.
    max_body_bytes: int = Field(default=5 * MIB, ge=1024, le=64 * MIB)

    # Where the `smart` links of the medication-safety cards point (the example SMART app).
    smart_launch_url: str = "https://localhost:9004/launch"

    # Browser origins (a browser-based EHR, a sandbox) allowed to call this service; exact match.
    cors_origins: CorsOrigins = Field(default_factory=list)

    # Mutual TLS: the TLS server requires a client certificate issued by `client_ca_file`
    # (default: the dev CA, `ca_file`). Enforced in the TLS handshake (see serve.py).
    client_cert_required: bool = False
    # The CA that issues accepted client certificates (default: ca_file).
    client_ca_file: Path | None = None

    @field_validator("fhir_servers")
    @classmethod
    def _fhir_servers(cls, values: list[str]) -> list[str]:
        return [_https_url(v, "fhir_servers entry").rstrip("/") for v in values]

    @field_validator("smart_launch_url", "ehr_jwks_url")
    @classmethod
    def _https(cls, value: str) -> str:
        return _https_url(value, "smart_launch_url and ehr_jwks_url")

    @model_validator(mode="after")
    def _one_jwks_per_issuer(self) -> CdsSettings:
        seen: dict[str, str] = {}
        for client in self._all_clients():
            if seen.setdefault(client.issuer, client.jwks_url) != client.jwks_url:
                raise ValueError(f"trusted_clients: issuer {client.issuer!r} is given two JWKS URLs")
        return self

    @model_validator(mode="after")
    def _mtls_needs_tls(self) -> CdsSettings:
        if self.client_cert_required and not self.tls:
            raise ValueError("client_cert_required needs tls")
        return self

    @property
    def primary_client(self) -> TrustedClient | None:
        if not self.ehr_issuer:
            return None
        return TrustedClient(issuer=self.ehr_issuer, jwks_url=self.ehr_jwks_url)

    def _all_clients(self) -> list[TrustedClient]:
        primary = self.primary_client
        return ([primary] if primary is not None else []) + list(self.trusted_clients)

    @property
    def clients(self) -> list[TrustedClient]:
        """Every trusted CDS Client, the primary first, each issuer once."""
        found: dict[str, TrustedClient] = {}
        for client in self._all_clients():
            found.setdefault(client.issuer, client)
        return list(found.values())

    @property
    def client_ca_path(self) -> Path:
        return self.client_ca_file or self.ca_path
