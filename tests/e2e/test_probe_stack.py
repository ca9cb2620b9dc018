"""`mockehr probe` against the running stack's example CDS Service: every check passes.

The stack (`mockehr up`) configures the example CDS Service to trust the probe's issuer
(https://localhost:{base+5}) and JWKS URL, as a user registers the probe with their own service.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import UpProcess

pytestmark = pytest.mark.e2e


def _probe(up: UpProcess, *extra: str) -> subprocess.CompletedProcess[str]:
    url = f"https://localhost:{up.base_port + 3}/cds-services"
    args = ["probe", url, "--data-dir", str(up.data_dir), "--base-port", str(up.base_port), *extra]
    return subprocess.run(
        [sys.executable, "-m", "mockehr", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_mockehr_probe_reports_every_check_passed_against_the_stacks_example_cds_service(
    stack: UpProcess, tmp_path: Path
) -> None:
    html = tmp_path / "probe.html"
    result = _probe(stack, "--json", "--html", str(html))

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["passed"] is True
    assert report["issuer"] == f"https://localhost:{stack.base_port + 5}"
    assert report["score"]["pass"] == report["score"]["total"]
    assert {r["verdict"] for r in report["results"]} == {"pass"}
    kinds = {r["kind"] for r in report["results"]}
    assert kinds == {"discovery", "service", "feedback"}
    page = html.read_text()
    assert page.startswith("<!doctype html>")
    assert "<script" not in page


def test_the_probe_keeps_its_key_so_a_second_run_passes_with_the_same_jwks(stack: UpProcess) -> None:
    key_file = stack.data_dir / "probe" / "probe-key.pem"
    first = _probe(stack)
    key = key_file.read_bytes()

    second = _probe(stack)

    assert first.returncode == second.returncode == 0, second.stdout[-4000:]
    assert "checks passed, 0 failed, 0 inconclusive" in second.stdout
    assert key_file.read_bytes() == key
    assert key_file.stat().st_mode & 0o777 == 0o600
