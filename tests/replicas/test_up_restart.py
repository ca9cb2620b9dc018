"""What `mockehr up` does when one of its services dies (SIGKILL), with and without
`--restart on-failure` (one process per service, SQLite: the supervisor, not the topology)."""

from __future__ import annotations

import json
import os
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import UpProcess, free_base_port, start_up

pytestmark = pytest.mark.e2e


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pids(up: UpProcess) -> dict[str, int]:
    record = json.loads((up.data_dir / "stack.json").read_text())
    return {name: service["pid"] for name, service in record["services"].items()}


@pytest.fixture
def up(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[UpProcess]:
    extra: tuple[str, ...] = getattr(request, "param", ())
    process = start_up(tmp_path / ".mockehr", free_base_port(), "--patients", "2", *extra)
    try:
        process.wait_for("Ctrl-C stops every service.", timeout=300)
        yield process
    finally:
        process.stop()


def test_without_restart_a_killed_service_stops_the_stack_with_one_line_naming_it(up: UpProcess) -> None:
    pids = _pids(up)
    os.kill(pids["fhirserver"], signal.SIGKILL)
    assert up.process.wait(60) == 1
    time.sleep(0.2)  # the output pump's last lines
    errors = [line for line in up.lines if "error" in line.lower()]
    assert errors == [f"error: fhirserver exited with code -9; see {up.data_dir / 'logs' / 'fhirserver.log'}"], (
        up.output
    )
    assert "Traceback" not in up.output
    # Everything else was stopped, and the record of the running stack is gone.
    assert [name for name, pid in pids.items() if _alive(pid)] == []
    assert not (up.data_dir / "stack.json").exists()


@pytest.mark.parametrize("up", [("--restart", "on-failure")], indirect=True)
def test_with_restart_on_failure_a_killed_service_comes_back_and_answers(up: UpProcess) -> None:
    before = _pids(up)
    os.kill(before["fhirserver"], signal.SIGKILL)
    up.wait_for("restarted fhirserver (pid ", timeout=60)
    deadline = time.monotonic() + 30
    after = _pids(up)
    while time.monotonic() < deadline and after["fhirserver"] == before["fhirserver"]:
        time.sleep(0.2)
        after = _pids(up)
    assert after["fhirserver"] != before["fhirserver"] and _alive(after["fhirserver"])
    assert f"restarted fhirserver (pid {after['fhirserver']})" in up.output
    assert "fhirserver exited with code -9; restarting in 0.5 s" in up.output
    # The others were left alone.
    assert {k: v for k, v in after.items() if k != "fhirserver"} == {
        k: v for k, v in before.items() if k != "fhirserver"
    }
    url = f"https://localhost:{up.base_port + 2}/fhir/metadata"
    deadline = time.monotonic() + 120
    status = 0
    with httpx.Client(
        verify=ssl.create_default_context(cafile=str(up.data_dir / "ca.pem")), timeout=5, trust_env=False
    ) as client:
        while time.monotonic() < deadline and status != 200:
            try:
                status = client.get(url).status_code
            except httpx.TransportError:
                time.sleep(0.3)
    assert status == 200
    assert up.process.poll() is None
    assert up.stop() == 0
