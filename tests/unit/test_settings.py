"""common.settings: production mode refuses every dev default; dev mode generates its secrets once, 0600."""

from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from common.db import parse_database_url
from common.errors import ConfigError
from common.settings import ServiceSettings, load_settings

PREFIX = "MOCKEHR_UNITTEST_"
KEK_VALUE = base64.urlsafe_b64encode(bytes(range(32))).rstrip(b"=").decode()


class UnitSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    service_name: str = "unittest"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)


def production_env(tmp_path: Path) -> dict[str, str]:
    return {
        "PRODUCTION": "true",
        "DATA_DIR": str(tmp_path),
        "DATABASE_URL": "postgresql://mockehr:pw@db/mockehr",
        "PUBLIC_URL": "https://auth.example.org",
        "TLS": "true",
        "TLS_CERT_FILE": str(tmp_path / "cert.pem"),
        "TLS_KEY_FILE": str(tmp_path / "key.pem"),
        "KEY_ENCRYPTION_KEY": KEK_VALUE,
        "ADMIN_TOKEN": "admin-secret-value",
    }


def set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(PREFIX + name, value)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- production mode --------------------------------------------------------------------------


def test_a_complete_production_configuration_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    set_env(monkeypatch, production_env(tmp_path))

    settings = load_settings(UnitSettings)

    assert settings.production is True
    assert settings.kek() == bytes(range(32))
    assert settings.admin_secret() == "admin-secret-value"
    assert settings.db_url == "postgresql+asyncpg://mockehr:pw@db/mockehr"
    assert settings.base_url == "https://auth.example.org"
    assert not (tmp_path / "kek").exists()
    assert not (tmp_path / "admin-token").exists()


@pytest.mark.parametrize(
    ("drop", "override", "problem"),
    [
        (None, {"TLS": "false"}, "tls must be on"),
        ("KEY_ENCRYPTION_KEY", {}, "key_encryption_key is required"),
        ("ADMIN_TOKEN", {}, "admin_token is required"),
        ("DATABASE_URL", {}, "database_url is required (no embedded default)"),
        (None, {"DATABASE_URL": ""}, "database_url is required (no embedded default)"),
        ("PUBLIC_URL", {}, "public_url is required"),
        (None, {"PUBLIC_URL": "/"}, "public_url is required"),
        (None, {"PUBLIC_URL": "http://auth.example.org"}, "public_url must be https"),
        (None, {"PUBLIC_URL": "auth.example.org"}, "public_url must be https"),
        ("TLS_CERT_FILE", {}, "tls_cert_file and tls_key_file are required"),
        ("TLS_KEY_FILE", {}, "tls_cert_file and tls_key_file are required"),
    ],
)
def test_production_mode_refuses_each_missing_or_unsafe_item_and_names_it(
    drop: str | None, override: dict[str, str], problem: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = production_env(tmp_path)
    if drop:
        del env[drop]
    env.update(override)
    set_env(monkeypatch, env)

    with pytest.raises(ConfigError) as info:
        load_settings(UnitSettings)

    message = str(info.value)
    assert message == f"invalid setting settings: Value error, production mode: {problem}"
    assert "\n" not in message
    assert KEK_VALUE not in message
    assert "admin-secret-value" not in message


def test_production_mode_lists_every_problem_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    set_env(monkeypatch, {"PRODUCTION": "true", "TLS": "false", "PUBLIC_URL": "http://x"})

    with pytest.raises(ConfigError) as info:
        load_settings(UnitSettings)

    assert str(info.value) == (
        "invalid setting settings: Value error, production mode: tls must be on; "
        "key_encryption_key is required; admin_token is required; "
        "database_url is required (no embedded default); public_url must be https"
    )


def test_production_mode_is_refused_when_constructed_directly_too(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"production mode: .*key_encryption_key is required"):
        UnitSettings(production=True, data_dir=tmp_path)


def test_production_kek_and_admin_secret_never_fall_back_to_generated_files(tmp_path: Path) -> None:
    # model_construct skips validation: the accessors must refuse on their own, not generate.
    settings = UnitSettings.model_construct(production=True, data_dir=tmp_path)

    with pytest.raises(ConfigError, match=r"^production mode: key_encryption_key is required$"):
        settings.kek()
    with pytest.raises(ConfigError, match=r"^production mode: admin_token is required$"):
        settings.admin_secret()
    assert list(tmp_path.iterdir()) == []


# --- dev mode secrets ---------------------------------------------------------------------------


def test_dev_mode_kek_is_generated_once_into_the_data_dir_with_mode_0600(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = UnitSettings(data_dir=data_dir)

    first = settings.kek()
    second = UnitSettings(data_dir=data_dir).kek()

    assert len(first) == 32
    assert second == first
    assert mode(data_dir / "kek") == 0o600
    stored = (data_dir / "kek").read_text().strip()
    assert base64.urlsafe_b64decode(stored + "=" * (-len(stored) % 4)) == first


def test_dev_mode_kek_differs_between_data_dirs(tmp_path: Path) -> None:
    assert UnitSettings(data_dir=tmp_path / "a").kek() != UnitSettings(data_dir=tmp_path / "b").kek()


def test_dev_mode_admin_secret_is_generated_once_into_the_data_dir_with_mode_0600(tmp_path: Path) -> None:
    settings = UnitSettings(data_dir=tmp_path)

    first = settings.admin_secret()
    second = settings.admin_secret()

    assert second == first
    assert len(first) >= 43
    assert mode(tmp_path / "admin-token") == 0o600
    assert (tmp_path / "admin-token").read_text().strip() == first


def test_given_secrets_win_over_files_and_are_hidden_in_repr(tmp_path: Path) -> None:
    settings = UnitSettings(data_dir=tmp_path, key_encryption_key=KEK_VALUE, admin_token="given-admin")

    assert settings.kek() == bytes(range(32))
    assert settings.admin_secret() == "given-admin"
    assert list(tmp_path.iterdir()) == []
    assert KEK_VALUE not in repr(settings)
    assert "given-admin" not in repr(settings)


def test_a_malformed_given_kek_is_a_config_error(tmp_path: Path) -> None:
    settings = UnitSettings(data_dir=tmp_path, key_encryption_key="dG9vLXNob3J0")  # 9 bytes

    with pytest.raises(ConfigError, match="must decode to 32 bytes"):
        settings.kek()


# --- load_settings ----------------------------------------------------------------------------


def test_load_settings_reads_the_prefixed_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    set_env(monkeypatch, {"PORT": "8443", "DATA_DIR": str(tmp_path), "PUBLIC_URL": "https://ehr.example.org///"})
    monkeypatch.setenv("PORT", "1")  # an unprefixed variable is not ours

    settings = load_settings(UnitSettings)

    assert settings.port == 8443
    assert settings.data_dir == tmp_path
    assert settings.public_url == "https://ehr.example.org"
    assert settings.base_url == "https://ehr.example.org"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PORT", "abc", "invalid setting port: Input should be a valid integer, unable to parse string as an integer"),
        ("PORT", "70000", "invalid setting port: Input should be less than or equal to 65535"),
        (
            "PRODUCTION",
            "maybe",
            "invalid setting production: Input should be a valid boolean, unable to interpret input",
        ),
        ("SIGNING_ALG", "HS256", "invalid setting signing_alg: Input should be 'ES384', 'RS384' or 'ES256'"),
        ("JWT_LEEWAY_SECONDS", "3600", "invalid setting jwt_leeway_seconds: Input should be less than or equal to 120"),
        ("LOG_LEVEL", "verbose", "invalid setting log_level: Input should be 'debug', 'info', 'warning' or 'error'"),
    ],
)
def test_load_settings_turns_a_bad_env_value_into_a_single_line_config_error(
    name: str, value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PREFIX + name, value)

    with pytest.raises(ConfigError) as info:
        load_settings(UnitSettings)

    assert str(info.value) == message
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is None


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = UnitSettings(data_dir=tmp_path)

    with pytest.raises(ValidationError):
        settings.production = True  # type: ignore[misc]


