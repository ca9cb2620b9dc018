"""The data dir lock of `mockehr up` (mockehr/running.py), held by another process: refused while
that process lives, taken over once it has died (the kernel drops an flock with its holder)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.errors import ConfigError
from mockehr.running import DataDirLock, read_record
from mockehr.stack import Stack

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mockehr.running import DataDirLock
    from mockehr.stack import Stack

    data_dir = Path(sys.argv[1])
    lock = DataDirLock(data_dir)
    lock.acquire()
    lock.record(Stack(data_dir=data_dir, base_port=int(sys.argv[2])), [("ehr", "ehr", int(sys.argv[2]), 4242)])
    print("locked", flush=True)
    time.sleep(120)
    """
)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another `up`: a process holding the lock with a record, until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), "23456"], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "locked"
    try:
        yield process
    finally:
        process.kill()
        process.wait(10)


def test_a_data_dir_held_by_a_live_up_is_refused_naming_it(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    with pytest.raises(ConfigError) as refused:
        DataDirLock(tmp_path).acquire()
    assert f"a stack is already running on {tmp_path} (`mockehr up` pid {holder.pid}, EHR https://localhost:23456)" in (
        str(refused.value)
    )
    record = read_record(tmp_path)
    assert record is not None and record.pid == holder.pid


def test_the_lock_and_record_of_an_up_that_died_are_taken_over(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    # The record is still there, but its process is gone: stale, ignored by every command.
    assert (tmp_path / "stack.json").exists()
    assert read_record(tmp_path) is None
    lock = DataDirLock(tmp_path)
    lock.acquire()
    try:
        lock.record(Stack(data_dir=tmp_path, base_port=24000), [("ehr", "ehr", 24000, 1)])
        taken = read_record(tmp_path)
        assert taken is not None and taken.base_port == 24000
    finally:
        lock.release()
    assert not (tmp_path / "stack.json").exists()
