"""Two EHR replicas over one database refresh one UI session at the same moment (issue 18).

Refresh tokens rotate, and the authorization server revokes the whole grant when one is
presented twice. The session's refresh token must therefore reach the authorization server once,
whichever replicas the browser's concurrent requests land on, and every request must get the
new tokens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi import FastAPI

from common.clock import FrozenClock
from ehr.app import create_app
from ehr.settings import EhrSettings
from ehr.state import ehr_state
from ehr.ui import refreshes
from ehr.ui.oauth import AuthClient, OAuthFailure, Tokens
from ehr.ui.session import CookieBox, Session
from ehr.ui.state import UiState
from tests.integration.apps import serving

EHR = "https://ehr.test"


class AuthorizationServer:
    """The token endpoint's refresh grant as the real one behaves: rotation, and reuse refused."""

    def __init__(self, other_replica_waiting: asyncio.Event) -> None:
        self.presented: list[str] = []
        self._waiting = other_replica_waiting

    async def refresh(self, refresh_token: str) -> Tokens:
        self.presented.append(refresh_token)
        if self.presented.count(refresh_token) > 1:
            self._waiting.set()
            raise OAuthFailure("refresh token reused: the grant is revoked")
        await self._waiting.wait()  # in flight until the other replica is waiting, or presents it too
        return Tokens(access_token="at-2", expires_at=int(time.time()) + 300, refresh_token="rt-2", id_claims={})


@pytest.fixture
async def replicas(tmp_path: Path, database_url: str) -> AsyncIterator[list[FastAPI]]:
    settings = EhrSettings(
        data_dir=tmp_path,
        database_url=database_url,
        public_url=EHR,
        authserver_url="https://127.0.0.1:1",
        fhir_base_url="https://127.0.0.1:2/fhir",
    )
    clock = FrozenClock(time.time())
    apps = [create_app(settings, clock=clock), create_app(settings, clock=clock)]
    async with AsyncExitStack() as running:
        for app in apps:
            await running.enter_async_context(serving(app, EHR))
        yield apps


def _ui_state(app: FastAPI, auth: AuthorizationServer) -> UiState:
    runtime = app.state.runtime
    return UiState(
        config=ehr_state(app).ui_config,
        box=CookieBox(runtime.settings.kek()),
        auth=cast(AuthClient, auth),
        runtime=runtime,
    )


async def test_two_replicas_refreshing_one_session_at_once_present_the_refresh_token_once(
    replicas: list[FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    waiting = asyncio.Event()
    original: Callable[..., Awaitable[tuple[bool, str | None]]] = refreshes.outcome

    async def outcome(*args: Any) -> tuple[bool, str | None]:
        waiting.set()  # a replica found the refresh claimed by the other and waits for it
        return await original(*args)

    monkeypatch.setattr(refreshes, "outcome", outcome)
    auth = AuthorizationServer(waiting)
    now = int(time.time())
    session = Session(
        user_ref="Practitioner/p-1",
        display="Dr. Test",
        access_token="at-1",
        access_expires_at=now - 1,
        refresh_token="rt-1",
        csrf="csrf",
        created_at=now - 60,
        seen_at=now - 1,
        sid="sid-1",
    )
    first, second = await asyncio.gather(*(_ui_state(app, auth).fresh(session) for app in replicas))
    assert auth.presented == ["rt-1"]
    assert first is not None and second is not None
    assert (first.access_token, first.refresh_token) == ("at-2", "rt-2")
    assert (second.access_token, second.refresh_token) == ("at-2", "rt-2")
