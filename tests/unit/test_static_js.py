"""Every JavaScript file the project serves parses (`node --check`).

A syntax error in one static script silently disables a whole page (the chart's cards, the
admin forms), and only a browser test would notice — late and far from the cause. Node is
installed by .ci/run (Debian's nodejs); with CI=true a missing node is a failure, not a skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.needs import missing

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(
    p
    for p in ROOT.glob("**/*.js")
    if "node_modules" not in p.parts and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
)


def test_the_project_serves_scripts() -> None:
    assert ROOT / "ehr" / "ui" / "static" / "chart.js" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_served_script_parses(script: Path) -> None:
    node = shutil.which("node")
    if node is None:
        missing("node is not installed (Debian's nodejs; .ci/run installs it)")
    result = subprocess.run([node, "--check", str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
