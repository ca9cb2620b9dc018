"""Every `mockehr` command, enumerated from the typer app (a new command is covered without being
listed here), fails in one line with exit code 2 on a missing, an empty or a corrupt data dir,
and none but `up` and `init` creates a data dir or writes into an empty one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from common.tls import ensure_ca
from mockehr.cli import app

# The two commands that make a data dir; everything else needs one they made.
CREATORS = {("up",), ("init",)}

# Plausible values for required parameters, by name; anything else gets "x".
EXAMPLE_VALUES = {
    "hook": "patient-view",
    "url": "https://localhost:1/cds-services",
    "discovery_url": "https://localhost:1/cds-services",
    "service": "ehr",
    "hosts": "localhost",
    "kind": "backend",
    "user": "Practitioner/x",
    "patient": "x",
}


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, command) of every leaf command. Duck-typed: typer vendors its own copy of click."""
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def _required_args(command: Any, bundle: Path) -> list[str]:
    args: list[str] = []
    for param in command.params:
        if not param.required or param.name is None:
            continue
        value = str(bundle) if param.name == "files" else EXAMPLE_VALUES.get(param.name, "x")
        if param.param_type_name == "option":
            args += [param.opts[0], value]
        else:
            args.append(value)
    return args


COMMANDS = [(path, cmd) for path, cmd in _commands(typer.main.get_group(app)) if path not in CREATORS]


def test_the_enumeration_sees_the_whole_command_line() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"hook", "services list", "clients list", "keys rotate", "probe", "ca path", "db upgrade"} <= names


def _corrupt_files(data_dir: Path) -> None:
    """What `init` makes, each file garbage: a CA that is no certificate, an empty admin token, a
    key-encryption key that is no key, a database file that is no database."""
    data_dir.mkdir()
    (data_dir / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    (data_dir / "ca-key.pem").write_text("garbage")
    (data_dir / "admin-token").write_text("")
    (data_dir / "kek").write_text("not a key")
    (data_dir / "cursor-key").write_text("")
    (data_dir / "mockehr.db").write_bytes(b"this is not an SQLite database" * 100)


def _corrupt_record(data_dir: Path) -> None:
    """A good CA but a stack record that is not JSON."""
    ensure_ca(data_dir)
    (data_dir / "stack.json").write_text("{not json")


@pytest.mark.parametrize("state", ["missing", "empty", "corrupt-files", "corrupt-record"])
@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_fails_in_one_line_on_a_missing_empty_or_corrupt_data_dir(
    path: tuple[str, ...], command: Any, state: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MOCKEHR_DATA_DIR", "MOCKEHR_DATABASE_URL", "MOCKEHR_ADMIN_TOKEN", "MOCKEHR_KEY_ENCRYPTION_KEY"):
        monkeypatch.delenv(name, raising=False)
    # Never the default port: a stack of someone else's may run there.
    monkeypatch.setenv("MOCKEHR_BASE_PORT", "1")
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": []}))
    data_dir = tmp_path / "data"
    if state == "empty":
        data_dir.mkdir()
    elif state == "corrupt-files":
        _corrupt_files(data_dir)
    elif state == "corrupt-record":
        _corrupt_record(data_dir)
    before = sorted(p.name for p in data_dir.iterdir()) if data_dir.exists() else None

    result = CliRunner().invoke(app, [*path, *_required_args(command, bundle), "--data-dir", str(data_dir)])

    assert result.exit_code == 2, (result.exception, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    if state == "missing":
        assert "no data directory at" in lines[0]
        assert not data_dir.exists()
    if state == "empty":
        assert "not an initialised data directory" in lines[0]
    if state == "corrupt-record":
        assert "stack.json is not a stack record" in lines[0]
    after = sorted(p.name for p in data_dir.iterdir()) if data_dir.exists() else None
    assert after == before
