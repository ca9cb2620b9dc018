"""The EHR UI's session against the real authorization server and FHIR server (`mockehr up`, real
TLS), with httpx as the browser: access tokens that live 10 s, so every page view refreshes
(rotating the refresh token); and a copied session cookie is worth nothing after sign-out, because
sign-out revokes the grant at the authorization server."""

from __future__ import annotations

import html
import json
import re
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from common.crypto import decode_kek
from ehr.ui.session import SESSION_COOKIE, CookieBox
from tests.e2e.conftest import UpProcess, free_base_port, start_up

pytestmark = pytest.mark.e2e
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_NEXT = re.compile(r'name="next" value="([^"]*)"')


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    data_dir = tmp_path_factory.mktemp("ui-session") / ".mockehr"
    up = start_up(
        data_dir, free_base_port(), "--patients", "6", env={"MOCKEHR_AUTH_ACCESS_TOKEN_LIFETIME_SECONDS": "10"}
    )
    try:
        up.wait_for("Ctrl-C stops every service.")
        yield up
    finally:
        up.stop()


def browser(up: UpProcess) -> httpx.Client:
    tls = ssl.create_default_context(cafile=str(up.data_dir / "ca.pem"))
    return httpx.Client(verify=tls, follow_redirects=True, timeout=30, trust_env=False)


def sign_in(client: httpx.Client, up: UpProcess) -> tuple[dict[str, Any], httpx.Response]:
    login, user = next(iter(json.loads((up.data_dir / "demo-users.json").read_text()).items()))
    page = client.get(f"https://localhost:{up.base_port}/login")
    assert page.url.path == "/login" and page.url.port == up.base_port + 1  # the authserver's page
    csrf, next_url = _CSRF.search(page.text), _NEXT.search(page.text)
    assert csrf and next_url
    form = {
        "username": login,
        "password": user["password"],
        "csrf": csrf.group(1),
        "next": html.unescape(next_url.group(1)),
    }
    landed = client.post(f"https://localhost:{up.base_port + 1}/login", data=form)
    assert landed.status_code == 200 and landed.url == f"https://localhost:{up.base_port}/patients", landed.url
    return user, landed


def test_every_page_view_refreshes_a_short_lived_token_and_the_session_goes_on(short_lived: UpProcess) -> None:
    with browser(short_lived) as client:
        user, first = sign_in(client, short_lived)
        box = CookieBox(decode_kek((short_lived.data_dir / "kek").read_text()))
        sessions = [box.open(SESSION_COOKIE, client.cookies[SESSION_COOKIE])]
        for _ in range(3):
            again = client.get(f"https://localhost:{short_lived.base_port}/patients/{user['patients'][0]}")
            assert again.status_code == 200 and 'id="chart"' in again.text
            sessions.append(box.open(SESSION_COOKIE, client.cookies[SESSION_COOKIE]))
        assert all(s is not None for s in sessions)
        # A new access token and a new (rotated) refresh token at every page view.
        assert len({s["access_token"] for s in sessions if s}) == len(sessions)
        assert len({s["refresh_token"] for s in sessions if s}) == len(sessions)
        assert all(f"/patients/{p}" in first.text for p in user["patients"])


def test_a_copied_session_cookie_is_worthless_after_sign_out(short_lived: UpProcess) -> None:
    ehr = f"https://localhost:{short_lived.base_port}"
    with browser(short_lived) as client:
        user, landed = sign_in(client, short_lived)
        copied = client.cookies[SESSION_COOKIE]
        csrf = _CSRF.search(landed.text)
        assert csrf
        out = client.post(f"{ehr}/logout", data={"csrf": csrf.group(1)}, follow_redirects=False)
        assert out.status_code == 303
    with browser(short_lived) as thief:
        thief.cookies.set(SESSION_COOKIE, copied, domain="localhost")
        stolen = thief.get(f"{ehr}/patients/{user['patients'][0]}", follow_redirects=False)
        assert stolen.status_code == 303 and stolen.headers["location"].startswith("/login")
