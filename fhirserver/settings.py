"""FHIR server settings (env prefix MOCKEHR_FHIR_)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from common.cors import CorsOrigins
from common.settings import ServiceSettings
from fhirserver.searchparams import SearchLimits


class FhirSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MOCKEHR_FHIR_", extra="ignore", frozen=True)

    service_name: str = "fhirserver"
    port: int = Field(default=9002, ge=0, le=65535)
    # The authorization server whose tokens this server accepts (issuer and JWKS).
    authserver_url: str = "https://localhost:9001"
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # Entries of one batch or transaction sent to POST /fhir; 413 beyond (`mockehr load` allows more).
    max_bundle_entries: int = Field(default=5000, ge=1)
    # Search complexity (fhirserver/searchparams.py:SearchLimits): past a limit, 400 too-costly.
    search_max_parameters: int = Field(default=40, ge=1, le=500)
    search_max_values: int = Field(default=100, ge=1, le=500)
    search_max_chain_depth: int = Field(default=2, ge=1, le=4)
    search_max_includes: int = Field(default=10, ge=0, le=50)
    # Revocations are polled from the authorization server this often; a view older than the
    # staleness limit makes the guard answer 503 (fail closed).
    revocation_poll_seconds: float = Field(default=0.25, gt=0, le=5)
    # ≤ 1 s by default: a revocation is honoured within a second even when the feed is down.
    revocation_max_staleness_seconds: float = Field(default=1.0, gt=0, le=60)
    # HMAC key of paging cursors, shared by replicas (dev: generated into <data_dir>/cursor-key).
    cursor_key: SecretStr | None = None
    # Further browser origins (scheme://host[:port], exact) allowed to call /fhir/* with CORS,
    # besides those of registered, active SMART apps (read from the database, no setting needed).
    cors_origins: CorsOrigins = Field(default_factory=list)

    def cursor_secret(self) -> bytes:
        from common.secrets_file import read_or_create_secret

        if self.cursor_key is not None:
            return self.cursor_key.get_secret_value().encode()
        if self.production:
            from common.errors import ConfigError

            raise ConfigError("production mode: cursor_key is required")
        return read_or_create_secret(self.data_dir / "cursor-key").encode()

    @property
    def search_limits(self) -> SearchLimits:
        return SearchLimits(
            max_parameters=self.search_max_parameters,
            max_values=self.search_max_values,
            max_chain_depth=self.search_max_chain_depth,
            max_includes=self.search_max_includes,
        )

    @property
    def fhir_base_url(self) -> str:
        """The FHIR base (this server's public URL + /fhir): the audience its tokens must carry."""
        return f"{self.base_url}/fhir"

    @property
    def authserver_jwks_url(self) -> str:
        return f"{self.authserver_url.rstrip('/')}/jwks"
