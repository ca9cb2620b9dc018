"""One stack per data dir, found by the other commands, stopped cleanly: `mockehr up` in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import UpProcess, free_base_port, start_up

pytestmark = pytest.mark.e2e


def _mockehr(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOCKEHR_")}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "mockehr", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours would still answer: ask /proc for its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_the_running_stack_is_recorded_in_its_data_dir(stack: UpProcess) -> None:
    record_file = stack.data_dir / "stack.json"
    assert record_file.stat().st_mode & 0o777 == 0o600
    record = json.loads(record_file.read_text())
    assert record["pid"] == stack.process.pid
    assert record["base_port"] == stack.base_port
    services = record["services"]
    assert services["ehr"]["url"] == f"https://localhost:{stack.base_port}"
    assert services["fhirserver"]["url"] == f"https://localhost:{stack.base_port + 2}/fhir"
    assert {s["port"] for s in services.values()} == {stack.base_port + i for i in range(5)}
    assert all(_alive(s["pid"]) for s in services.values())


def test_a_second_up_on_the_same_data_dir_is_refused_in_one_line_naming_the_running_stack(stack: UpProcess) -> None:
    before = (stack.data_dir / "stack.json").read_text()
    result = _mockehr(
        "up", "--data-dir", str(stack.data_dir), "--base-port", str(free_base_port()), cwd=stack.data_dir.parent
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: a stack is already running on {stack.data_dir}")
    assert f"pid {stack.process.pid}" in lines[0] and f"https://localhost:{stack.base_port}" in lines[0]
    # The running stack is untouched: same record, still serving.
    assert (stack.data_dir / "stack.json").read_text() == before
    ca = str(stack.data_dir / "ca.pem")
    assert httpx.get(f"https://localhost:{stack.base_port}/healthz", verify=ca).status_code == 200


def test_commands_find_the_running_stack_with_no_flags(stack: UpProcess) -> None:
    # The fixture's data dir is <tmp>/.mockehr: the default data dir of a command run in <tmp>.
    assert stack.data_dir.name == ".mockehr"
    here = stack.data_dir.parent
    services = _mockehr("services", "list", "--json", cwd=here)
    assert services.returncode == 0, services.stderr
    assert "patient-greeting" in {s["id"] for s in json.loads(services.stdout)}
    clients = _mockehr("clients", "list", "--json", cwd=here)
    assert clients.returncode == 0, clients.stderr
    assert {"ehr", "cds-example"} <= {c["client_id"] for c in json.loads(clients.stdout)}
    users = json.loads((stack.data_dir / "demo-users.json").read_text())
    login, user = next(iter(users.items()))
    hook = _mockehr(
        "hook", "patient-view", "--user", login, "--patient", f"Patient/{user['patients'][0]}", "--json", cwd=here
    )
    assert hook.returncode == 0, hook.stdout + hook.stderr
    results = {s["serviceId"]: s for s in json.loads(hook.stdout)["services"]}
    assert results["patient-greeting"]["cards"][0]["summary"].startswith("Now seeing: ")


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_ends_every_service_at_once_without_an_error_in_the_logs_and_clears_the_record(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    data_dir = tmp_path / ".mockehr"
    up = start_up(data_dir, free_base_port(), "--patients", "3")
    up.wait_for("Ctrl-C stops every service.")
    pids = [s["pid"] for s in json.loads((data_dir / "stack.json").read_text())["services"].values()]
    users = json.loads((data_dir / "demo-users.json").read_text())
    login, user = next(iter(users.items()))
    # Traffic first, so every service holds idle keep-alive connections from its peers.
    hook = _mockehr(
        "hook",
        "patient-view",
        "--user",
        login,
        "--patient",
        user["patients"][0],
        "--data-dir",
        str(data_dir),
        cwd=tmp_path,
    )
    assert hook.returncode == 0, hook.stdout + hook.stderr

    up.process.send_signal(stop_signal)
    # A bounded wait, not a benchmark: `up` gives its services 2 s, then kills what is left.
    assert up.process.wait(20) == 0, up.output
    time.sleep(0.1)
    assert not [pid for pid in pids if _alive(pid)]
    assert up.lines[-2:] == ["stopping…", "stopped"]
    logs = {p.name: p.read_text() for p in (data_dir / "logs").glob("*.log")}
    assert len(logs) == 5
    assert {name: [line for line in text.splitlines() if "ERROR" in line] for name, text in logs.items()} == {
        name: [] for name in logs
    }
    assert all("Application shutdown complete." in text for text in logs.values())
    assert not (data_dir / "stack.json").exists()
