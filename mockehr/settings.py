"""Settings of the `mockehr` command line (env prefix MOCKEHR_); flags override them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOCKEHR_", extra="ignore")

    # The data directory every command works on (--data-dir).
    data_dir: Path = Path(".mockehr")
    # The database (--db); unset: the running stack's, else SQLite in the data directory.
    database_url: str | None = None
    # Redis (--redis); unset: the running stack's, else none.
    redis_url: str | None = None
    # The interface (--host) and the EHR's port (--base-port; the others use +1 to +5). Unset: what
    # `mockehr up` recorded in the data dir (stack.json), else 127.0.0.1 and 9000.
    host: str | None = None
    base_port: int | None = Field(default=None, ge=1, le=65530)
    # The key-encryption key the services use (their MOCKEHR_<SVC>_KEY_ENCRYPTION_KEY). Unset:
    # `<data_dir>/kek`, as in development mode. Keys made by `keys rotate` / `init` use it.
    key_encryption_key: SecretStr | None = None
