"""The UI session's access token refresh: only when it is about to expire, once per refresh token
even when two requests of one browser arrive together (refresh tokens rotate, and presenting one
twice makes the authorization server revoke the grant), and the session ends when refused. The
once-only record lives in the database (ehr/ui/refreshes.py): a migrated SQLite file here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.clock import FrozenClock
from common.db import make_engine, make_sessionmaker
from ehr.ui.config import UiConfig
from ehr.ui.oauth import OAuthFailure, Tokens
from ehr.ui.session import CookieBox, Session
from ehr.ui.state import UiState
from mockehr import migrate

NOW = 1_800_000_000


@dataclass
class FakeAuth:
    """Stands in for the authorization server's refresh grant, with its rotation."""

    refuse: bool = False
    presented: list[str] = field(default_factory=list)

    async def refresh(self, refresh_token: str) -> Tokens:
        self.presented.append(refresh_token)
        await asyncio.sleep(0.01)  # a round trip, during which another request may arrive
        if self.refuse:
            raise OAuthFailure("refused")
        n = len(self.presented)
        return Tokens(f"at-{n}", NOW + 300, f"rt-{n}", {})


@pytest.fixture
def migrated(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ehr.db'}"
    migrate.upgrade(url)  # runs its own event loop: outside the test's
    return url


@pytest.fixture(autouse=True)
async def database(migrated: str) -> AsyncIterator[None]:
    engine = make_engine(migrated)
    _sessions.append(make_sessionmaker(engine))
    yield
    _sessions.clear()
    await engine.dispose()


_sessions: list[async_sessionmaker[AsyncSession]] = []


def state(auth: FakeAuth, clock: FrozenClock) -> UiState:
    config = UiConfig("https://ehr.test", "https://auth.test", "https://fhir.test/fhir")
    runtime: Any = SimpleNamespace(clock=clock, sessions=_sessions[0])
    fake: Any = auth
    return UiState(config, CookieBox(b"\x00" * 32), fake, runtime)


def session(expires_at: int, refresh: str | None = "rt-0") -> Session:
    return Session("Practitioner/p", "Dr P", "at-0", expires_at, refresh, "csrf", NOW - 100, NOW - 10)


async def test_a_token_with_time_left_is_not_refreshed() -> None:
    auth = FakeAuth()
    got = await state(auth, FrozenClock(NOW)).fresh(session(NOW + 200))
    assert got is not None and got.access_token == "at-0" and auth.presented == []


async def test_a_token_about_to_expire_is_refreshed_and_the_rotated_refresh_token_kept() -> None:
    auth = FakeAuth()
    got = await state(auth, FrozenClock(NOW)).fresh(session(NOW + 30))
    assert got is not None
    assert (got.access_token, got.access_expires_at, got.refresh_token) == ("at-1", NOW + 300, "rt-1")
    assert auth.presented == ["rt-0"]


async def test_two_requests_at_once_present_the_refresh_token_once() -> None:
    auth = FakeAuth()
    ui = state(auth, FrozenClock(NOW))
    first, second = await asyncio.gather(ui.fresh(session(NOW + 30)), ui.fresh(session(NOW + 30)))
    assert auth.presented == ["rt-0"]
    assert first is not None and second is not None
    assert first.access_token == second.access_token == "at-1" and first.refresh_token == second.refresh_token


async def test_a_refused_refresh_ends_the_session() -> None:
    assert await state(FakeAuth(refuse=True), FrozenClock(NOW)).fresh(session(NOW + 30)) is None


async def test_without_a_refresh_token_the_session_lasts_as_long_as_its_access_token() -> None:
    ui = state(FakeAuth(), FrozenClock(NOW))
    assert await ui.fresh(session(NOW + 30, refresh=None)) is not None
    assert await ui.fresh(session(NOW - 1, refresh=None)) is None
