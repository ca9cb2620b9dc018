"""mockehr as a user installs it: the wheel in a fresh virtual environment, run outside the checkout.

Builds the wheel with pip, installs it with the pinned dependencies (constraints.txt) into a new
venv, then runs that venv's `mockehr up` from an empty temporary directory (nothing of the
checkout on sys.path), fires a hook with its `mockehr hook` and stops it with SIGINT.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import free_base_port

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
# Building and installing take ~20 s with a warm pip cache; from zero, PyPI downloads dominate.
INSTALL_TIMEOUT = 600
UP_TIMEOUT = 120


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that points into the checkout or its venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MOCKEHR_", "PYTHON", "VIRTUAL_ENV", "PYTEST_")) and k != "COV_CORE_SOURCE"
    }
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if str(REPO_ROOT) not in p)
    env.update(extra)
    return env


def _run(args: list[str], cwd: Path, timeout: float = INSTALL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from this checkout; returns its bin/ folder."""
    root = tmp_path_factory.mktemp("install")
    # Built from a copy: setuptools writes build/ into the source tree, and a stale build/lib there
    # (or a developer's .venv) must neither end up in the wheel nor be touched.
    source = root / "source"
    shutil.copytree(
        REPO_ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".mockehr", "test-artifacts", ".*_cache"
        ),
    )
    wheels = root / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheels), str(source)], root)
    [wheel] = wheels.glob("mockehr-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], root)
    _run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "-c",
            str(REPO_ROOT / "constraints.txt"),
            str(wheel),
        ],
        root,
    )
    return venv / "bin"


def test_the_installed_package_is_used_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    result = _run(
        [str(installed / "python"), "-c", "import mockehr.migrate as m; print(m.__file__); print(m.script_location())"],
        tmp_path,
    )
    module, migrations = result.stdout.split()
    venv = installed.parent
    assert Path(module).is_relative_to(venv)
    assert Path(migrations).is_relative_to(venv) and (Path(migrations) / "env.py").is_file()


def test_the_wheel_runs_the_stack_outside_the_checkout_answers_a_hook_and_stops_on_sigint(
    installed: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    data_dir = work / "data"
    base = free_base_port()
    process = subprocess.Popen(
        [str(installed / "mockehr"), "up", "--data-dir", str(data_dir), "--base-port", str(base), "--patients", "3"],
        cwd=work,
        env=_clean_env(COLUMNS="200"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + UP_TIMEOUT
        while "Ctrl-C stops every service." not in lines and process.poll() is None:
            assert time.monotonic() < deadline, "\n".join(lines)
            time.sleep(0.1)
        assert process.poll() is None, "\n".join(lines)

        users = json.loads((data_dir / "demo-users.json").read_text())
        user = next(iter(users.values()))
        hook = subprocess.run(
            [
                str(installed / "mockehr"),
                "hook",
                "patient-view",
                "--user",
                user["fhirUser"],
                "--patient",
                user["patients"][0],
                "--data-dir",
                str(data_dir),
                "--base-port",
                str(base),
                "--json",
            ],
            cwd=work,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert hook.returncode == 0, hook.stdout + hook.stderr
        services = {s["serviceId"]: s for s in json.loads(hook.stdout)["services"]}
        assert services["patient-greeting"]["status"] == "ok"
        assert services["patient-greeting"]["cards"][0]["summary"].startswith("Now seeing: ")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        code = process.wait(30)
        reader.join(5)
    assert code == 0, "\n".join(lines)
    assert lines[-1] == "stopped"
