"""`make soak`, tiny and bounded (10 users, 5 s): the real driver against the real replica
topology, checked for what it promises — every kind of request sent, every acknowledged create
read back, figures as JSON, and an exit code that says whether the run passed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.replicas.conftest import free_replica_base_port

pytestmark = pytest.mark.e2e


def test_a_short_soak_sends_every_kind_reads_back_every_create_and_reports_figures(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "--users",
            "10",
            "--seconds",
            "5",
            "--replicas",
            "2",
            "--base-port",
            str(free_replica_base_port()),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.exists(), result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert json.loads(result.stdout) == report
    assert set(report["kinds"]) == {"token", "read", "search", "hook", "create"}
    for kind, figures in report["kinds"].items():
        assert figures["requests"] > 0 and figures["p50_ms"] <= figures["p95_ms"], kind
    assert report["acknowledged_creates"] == report["kinds"]["create"]["statuses"].get("201", 0) > 0
    assert report["lost_writes"] == 0
    assert report["undocumented_5xx_examples"] == []
    # The exit code is the verdict, and a failed run says why on one line.
    assert result.returncode == (0 if report["passed"] else 1), result.stderr
    assert report["passed"] == (report["failures"] == [])
    if not report["passed"]:
        assert result.stderr.strip().startswith("soak FAILED: "), result.stderr
