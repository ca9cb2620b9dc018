"""Checks of docker-compose.yml that need no Docker engine.

`docker-compose config` validates the file against the Compose schema (the Debian package's
docker-compose 1.29 works without a daemon); the rest reads the file with PyYAML (anchors and
merge keys resolved) and checks it against the settings classes and the stack's security rules.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"

WEB_SERVICES = ("authserver", "fhirserver", "ehr", "cds-example", "smart-example")
STACK_SERVICES = (*WEB_SERVICES, "init")

# Which settings class reads the environment of which compose service.
SETTINGS_OF_SERVICE = {
    "authserver": "authserver.settings:AuthSettings",
    "fhirserver": "fhirserver.settings:FhirSettings",
    "ehr": "ehr.settings:EhrSettings",
    "cds-example": "examples.cds_service.settings:CdsSettings",
    "smart-example": "examples.smart_app.settings:SmartAppSettings",
    "init": "mockehr.settings:CliSettings",
}

# Env values that are a pure reference to a variable with no default (`${VAR}`, `${VAR:?msg}`,
# `$VAR`): the value comes from whoever runs compose, not from this file.
_REQUIRED_REFERENCE = re.compile(r"^\$(\{[A-Za-z_][A-Za-z0-9_]*(:?\?[^}]*)?\}|[A-Za-z_][A-Za-z0-9_]*)$")
# What a generated key or token looks like (e.g. 32 random bytes, base64url): a long unbroken run.
_RANDOM_LOOKING = re.compile(r"[A-Za-z0-9_\-+/]{32,}={0,2}")


def _compose() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose().get("services")
    assert isinstance(services, dict) and services, "docker-compose.yml has no services"
    return services


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's `environment`, in either the mapping or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {str(k): None if v is None else str(v) for k, v in env.items()}
    result: dict[str, str | None] = {}
    for item in env:
        name, sep, value = str(item).partition("=")
        result[name] = value if sep else None
    return result


def _settings_class(dotted: str) -> type:
    module_name, _, class_name = dotted.partition(":")
    found = getattr(importlib.import_module(module_name), class_name)
    assert isinstance(found, type), dotted
    return found


def _env_names(cls: type) -> set[str]:
    prefix = cls.model_config.get("env_prefix", "")  # type: ignore[attr-defined]
    return {(prefix + name).upper() for name in cls.model_fields}  # type: ignore[attr-defined]


def _secret_env_names(cls: type) -> set[str]:
    prefix = cls.model_config.get("env_prefix", "")  # type: ignore[attr-defined]
    names: set[str] = set()
    for name, field in cls.model_fields.items():  # type: ignore[attr-defined]
        annotation = field.annotation
        if annotation is SecretStr or SecretStr in typing.get_args(annotation):
            names.add((prefix + name).upper())
    return names


def _is_infrastructure(name: str, service: dict[str, Any]) -> bool:
    image = str(service.get("image", ""))
    return name in ("postgres", "redis") or image.startswith(("postgres", "redis"))


def _published_ports(service: dict[str, Any]) -> list[str | dict[str, Any]]:
    return list(service.get("ports") or [])


def test_docker_compose_config_accepts_the_file() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-compose is not installed (apt-get install -y docker-compose)")
        pytest.skip("docker-compose is not installed")
    result = subprocess.run(
        [binary, "-f", "docker-compose.yml", "config", "--quiet"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stdout}\n{result.stderr}"


def test_the_stack_services_are_all_defined() -> None:
    services = _services()
    missing = [name for name in (*STACK_SERVICES, "postgres", "redis") if name not in services]
    assert not missing, f"services missing from docker-compose.yml: {missing}"


def test_every_environment_variable_is_read_by_a_settings_class() -> None:
    classes = {service: _settings_class(dotted) for service, dotted in SETTINGS_OF_SERVICE.items()}
    every_known = set().union(*(_env_names(cls) for cls in classes.values()))
    unread: list[str] = []
    for name, service in _services().items():
        known = _env_names(classes[name]) if name in classes else every_known
        for var in _environment(service):
            if _is_infrastructure(name, service) and var.startswith("POSTGRES_"):
                continue
            if var not in known:
                unread.append(f"{name}: {var}")
    assert not unread, f"environment variables no settings class reads: {unread}"


def test_every_web_service_and_init_use_the_same_image_and_build() -> None:
    services = _services()
    images = {name: (services[name].get("image"), repr(services[name].get("build"))) for name in STACK_SERVICES}
    assert len(set(images.values())) == 1, f"the stack's services use different images: {images}"
    image, build = next(iter(images.values()))
    assert image, "the stack's services name no image"
    assert build != repr(None), "the stack's services have no build section"


def test_every_web_service_has_a_healthcheck_that_probes_its_own_port() -> None:
    services = _services()
    for name in WEB_SERVICES:
        service = services[name]
        healthcheck = service.get("healthcheck") or {}
        test = healthcheck.get("test")
        assert test and not healthcheck.get("disable"), f"{name} has no healthcheck"
        command = [str(part) for part in service.get("command") or []]
        assert "--port" in command, f"{name} does not say its port in its command"
        port = command[command.index("--port") + 1]
        probe = " ".join(test) if isinstance(test, list) else str(test)
        assert f"https://localhost:{port}/readyz" in probe, f"{name}'s healthcheck does not probe its /readyz"


def test_every_web_service_waits_for_init_to_complete_successfully() -> None:
    services = _services()
    for name in WEB_SERVICES:
        depends_on = services[name].get("depends_on")
        assert isinstance(depends_on, dict), f"{name}: depends_on must be the long form with conditions"
        init = depends_on.get("init") or {}
        assert init.get("condition") == "service_completed_successfully", f"{name} does not wait for init"


def test_no_port_is_published_beyond_the_loopback_address() -> None:
    exposed: list[str] = []
    for name, service in _services().items():
        for port in _published_ports(service):
            if isinstance(port, dict):
                if port.get("published") is not None and port.get("host_ip") != "127.0.0.1":
                    exposed.append(f"{name}: {port}")
            elif not str(port).startswith("127.0.0.1:"):
                exposed.append(f"{name}: {port}")
    assert not exposed, f"ports published on all interfaces: {exposed}"


def test_no_secret_is_written_in_the_compose_file() -> None:
    classes = [_settings_class(dotted) for dotted in SETTINGS_OF_SERVICE.values()]
    secret_names = set().union(*(_secret_env_names(cls) for cls in classes))
    leaked: list[str] = []
    for name, service in _services().items():
        for var, value in _environment(service).items():
            is_secret = var in secret_names or var.endswith(("KEY_ENCRYPTION_KEY", "ADMIN_TOKEN"))
            if is_secret and value is not None and not _REQUIRED_REFERENCE.match(value):
                leaked.append(f"{name}: {var}")
            elif value is not None and _RANDOM_LOOKING.search(value):
                leaked.append(f"{name}: {var} looks like a key or token")
        command = service.get("command") or []
        parts = command if isinstance(command, list) else str(command).split()
        for part in parts:
            if _RANDOM_LOOKING.search(str(part)):
                leaked.append(f"{name}: command argument {part!r} looks like a key or token")
            if str(part).startswith(("--kek", "--key-encryption-key", "--admin-token")):
                leaked.append(f"{name}: command passes a secret ({part})")
    assert not leaked, f"secrets written in docker-compose.yml: {leaked}"
