"""What the UI needs to know, derived from the EHR's settings (one place for its URLs and limits)."""

from __future__ import annotations

from dataclasses import dataclass

from ehr.settings import EhrSettings

CLIENT_ID = "ehr"  # the EHR's registration at the authorization server (mockehr/registry.py)
CALLBACK_PATH = "/oauth/callback"
# Who the user is, a refresh token tied to their sign-in at the authserver (online_access), and
# their patients, with writes (accepting a suggestion writes as the user).
SCOPE = "openid fhirUser profile online_access user/*.cruds"


@dataclass(frozen=True)
class UiConfig:
    base_url: str
    authserver_url: str
    fhir_base_url: str
    # A session ends after this long without a page view, and at the latest after `absolute`.
    idle_seconds: int = 1800
    absolute_seconds: int = 8 * 3600
    # A started sign-in must come back within this long.
    login_seconds: int = 600
    # The access token is refreshed when it has less than this left.
    refresh_margin_seconds: int = 60

    @classmethod
    def of(cls, settings: EhrSettings) -> UiConfig:
        return cls(
            base_url=settings.base_url,
            authserver_url=settings.authserver_url.rstrip("/"),
            fhir_base_url=settings.fhir_base_url.rstrip("/"),
        )

    @property
    def redirect_uri(self) -> str:
        return self.base_url + CALLBACK_PATH

    @property
    def token_url(self) -> str:
        return self.authserver_url + "/token"

    @property
    def authorize_url(self) -> str:
        return self.authserver_url + "/authorize"

    @property
    def jwks_url(self) -> str:
        return self.authserver_url + "/jwks"
