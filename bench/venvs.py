"""A third-party package in a venv of its own, as its users install it: created once per pinned
requirements file under `.venv-interop/<name>-<sha of the file>` (gitignored) and reused after.

Used by the benchmark's peer (bench/peer.py) and the interop tests (tests/interop). Such packages
bring their own FastAPI, Starlette or fhir.resources, so they never share the project's venv.
Creation is bounded in time and serialized by a file lock, so two runs (or two pytest-xdist
workers) never install into the same directory at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT_S = 600.0


class VenvInstallError(RuntimeError):
    """The venv could not be made (offline, or PyPI refused the pinned versions)."""


def venv_home(name: str, requirements: Path) -> Path:
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    return ROOT / ".venv-interop" / f"{name}-{digest}"


def installed(name: str, requirements: Path) -> bool:
    return (venv_home(name, requirements) / ".installed").exists()


def pinned_venv(name: str, requirements: Path) -> Path:
    """The venv's python, installing the requirements first if this exact file was never installed."""
    home = venv_home(name, requirements)
    python = home / "bin" / "python"
    done = home / ".installed"
    home.parent.mkdir(exist_ok=True)
    with (home.parent / f"{home.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return python
        shutil.rmtree(home, ignore_errors=True)  # a half-made venv from an interrupted run
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(requirements)]
        try:
            subprocess.run([sys.executable, "-m", "venv", str(home)], check=True, timeout=120, capture_output=True)
            subprocess.run(pip, check=True, timeout=INSTALL_TIMEOUT_S, capture_output=True, text=True)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(home, ignore_errors=True)
            output = str(getattr(exc, "stderr", None) or getattr(exc, "output", None) or "")[-3000:]
            raise VenvInstallError(f"installing {requirements.name} into its own venv failed: {exc}\n{output}") from exc
        done.write_text(home.name)
    return python
