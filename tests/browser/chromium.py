"""Debian's Chromium for the browser tests, driven by Playwright through `executable_path`.

No tool ever downloads a browser of its own (.ci/run installs Debian's `chromium`). With CI=true
a missing Chromium is a failure, not a skip, like a missing PostgreSQL.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# Without the background-networking flags Chromium keeps trying hosts this closed network refuses.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = "Debian chromium is not installed (.ci/run installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: this is a failure, not a skip)")
    pytest.skip(reason)
