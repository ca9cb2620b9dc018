"""The npm `fhirclient` library for the browser tests, installed from the npm registry by `npm ci`
from the committed package.json and package-lock.json (the lock pins the version and every
integrity hash). `.ci/run` installs it before the suite; a test that finds it missing or installed
from an older lock file runs `npm ci` itself. With CI=true a missing npm is a failure, not a skip.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
from pathlib import Path

from tests.needs import missing

HERE = Path(__file__).resolve().parent / "jsapp"
PUBLIC = HERE / "public"
BUNDLE = HERE / "node_modules" / "fhirclient" / "build" / "fhir-client.js"
# Written after a complete `npm ci`: the hash of the lock file it installed.
MARKER = HERE / "node_modules" / ".mockehr-lock-sha256"


def fhirclient_bundle() -> Path:
    """fhirclient's browser bundle (`build/fhir-client.js`), installed by `npm ci` if needed."""
    lock = hashlib.sha256((HERE / "package-lock.json").read_bytes()).hexdigest()
    if MARKER.exists() and MARKER.read_text() == lock and BUNDLE.exists():
        return BUNDLE
    npm = shutil.which("npm")
    if npm is None:
        missing("npm is not installed (.ci/run installs Debian's nodejs and npm)")
    # Two pytest workers may get here at once: one installs, the other waits and finds it done.
    with (HERE / ".npm-ci.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if not (MARKER.exists() and MARKER.read_text() == lock):
            # --ignore-scripts: the bundle is prebuilt; no package's install script needs to run.
            result = subprocess.run(
                [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                cwd=HERE,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
            MARKER.write_text(lock)
    assert BUNDLE.exists(), BUNDLE
    return BUNDLE
