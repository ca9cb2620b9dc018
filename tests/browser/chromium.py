"""Debian's Chromium for the browser tests, driven by Playwright through `executable_path`.

No tool ever downloads a browser of its own (.ci/run installs Debian's `chromium`). With CI=true
a missing Chromium is a failure, not a skip, like a missing PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.needs import missing

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
# Playwright's type for a browser's environment (`BrowserType.launch(env=...)`).
BrowserEnv = dict[str, str | float | bool]


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    missing("Debian chromium is not installed (.ci/run installs it)")


def trusting_home(ca: Path, home: Path) -> BrowserEnv:
    """The environment of a Chromium that trusts the dev CA for real: a fresh NSS database in
    `home`/.pki/nssdb (where Chromium on Linux reads user trust anchors) holding `ca` as a trusted
    authority, made with `certutil` from Debian's libnss3-tools. Every other certificate is checked
    as usual, so nothing like `ignore_https_errors` is needed."""
    certutil = shutil.which("certutil")
    if certutil is None:
        missing("certutil is not installed (Debian's libnss3-tools; .ci/run installs it)")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True, exist_ok=True)
    for args in (["-N", "--empty-password"], ["-A", "-n", "mockehr dev CA", "-t", "C,,", "-i", str(ca)]):
        subprocess.run([certutil, "-d", f"sql:{nssdb}", *args], check=True, capture_output=True, timeout=30)
    return {**os.environ, "HOME": str(home)}


@contextmanager
def trusted_chromium(ca: Path, home: Path) -> Iterator[Any]:
    """Debian's Chromium, launched by Playwright, trusting `ca` through `trusting_home`."""
    from playwright.sync_api import sync_playwright

    env = trusting_home(ca, home)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, env=env)
        try:
            yield chromium
        finally:
            chromium.close()
