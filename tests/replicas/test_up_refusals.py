"""`mockehr up --replicas N` refuses, in one line and before starting anything, what it cannot run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _up(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mockehr", "up", "--data-dir", str(tmp_path / ".mockehr"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "300", **(env or {})},
    )


def test_replicas_on_sqlite_are_refused_in_one_line_before_anything_starts(tmp_path: Path) -> None:
    result = _up(tmp_path, "--replicas", "2", "--base-port", "23500")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --replicas needs PostgreSQL (--db postgresql://… or MOCKEHR_DATABASE_URL): replicas on one SQLite "
        "file would contend for its single writer"
    ]
    assert result.stdout == ""
    assert not (tmp_path / ".mockehr").exists()
