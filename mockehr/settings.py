"""Settings of the `mockehr` command line (env prefix MOCKEHR_); flags override them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOCKEHR_", extra="ignore")

    data_dir: Path = Path(".mockehr")
    database_url: str | None = None
    redis_url: str | None = None
    # Unset: what `mockehr up` recorded in the data dir (stack.json), else 127.0.0.1 and 9000.
    host: str | None = None
    base_port: int | None = Field(default=None, ge=1, le=65530)
    # The key-encryption key the services use (their MOCKEHR_<SVC>_KEY_ENCRYPTION_KEY). Unset:
    # `<data_dir>/kek`, as in development mode. Keys made by `keys rotate` / `init` use it.
    key_encryption_key: SecretStr | None = None
