"""docker-compose.yml on a real Docker engine, end to end: build, health, a hook, a browser sign-in.

Brings the compose file up under a project name of its own (the published ports are 9000–9004 on
127.0.0.1, as in `make up`), waits for every service to be healthy and `register` to finish, fires
a patient-view hook through the EHR's published port with `mockehr hook` (the EHR calls the
example CDS Service over the compose network), checks the exchange was stored in the PostgreSQL
container and the service's replay cache in the Redis container, signs in through the EHR UI in
Debian's Chromium at https://ehr.localhost:9000 trusting the dev CA from the stack's volume (no
/etc/hosts entry, no certificate error ignored), and takes everything down with its volumes.

Base images come from a registry when one answers; otherwise tests/compose/standins.py builds
stand-ins from Debian packages, and the test says so (a warning in pytest's summary). With CI=true
a missing Docker engine, docker-compose or Chromium is a failure; without CI the test skips.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.browser.chromium import ARGS, ARTIFACTS, CHROMIUM, BrowserEnv, require_chromium, trusting_home
from tests.compose.standins import StandinError, base_images, docker_env
from tests.needs import missing

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
PORTS = {"ehr": 9000, "authserver": 9001, "fhirserver": 9002, "cds-example": 9003, "smart-example": 9004}
EHR = "https://ehr.localhost:9000"
AUTHSERVER = "https://authserver.localhost:9001"
BUILD_TIMEOUT = 600  # the mockehr image from zero: pip downloads every dependency
UP_TIMEOUT = 300  # postgres → init (migrate, seed) → the health-check chain → register
BROWSER_TIMEOUT = 30_000  # ms


class StandinImagesUsed(UserWarning):
    """The compose stack ran on stand-in base images, not the real python/postgres/redis images."""


@dataclass
class Compose:
    binary: str
    docker: str
    project: str
    env: dict[str, str]

    def run(
        self, *args: str, timeout: float = 120, check: bool = True, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        command = [self.binary, "-f", str(COMPOSE_FILE), "--project-directory", str(REPO_ROOT), "-p", self.project]
        try:
            result = subprocess.run(
                [*command, *args], input=stdin, capture_output=True, timeout=timeout, env=self.env, check=False
            )
        except subprocess.TimeoutExpired:
            raise AssertionError(f"docker-compose {' '.join(args)} did not finish within {timeout} s") from None
        if check and result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")[-4000:]
            raise AssertionError(f"docker-compose {' '.join(args)} failed (exit {result.returncode}):\n{output}")
        return result

    def container(self, service: str) -> str:
        ids = self.run("ps", "-a", "-q", service).stdout.decode().split()
        assert ids, f"no container for {service}"
        return ids[0]

    def state(self, service: str) -> dict[str, Any]:
        result = subprocess.run(
            [self.docker, "inspect", "--format", "{{json .State}}", self.container(service)],
            capture_output=True,
            timeout=60,
            env=self.env,
            check=True,
        )
        state: dict[str, Any] = json.loads(result.stdout)
        return state

    def logs(self, tail: int = 30) -> str:
        try:
            result = self.run("logs", "--no-color", f"--tail={tail}", timeout=60, check=False)
        except AssertionError as exc:
            return str(exc)
        return (result.stdout + result.stderr).decode(errors="replace")

    def sql(self, query: str, **variables: str) -> str:
        """Run a query in the postgres container; `:'name'` in it is psql's quoted variable."""
        assigned = [arg for name, value in variables.items() for arg in ("-v", f"{name}={value}")]
        psql = ["psql", "-U", "mockehr", "-d", "mockehr", "-tA", "-v", "ON_ERROR_STOP=1", *assigned]
        result = self.run("exec", "-T", "postgres", *psql, stdin=query.encode())
        return result.stdout.decode().strip()


def _engine() -> tuple[str, str]:
    docker, compose = shutil.which("docker"), shutil.which("docker-compose")
    if docker is None or compose is None:
        missing("docker (Debian's docker.io) or docker-compose is not installed (.ci/run installs them)")
    assert docker is not None and compose is not None
    try:
        info = subprocess.run([docker, "info"], capture_output=True, timeout=30, env=docker_env(), check=False)
    except subprocess.TimeoutExpired:
        info = None
    if info is None or info.returncode != 0:
        missing("no Docker engine answers on /var/run/docker.sock (.ci/run starts dockerd)")
    return docker, compose


def _require_free_ports() -> None:
    for service, port in PORTS.items():
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                pytest.fail(f"port {port} ({service}) on 127.0.0.1 is in use: compose publishes 9000–9004")


@pytest.fixture
def compose(tmp_path: Path) -> Iterator[Compose]:
    require_chromium()
    docker, binary = _engine()
    _require_free_ports()
    said: list[str] = []
    try:
        overrides = base_images(docker, said.append)
    except StandinError as exc:
        pytest.fail(f"no base images: {exc}")
    print("\n".join(said))  # shown with -s and in a failure's captured output
    if overrides:
        warnings.warn(
            StandinImagesUsed(
                "no container registry answered: docker-compose ran on stand-in base images built from "
                f"Debian packages ({', '.join(f'{k}={v}' for k, v in overrides.items())})"
            ),
            stacklevel=1,
        )
    env = {k: v for k, v in docker_env().items() if not k.startswith("MOCKEHR_")}
    env.update(overrides)
    env.update({"MOCKEHR_PATIENTS": "6", "COMPOSE_DOCKER_CLI_BUILD": "0"})
    stack = Compose(binary, docker, f"mockehr-ci-{secrets.token_hex(4)}", env)
    try:
        stack.run("build", timeout=BUILD_TIMEOUT)
        yield stack
    finally:
        stack.run("down", "-v", "--remove-orphans", "--timeout", "10", timeout=180, check=False)


