"""The whole stack as the browser tests see it (`mockehr up` on real TLS): its addresses, its demo
users, and the steps every browser test takes (sign in to the EHR, open a chart, take a screenshot)."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from tests.browser.chromium import ARTIFACTS
from tests.e2e.conftest import UpProcess

TIMEOUT = 30_000  # ms, for the first page of a cold stack on a busy machine


@dataclass(frozen=True)
class User:
    login: str
    password: str
    fhir_user: str
    patients: tuple[str, ...]


@dataclass
class Stack:
    up: UpProcess

    @property
    def ehr(self) -> str:
        return f"https://localhost:{self.up.base_port}"

    @property
    def smart_app(self) -> str:
        return f"https://localhost:{self.up.base_port + 4}"

    @property
    def users(self) -> list[User]:
        data: dict[str, Any] = json.loads((self.up.data_dir / "demo-users.json").read_text())
        return [User(k, v["password"], v["fhirUser"], tuple(v["patients"])) for k, v in data.items()]

    def admin(self) -> httpx.Client:
        token = (self.up.data_dir / "admin-token").read_text().strip()
        tls = ssl.create_default_context(cafile=str(self.up.data_dir / "ca.pem"))
        return httpx.Client(base_url=self.ehr, verify=tls, headers={"Authorization": f"Bearer {token}"}, timeout=30)


@contextmanager
def signed_in(browser: Any, stack: Stack, user: User) -> Iterator[Any]:
    """A fresh browser profile, signed in to the EHR as `user` through the authserver's page."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(TIMEOUT)
    try:
        page = context.new_page()
        page.goto(stack.ehr + "/")
        page.click("#sign-in")
        page.fill("input[name=username]", user.login)
        page.fill("input[name=password]", user.password)
        page.click("button[type=submit]")
        page.wait_for_url(stack.ehr + "/patients")
        yield page
    finally:
        context.close()


def open_chart(page: Any, stack: Stack, patient: str) -> None:
    """Open the patient's chart and wait until its patient-view hook has answered."""
    page.goto(f"{stack.ehr}/patients/{patient}")
    page.wait_for_selector(".hook-result[data-hook='patient-view']")


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"ehr-{name}.png"), full_page=True)
