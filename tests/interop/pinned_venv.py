"""A third-party package in a venv of its own, as its users install it: created once per pinned
requirements file under `.venv-interop/<name>-<sha of the file>` (gitignored) and reused after.

Its dependencies conflict with this project's pins (HealthChain brings fhir.resources 8 and its own
FastAPI), so it never shares the project's venv. Creation is bounded in time and serialized by a
file lock, so two pytest-xdist workers never install into the same directory at once. With CI=true
a failed install fails the test; elsewhere (offline laptop) it skips.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_S = 600.0


def pinned_venv(name: str, requirements: Path) -> Path:
    """The venv's python, installing the requirements first if this exact file was never installed."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    home = ROOT / ".venv-interop" / f"{name}-{digest}"
    python = home / "bin" / "python"
    done = home / ".installed"
    home.parent.mkdir(exist_ok=True)
    with (home.parent / f"{name}-{digest}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return python
        shutil.rmtree(home, ignore_errors=True)  # a half-made venv from an interrupted run
        try:
            subprocess.run([sys.executable, "-m", "venv", str(home)], check=True, timeout=120, capture_output=True)
            subprocess.run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                    str(requirements),
                ],
                check=True,
                timeout=INSTALL_TIMEOUT_S,
                capture_output=True,
                text=True,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(home, ignore_errors=True)
            output = getattr(exc, "stderr", None) or getattr(exc, "output", None) or ""
            message = f"installing {requirements.name} into its own venv failed: {exc}\n{str(output)[-3000:]}"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        done.write_text(digest)
    return python
