"""`mockehr up --restart on-failure`: what the supervisor does when a process ends, on fake
processes (no clock, no subprocess): bounded backoff, a bounded number of restarts, and the stack
stopping (ServiceExited) without the option, on a clean exit, or once restarts run out."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from mockehr import supervisor
from mockehr.supervisor import RestartPolicy, Running, ServiceExited


class FakeProcess:
    def __init__(self, pid: int, code: int | None = None) -> None:
        self.pid = pid
        self.returncode = code

    def poll(self) -> int | None:
        return self.returncode


def _running(tmp_path: Path, label: str = "fhirserver-2", code: int | None = None) -> Running:
    log = tmp_path / f"{label}.log"
    process: Any = FakeProcess(100, code)
    return Running("fhirserver", process, log, open(log, "ab"), ["true"], {}, label)


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[list[str]]:
    """Every process the supervisor starts again (argv), started as a fake that is alive."""
    calls: list[list[str]] = []

    def spawn(argv: list[str], env: dict[str, str], log_path: Path) -> tuple[Any, Any]:
        calls.append(argv)
        return FakeProcess(200 + len(calls)), open(log_path, "ab")

    monkeypatch.setattr(supervisor, "_spawn", spawn)
    return calls


def test_without_the_option_the_first_exit_stops_the_stack_naming_the_process(tmp_path: Path) -> None:
    dead = _running(tmp_path, code=-9)
    with pytest.raises(ServiceExited) as stopped:
        supervisor.supervise([dead], RestartPolicy(), now=0.0)
    assert str(stopped.value) == f"fhirserver-2 exited with code -9; see {tmp_path / 'fhirserver-2.log'}"


def test_a_crashed_process_is_restarted_after_a_doubling_delay_capped_at_eight_seconds(
    tmp_path: Path, spawned: list[list[str]]
) -> None:
    policy = RestartPolicy(on_failure=True, max_restarts=10, window_seconds=1000)
    r = _running(tmp_path, code=-9)
    now, delays = 0.0, []
    for _ in range(6):
        said = supervisor.supervise([r], policy, now)
        assert r.restart_at is not None and said[0].startswith("fhirserver-2 exited with code -9; restarting in")
        delays.append(r.restart_at - now)
        # Not before the delay; at it, started again.
        assert supervisor.supervise([r], policy, r.restart_at - 0.01) == []
        now = r.restart_at
        assert supervisor.supervise([r], policy, now) == [f"restarted fhirserver-2 (pid {r.process.pid})"]
        r.process.returncode = -9  # the fake dies again
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert spawned == [["true"]] * 6


def test_a_process_that_keeps_crashing_stops_the_stack_after_the_bounded_number_of_restarts(
    tmp_path: Path, spawned: list[list[str]]
) -> None:
    policy = RestartPolicy(on_failure=True, max_restarts=3, window_seconds=300)
    r = _running(tmp_path, code=1)
    now = 0.0
    for _ in range(3):
        supervisor.supervise([r], policy, now)
        assert r.restart_at is not None
        now = r.restart_at
        supervisor.supervise([r], policy, now)
        r.process.returncode = 1
    with pytest.raises(ServiceExited, match="restarted too often"):
        supervisor.supervise([r], policy, now)
    assert len(spawned) == 3


def test_restarts_older_than_the_window_no_longer_count(tmp_path: Path, spawned: list[list[str]]) -> None:
    policy = RestartPolicy(on_failure=True, max_restarts=1, window_seconds=60)
    r = _running(tmp_path, code=1)
    supervisor.supervise([r], policy, 0.0)
    supervisor.supervise([r], policy, 1.0)
    r.process.returncode = 1
    said = supervisor.supervise([r], policy, 100.0)  # the first restart is 99 s old
    assert said and r.restart_at == 100.5


def test_a_clean_exit_stops_the_stack_even_with_the_option(tmp_path: Path, spawned: list[list[str]]) -> None:
    with pytest.raises(ServiceExited, match="exited with code 0"):
        supervisor.supervise([_running(tmp_path, code=0)], RestartPolicy(on_failure=True), 0.0)
    assert spawned == []


def test_a_living_process_is_left_alone(tmp_path: Path) -> None:
    assert supervisor.supervise([_running(tmp_path)], RestartPolicy(on_failure=True), 0.0) == []


def test_popen_is_what_spawn_starts(tmp_path: Path) -> None:
    process, log = supervisor._spawn(["true"], {}, tmp_path / "x.log")
    try:
        assert isinstance(process, subprocess.Popen) and process.wait(10) == 0
    finally:
        log.close()