def _wait_until_up(compose: Compose) -> None:
    """Every web service healthy and `register` exited 0, within UP_TIMEOUT."""
    deadline = time.monotonic() + UP_TIMEOUT
    # `up -d` itself waits for the depends_on conditions (healthy, completed) before starting a
    # dependant, and fails when one cannot be met.
    compose.run("up", "-d", timeout=UP_TIMEOUT)
    pending: dict[str, str] = {}
    while time.monotonic() < deadline:
        pending = {}
        for service in PORTS:
            health = compose.state(service).get("Health", {}).get("Status")
            if health != "healthy":
                pending[service] = str(health)
        register = compose.state("register")
        if register["Status"] == "exited" and register["ExitCode"] != 0:
            raise AssertionError(f"register exited {register['ExitCode']}")
        if register["Status"] != "exited":
            pending["register"] = register["Status"]
        if not pending:
            return
        time.sleep(2)
    raise AssertionError(f"not up within {UP_TIMEOUT} s: {pending}")


def _data_dir(compose: Compose, into: Path) -> Path:
    """A copy of the stack's data volume (CA, admin token, demo users), as `docker cp` gives it."""
    result = subprocess.run(
        [compose.docker, "cp", f"{compose.container('ehr')}:/data", "-"],
        capture_output=True,
        timeout=60,
        env=compose.env,
        check=True,
    )
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "data"


def _hook(data_dir: Path, login: str, patient: str) -> dict[str, Any]:
    """`mockehr hook` on the host: https://localhost:9000, the EHR's published port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOCKEHR_")}
    env["COLUMNS"] = "200"
    command = ["hook", "patient-view", "--user", login, "--patient", patient, "--data-dir", str(data_dir), "--json"]
    result = subprocess.run(
        [sys.executable, "-m", "mockehr", *command],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, f"mockehr hook failed:\n{result.stdout}\n{result.stderr}"
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def _sign_in(env: BrowserEnv, login: str, password: str) -> list[str]:
    """Sign in through the EHR UI; returns the patients listed on My patients."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, env=env)
        try:
            page = chromium.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(BROWSER_TIMEOUT)
            page.goto(EHR + "/")
            page.click("#sign-in")
            page.wait_for_selector("input[name=username]")
            assert page.url.startswith(AUTHSERVER + "/"), page.url
            page.fill("input[name=username]", login)
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_url(EHR + "/patients")
            assert page.get_by_role("heading", name="My patients").is_visible()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "compose-signed-in.png"))
            return [str(a.get_attribute("data-patient")) for a in page.locator("#patients a[data-patient]").all()]
        finally:
            chromium.close()


def test_the_compose_stack_answers_a_hook_over_its_network_and_a_browser_signs_in_through_it(
    compose: Compose, tmp_path: Path
) -> None:
    try:
        _wait_until_up(compose)
        data_dir = _data_dir(compose, tmp_path)
        users = json.loads((data_dir / "demo-users.json").read_text())
        login, user = next(iter(users.items()))
        patient = str(user["patients"][0]).removeprefix("Patient/")

        # A hook through the published port; the EHR calls the example service over the network.
        answer = _hook(data_dir, login, patient)
        services = {s["serviceId"]: s for s in answer["services"]}
        assert services["patient-greeting"]["status"] == "ok", services
        assert services["patient-greeting"]["cards"][0]["summary"].startswith("Now seeing: ")

        # What the services use is the PostgreSQL and the Redis of the compose stack: the EHR
        # stored the exchange in the postgres container, the example service its JWT's jti in
        # the redis container (replay protection).
        instance = answer["hookInstance"]
        stored = compose.sql(
            "select service_id || ' ' || status from ehr_cds_exchanges where hook_instance = :'instance';",
            instance=instance,
        ).splitlines()
        assert "patient-greeting ok" in stored, stored
        jtis = compose.run("exec", "-T", "redis", "redis-cli", "--scan", "--pattern", "mockehr:cds-example:jti:*")
        assert jtis.stdout.decode().split(), "no replay-cache key in the compose stack's Redis"

        # A browser on the host follows https://ehr.localhost:9000 → authserver.localhost → back,
        # trusting only the dev CA (the certificate must cover the names).
        env = trusting_home(data_dir / "ca.pem", tmp_path / "home")
        listed = _sign_in(env, login, user["password"])
        assert patient in listed, listed
    except Exception as exc:  # a failed assertion, a browser or subprocess error: each with the logs
        logs = compose.logs()
        raise AssertionError(
            f"{type(exc).__name__}: {exc}\n--- docker-compose logs (last lines per service) ---\n{logs}"
        ) from exc
