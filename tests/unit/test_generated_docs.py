"""docs/cli.md and docs/configuration.md are generated from the code (tools/docgen.py): a CLI
option or a setting added without `make docs` fails here, so the references never drift."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import ServiceSettings
from tools import docgen

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["cli.md", "configuration.md"])
def test_the_generated_reference_matches_the_code(name: str) -> None:
    path = REPO_ROOT / "docs" / name
    expected = docgen.rendered()[path]
    assert path.read_text() == expected, f"docs/{name} is stale: run `make docs`"


def test_the_rendering_does_not_depend_on_the_terminal_or_the_environment(tmp_path: Path) -> None:
    # A fresh interpreter with another width, another working directory and MOCKEHR_* variables
    # set renders the same text: the merge can re-run `make docs` anywhere.
    script = "from tools import docgen; import sys; sys.stdout.write(''.join(docgen.rendered().values()))"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT),
        "COLUMNS": "37",
        "MOCKEHR_DATA_DIR": str(tmp_path),
        "MOCKEHR_AUTH_PORT": "1234",
        "MOCKEHR_BASE_PORT": "19000",
    }
    other = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert other == "".join(docgen.rendered().values())


def test_the_check_names_a_stale_file_and_says_to_run_make_docs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "docs" / "cli.md"
    stale.parent.mkdir()
    stale.write_text("# old\n")
    fresh = tmp_path / "docs" / "configuration.md"
    fresh.write_text(docgen.render_configuration())
    monkeypatch.setattr(docgen, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(docgen, "CLI_DOC", stale)
    monkeypatch.setattr(docgen, "CONFIG_DOC", fresh)
    assert docgen.main(["--check"]) == 1
    assert capsys.readouterr().err == "docs/cli.md is stale: run `make docs`\n"


def test_every_setting_and_every_command_is_in_the_references() -> None:
    cli = (REPO_ROOT / "docs" / "cli.md").read_text()
    for command in ("mockehr up", "mockehr services add", "mockehr keys rotate", "mockehr probe"):
        assert f"## `{command}`" in cli or f"# `{command}`" in cli
    config = (REPO_ROOT / "docs" / "configuration.md").read_text()
    for _, cls, _ in docgen.SERVICES:
        prefix = str(cls.model_config.get("env_prefix"))
        own = [n for n in cls.model_fields if docgen._declared(cls, n) is not ServiceSettings]
        for name in own:
            assert f"`{prefix}{name.upper()}`" in config
    assert "`MOCKEHR_<SVC>_KEY_ENCRYPTION_KEY`" in config


def test_every_settings_class_in_the_code_is_in_the_configuration_reference() -> None:
    # A new service's settings class must be added to tools/docgen.py:SERVICES, or its
    # variables would be missing from docs/configuration.md without the staleness test noticing.
    declared = set()
    for root in ("common", "authserver", "fhirserver", "ehr", "examples", "mockehr"):
        for path in (REPO_ROOT / root).rglob("*.py"):
            declared |= set(re.findall(r"^class (\w+)\((?:ServiceSettings|BaseSettings)\)", path.read_text(), re.M))
    documented = {cls.__name__ for _, cls, _ in docgen.SERVICES} | {"ServiceSettings", "CliSettings"}
    assert declared == documented
