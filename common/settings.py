"""Settings base shared by every service (pydantic-settings).

Each service subclasses `ServiceSettings` with its own env prefix (`MOCKEHR_AUTH_`,
`MOCKEHR_FHIR_`, `MOCKEHR_EHR_`, `MOCKEHR_CDS_`). In development mode (the default) secrets that
are not given are generated once into the data directory with mode 0600; in production mode
(`..._PRODUCTION=true`) every dev default is refused and secrets must be supplied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.db import normalize_database_url
from common.errors import ConfigError
from common.keys import Alg
from common.secrets_file import read_or_create_secret

SigningAlg = Alg  # the algorithms the stack signs with, stated once in common/keys.py

DEFAULT_DATA_DIR = Path(".mockehr")


class ServiceSettings(BaseSettings):
    """What every service needs: where it listens, its public URL, its DB, TLS and secrets."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # The name under which this service's keys are stored and its logs are tagged.
    service_name: str = "service"

    # Production mode: refuse to start with any development default (see _check_production).
    production: bool = False
    # The data directory: dev CA, server certificate and the development secrets.
    data_dir: Path = DEFAULT_DATA_DIR
    # SQLite or PostgreSQL URL; empty means SQLite `mockehr.db` in the data directory.
    database_url: str = ""
    # Only the example CDS Service uses Redis (its jti replay store); the others ignore it.
    redis_url: str | None = None

    # Informational: uvicorn's --host decides where the service listens.
    host: str = "127.0.0.1"
    # Used for the default public URL; uvicorn's --port decides where the service listens.
    port: int = Field(default=0, ge=0, le=65535)
    # The externally visible base URL (scheme, host, port, path prefix), without a trailing slash.
    public_url: str = ""

    # Sets HSTS and the default URL scheme; TLS itself is uvicorn's --ssl-* flags.
    tls: bool = True
    # Server certificate and key (default: <data_dir>/tls/server.pem and server-key.pem);
    # required in production mode. uvicorn's flags decide which files are served.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # The CA bundle clients in this service trust in addition to the system store.
    ca_file: Path | None = None

    # 32 bytes, base64url: the AES-256-GCM key that encrypts private signing keys at rest (and
    # from which the authserver derives its CSRF key). Dev: generated into <data_dir>/kek.
    key_encryption_key: SecretStr | None = None
    # The admin API token, shared by the authserver and the EHR. Dev: <data_dir>/admin-token.
    admin_token: SecretStr | None = None

    # Algorithm of the first signing key a service creates; `mockehr keys rotate --alg` changes it.
    signing_alg: SigningAlg = "ES384"
    # Leeway for exp/nbf/iat checks; small on purpose (RFC 8725 §3.10 spirit: short lifetimes).
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=120)
    # Not read by any code: an access token's lifetime is MOCKEHR_AUTH_ACCESS_TOKEN_LIFETIME_SECONDS,
    # and an old key stays published for `mockehr keys rotate --overlap`.
    max_token_lifetime_seconds: int = Field(default=300, ge=10, le=3600)
    # How often a process re-reads the key table (picks up `mockehr keys rotate`).
    key_refresh_seconds: float = Field(default=2.0, gt=0, le=300)
    # A rotated-in key is published this long before it signs (verifiers refetch on unknown kid
    # at most once a second, so they always know a key before they see it).
    key_publish_ahead_seconds: float = Field(default=5.0, ge=0, le=600)

    # Timeout of outbound HTTP calls (connect at most 5 s).
    http_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # Every request body, on every route, is bounded before it is parsed or authenticated
    # (common/middleware.py:BodyLimitMiddleware): 413 beyond max_body_bytes, 400 beyond
    # max_json_depth levels of arrays and objects.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    max_json_depth: int = Field(default=64, ge=8, le=128)
    # Every statement of the service's database sessions stops after this long (common/db.py):
    # a runaway query cannot outlive its client or hold a backend for minutes.
    db_statement_timeout_seconds: float = Field(default=15.0, gt=0, le=3600)
    # Connections per process: db_pool_size kept open, as many again opened under a burst
    # (PostgreSQL; SQLite uses the same bounds). A request that finds every connection busy
    # waits up to db_pool_timeout_seconds for one, then gets 503 with Retry-After (never 500).
    # Size db_pool_size x 2 x processes below the server's max_connections.
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    # Log level of the service's own lines (uvicorn's output is logged too).
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_publish_ahead(self) -> ServiceSettings:
        # Every replica serves a JWKS at most key_refresh_seconds old, verifiers refetch at most
        # once a second, and key ages are whole seconds: a new key must wait longer than that.
        if self.key_publish_ahead_seconds and self.key_publish_ahead_seconds < self.key_refresh_seconds + 2:
            raise ValueError("key_publish_ahead_seconds must be 0 or ≥ key_refresh_seconds + 2")
        return self

    @model_validator(mode="after")
    def _check_production(self) -> ServiceSettings:
        if not self.production:
            return self
        problems: list[str] = []
        if not self.tls:
            problems.append("tls must be on")
        if self.key_encryption_key is None:
            problems.append("key_encryption_key is required")
        if self.admin_token is None:
            problems.append("admin_token is required")
        if not self.database_url:
            problems.append("database_url is required (no embedded default)")
        if not self.public_url:
            problems.append("public_url is required")
        elif not self.public_url.startswith("https://"):
            problems.append("public_url must be https")
        if self.tls and (self.tls_cert_file is None or self.tls_key_file is None):
            problems.append("tls_cert_file and tls_key_file are required")
        if problems:
            raise ValueError("production mode: " + "; ".join(problems))
        return self

    # Derived values -----------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def base_url(self) -> str:
        """This service's public base URL (defaults to scheme://localhost:port)."""
        return self.public_url or f"{self.scheme}://localhost:{self.port}"

    @property
    def db_url(self) -> str:
        raw = self.database_url or f"sqlite:///{(self.data_dir / 'mockehr.db').resolve()}"
        return normalize_database_url(raw)

    @property
    def ca_path(self) -> Path:
        return self.ca_file or self.data_dir / "ca.pem"

    @property
    def cert_path(self) -> Path:
        return self.tls_cert_file or self.data_dir / "tls" / "server.pem"

    @property
    def key_path(self) -> Path:
        return self.tls_key_file or self.data_dir / "tls" / "server-key.pem"

    def kek(self) -> bytes:
        """The key-encryption key (32 bytes) that protects private keys at rest."""
        from common.crypto import decode_kek

        if self.key_encryption_key is not None:
            return decode_kek(self.key_encryption_key.get_secret_value())
        if self.production:
            raise ConfigError("production mode: key_encryption_key is required")
        return decode_kek(read_or_create_secret(self.data_dir / "kek"))

    def admin_secret(self) -> str:
        """The admin API token (dev: generated once into `<data_dir>/admin-token`, mode 0600)."""
        if self.admin_token is not None:
            return self.admin_token.get_secret_value()
        if self.production:
            raise ConfigError("production mode: admin_token is required")
        return read_or_create_secret(self.data_dir / "admin-token")


_S = TypeVar("_S", bound=ServiceSettings)


def load_settings(cls: type[_S]) -> _S:
    """Build settings from the environment, turning validation errors into one-line ConfigErrors."""
    from pydantic import ValidationError

    try:
        return cls()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from None