# --- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite:////var/lib/mockehr/db.sqlite", "sqlite+aiosqlite:////var/lib/mockehr/db.sqlite"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u:p@db:5432/mockehr", "postgresql+asyncpg://u:p@db:5432/mockehr"),
        ("postgres://u@db/mockehr", "postgresql+asyncpg://u@db/mockehr"),
        ("postgresql+asyncpg://u@db/mockehr", "postgresql+asyncpg://u@db/mockehr"),
    ],
)
def test_db_url_normalises_onto_the_async_drivers(given: str, expected: str, tmp_path: Path) -> None:
    assert UnitSettings(data_dir=tmp_path, database_url=given).db_url == expected


def test_db_url_defaults_to_an_absolute_sqlite_file_in_the_data_dir(tmp_path: Path) -> None:
    assert UnitSettings(data_dir=tmp_path).db_url == f"sqlite+aiosqlite:///{tmp_path.resolve() / 'mockehr.db'}"


def test_derived_paths_default_into_the_data_dir(tmp_path: Path) -> None:
    settings = UnitSettings(data_dir=tmp_path, tls=False, port=8080)

    assert settings.ca_path == tmp_path / "ca.pem"
    assert settings.cert_path == tmp_path / "tls" / "server.pem"
    assert settings.key_path == tmp_path / "tls" / "server-key.pem"
    assert settings.scheme == "http"
    assert settings.base_url == "http://localhost:8080"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not a url", "cannot parse database URL"),
        ("://", "cannot parse database URL"),
        ("", "cannot parse database URL"),
        ("mysql://u@db/x", "unsupported database 'mysql'"),
        ("mysql+aiomysql://u@db/x", "unsupported database 'mysql+aiomysql'"),
        ("oracle://u@db/x", "unsupported database 'oracle'"),
        ("postgresql+psycopg2://u@db/x", "unsupported database 'postgresql+psycopg2'"),
        ("sqlite://", "sqlite URL needs a file path"),
        ("sqlite:///", "sqlite URL needs a file path"),
        ("sqlite+aiosqlite://", "sqlite URL needs a file path"),
    ],
)
def test_parse_database_url_refuses_garbage_unsupported_schemes_and_pathless_sqlite(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)) as info:
        parse_database_url(raw)

    assert "\n" not in str(info.value)


def test_parse_database_url_never_echoes_a_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_database_url("mysql://user:hunter2@db/x")

    assert "hunter2" not in str(info.value)


def test_a_bad_database_url_in_settings_surfaces_as_config_error_on_use(tmp_path: Path) -> None:
    settings = UnitSettings(data_dir=tmp_path, database_url="mysql://u@db/x")

    with pytest.raises(ConfigError, match="unsupported database 'mysql'"):
        _ = settings.db_url
