"""Authorization server settings (env prefix MOCKEHR_AUTH_)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from common.cors import CorsOrigins
from common.discovery import CLIENT_ASSERTION_ALGORITHMS, AuthServerFacts
from common.jose import ASYMMETRIC_ALGORITHMS
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
    client_assertion_algorithms: list[str] = Field(default_factory=lambda: list(CLIENT_ASSERTION_ALGORITHMS))

    @field_validator("client_assertion_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        allowed = set(ASYMMETRIC_ALGORITHMS)
        if not value or not set(value) <= allowed:
            raise ValueError(f"client_assertion_algorithms must be a non-empty subset of {sorted(allowed)}")
        return value

    # --- SMART App Launch 2.2 (authorize, login, codes, refresh tokens) --------------------------
    # Further browser origins (scheme://host[:port], exact) allowed to call /token, /jwks,
    # /.well-known/* and /smart-style.json with CORS, besides those of registered, active SMART
    # apps (read from the registry at each request, no setting needed). Never /authorize or /login.
    cors_origins: CorsOrigins = Field(default_factory=list)
    # RFC 6749 §4.1.2 says at most 10 minutes; we keep authorization codes far shorter.
    authorization_code_lifetime_seconds: int = Field(default=60, ge=5, le=60)
    # How long a launch value registered by the EHR (POST /launch) may wait for /authorize.
    launch_lifetime_seconds: int = Field(default=300, ge=10, le=300)
    # Login session at the authorization server (cookie and server-side row); short on purpose.
    session_lifetime_seconds: int = Field(default=1800, ge=60, le=43200)
    # Absolute lifetime of a refresh-token family granted with offline_access (rotation does not
    # extend it). online_access tokens also die with the login session.
    refresh_token_lifetime_seconds: int = Field(default=86400, ge=300, le=90 * 86400)
    # Failed logins tolerated per username and per client IP within the window, then 429.
    login_max_failures_per_user: int = Field(default=5, ge=1, le=1000)
    login_max_failures_per_ip: int = Field(default=20, ge=1, le=100000)
    login_failure_window_seconds: int = Field(default=900, ge=10, le=86400)
    # SMART `smart_style_url`; empty means this server's own /smart-style.json.
    smart_style_url: str = ""

    def discovery_facts(self) -> AuthServerFacts:
        """What the discovery documents say of this server (common/discovery.py)."""
        return AuthServerFacts(
            issuer=self.base_url,
            client_assertion_algorithms=tuple(self.client_assertion_algorithms),
            id_token_signing_alg=self.signing_alg,
        )

    @property
    def style_url(self) -> str:
        return self.smart_style_url or f"{self.base_url}/smart-style.json"
