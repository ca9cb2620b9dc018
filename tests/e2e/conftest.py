"""The whole stack as a user runs it: `mockehr up` in a subprocess, real TLS on 127.0.0.1."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def free_base_port() -> int:
    """A base port whose six ports (the five services and the probe's JWKS at +5) are all free right now."""
    rng = random.Random()  # noqa: S311 - not security relevant
    for _ in range(200):
        base = rng.randrange(20000, 60000)
        try:
            for offset in range(6):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError("no six consecutive free ports")


@dataclass
class UpProcess:
    process: subprocess.Popen[str]
    data_dir: Path
    base_port: int
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return
            if self.process.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"mockehr up exited {self.process.returncode}:\n{self.output}")
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not printed within {timeout} s:\n{self.output}")

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def start_up(data_dir: Path, base_port: int, *extra: str, env: dict[str, str] | None = None) -> UpProcess:
    full_env = dict(os.environ)
    full_env.update(
        {"COLUMNS": "200", "MOCKEHR_EHR_KEY_REFRESH_SECONDS": "0.2", "MOCKEHR_EHR_KEY_PUBLISH_AHEAD_SECONDS": "2.5"}
    )
    full_env.update(env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "mockehr", "up", "--data-dir", str(data_dir), "--base-port", str(base_port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=full_env,
    )
    up = UpProcess(process, data_dir, base_port)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            up.lines.append(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return up


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    data_dir = tmp_path_factory.mktemp("stack") / ".mockehr"
    up = start_up(data_dir, free_base_port(), "--patients", "6")
    try:
        up.wait_for("Ctrl-C stops every service.")
        yield up
    finally:
        up.stop()
