"""The exchange inspector's picture of one exchange (issue 13 §8): per service, one bar per phase
that ran (token, prefetch, call, revoke, and `other` for the rest of the total), laid out one after
another as the engine runs them, each as wide as its recorded share of the time — drawn with SVG
attributes, since the CSP allows no inline style."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from common.clock import FrozenClock
from ehr import exchange_log
from ehr.app import create_app
from ehr.exchange import HookCall, HookOutcome, ServiceResult, Timings
from ehr.settings import EhrSettings
from ehr.ui.session import SESSION_COOKIE, CookieBox, Session
from tests.integration.apps import serving

EHR = "https://ehr.test"
USER = "Practitioner/p-1"
HOOK_INSTANCE = "4a1c0f53-63c4-4d3e-9d53-0d6e2b1f7a10"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(time.time())


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> EhrSettings:
    return EhrSettings(
        data_dir=tmp_path,
        database_url=database_url,
        public_url=EHR,
        authserver_url="https://127.0.0.1:1",
        fhir_base_url="https://127.0.0.1:2/fhir",
    )


@pytest.fixture
async def app(settings: EhrSettings, clock: FrozenClock) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    application = create_app(settings, clock=clock)
    async with serving(application, EHR) as client:
        yield application, client


def _cookie(settings: EhrSettings, clock: FrozenClock, user_ref: str = USER) -> str:
    now = int(clock())
    session = Session(user_ref, "Dr. Test", "at-not-a-real-token", now + 280, None, "csrf", now, now, sid="sid-1")
    return CookieBox(settings.kek()).seal(SESSION_COOKIE, asdict(session))


async def _record(application: FastAPI, clock: FrozenClock) -> None:
    call = HookCall("patient-view", HOOK_INSTANCE, USER, "pat-1", {"patientId": "pat-1"})
    results = [
        # 10 + 30 + 50 + 10 = 100 of 120 ms: `other` takes the remaining 20.
        ServiceResult("greeting", "ok", timings=Timings(10.0, 30.0, 50.0, 10.0, 120.0)),
        # No user, no token: only the call ran (and a little else).
        ServiceResult("anonymous", "ok", timings=Timings(call_ms=40.0, total_ms=40.0)),
    ]
    await exchange_log.record(application.state.runtime.sessions, HookOutcome(call, results), int(clock()))


async def _page(client: httpx.AsyncClient, cookie: str, path: str = f"/exchanges/{HOOK_INSTANCE}") -> httpx.Response:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cookie)
    return await client.get(path)


def _bars(html: str, service: str) -> dict[str, tuple[float, float]]:
    """phase -> (x, width) of the bars in that service's waterfall table."""
    table = re.search(rf'<table class="waterfall" data-service="{service}">(.*?)</table>', html, re.S)
    assert table is not None, html
    rows = re.findall(
        r'<tr class="phase" data-phase="(\w+)">.*?<rect class="phase-\1" x="([\d.]+)" y="0" width="([\d.]+)"',
        table.group(1),
        re.S,
    )
    return {phase: (float(x), float(width)) for phase, x, width in rows}


async def test_the_inspector_draws_one_bar_per_phase_sized_and_placed_by_the_recorded_timings(
    app: tuple[FastAPI, httpx.AsyncClient], settings: EhrSettings, clock: FrozenClock
) -> None:
    application, client = app
    await _record(application, clock)
    response = await _page(client, _cookie(settings, clock))
    assert response.status_code == 200, response.text
    html = response.text
    # Scaled to 1000 units per service's total: 120 ms -> 1000, so 10 ms -> 83.3.
    assert _bars(html, "greeting") == {
        "token": (0.0, 83.3),
        "prefetch": (83.3, 250.0),
        "call": (333.3, 416.7),
        "revoke": (750.0, 83.3),
        "other": (833.3, 166.7),
    }
    assert _bars(html, "anonymous") == {"call": (0.0, 1000.0)}
    # Beside the numbers: each phase's start and duration in milliseconds.
    assert re.search(r'data-phase="call">\s*<td>call</td><td class="num">40.0</td><td class="num">50.0</td>', html)
    # Under the CSP: no inline style anywhere on the page.
    assert "style=" not in html and "<style" not in html
    assert "style-src 'self';" in response.headers["content-security-policy"]


async def test_another_users_exchange_is_not_shown(
    app: tuple[FastAPI, httpx.AsyncClient], settings: EhrSettings, clock: FrozenClock
) -> None:
    application, client = app
    await _record(application, clock)
    other = await _page(client, _cookie(settings, clock, "Practitioner/p-2"))
    assert other.status_code == 404 and "greeting" not in other.text
    missing = await _page(client, _cookie(settings, clock), "/exchanges/not%20a%20hook%20instance")
    assert missing.status_code == 404
