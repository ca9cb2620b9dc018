"""The interop tests' third-party venvs (bench/venvs.py makes them): with CI=true a failed install
fails the test; elsewhere (an offline laptop) it skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.venvs import ROOT, VenvInstallError
from bench.venvs import pinned_venv as _pinned_venv

__all__ = ["ROOT", "pinned_venv"]


def pinned_venv(name: str, requirements: Path) -> Path:
    try:
        return _pinned_venv(name, requirements)
    except VenvInstallError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
