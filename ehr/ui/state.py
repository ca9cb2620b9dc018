"""The UI's per-app state and the session of a request (reading, refreshing, resolving for /api)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from starlette.responses import JSONResponse, Response

from common.runtime import Runtime
from ehr.principal import Principal
from ehr.state import ehr_state
from ehr.ui import refreshes
from ehr.ui.config import UiConfig
from ehr.ui.oauth import AuthClient, OAuthFailure, Tokens
from ehr.ui.session import CSRF_HEADER, SESSION_COOKIE, CookieBox, Session, csrf_ok, session_from, session_payload
from ehr.ui.signouts import record_signout, signed_out

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REFRESHED = "mockehr-refreshed"  # the sealing context of a stored refresh outcome
REFRESH_POLL_SECONDS = 0.05
log = logging.getLogger(__name__)


def _payload(tokens: Tokens) -> dict[str, Any]:
    return {"a": tokens.access_token, "e": tokens.expires_at, "r": tokens.refresh_token}


def _tokens(payload: dict[str, Any] | None) -> Tokens | None:
    if payload is None:
        return None
    return Tokens(access_token=payload["a"], expires_at=payload["e"], refresh_token=payload["r"], id_claims={})


@dataclass
class UiState:
    config: UiConfig
    box: CookieBox
    auth: AuthClient
    runtime: Runtime
    # Refresh tokens rotate: a second presentation revokes the grant. ehr/ui/refreshes.py makes
    # one request, on whichever replica, present each one; the others wait for its outcome.
    refresh_wait_seconds: float = 15.0

    def now(self) -> int:
        return int(self.runtime.clock())

    async def read(self, request: Request) -> Session | None:
        """The request's session: sealed by us, not expired, and not signed out."""
        data = self.box.open(SESSION_COOKIE, request.cookies.get(SESSION_COOKIE))
        session = session_from(data, self.now(), self.config.idle_seconds, self.config.absolute_seconds)
        if session is None or await signed_out(self.runtime.sessions, session.sid):
            return None
        return session

    async def sign_out(self, session: Session) -> None:
        await record_signout(
            self.runtime.sessions, session.sid, session.created_at + self.config.absolute_seconds, self.now()
        )

    def write(self, response: Response, session: Session) -> None:
        self.box.set(response, SESSION_COOKIE, session_payload(session), self.config.absolute_seconds)

    async def fresh(self, session: Session) -> Session | None:
        """The session with an access token that lives a while yet (refreshed if needed), or None."""
        now = self.now()
        if session.access_expires_at - now > self.config.refresh_margin_seconds:
            return session
        if session.refresh_token is None:
            return session if session.access_expires_at > now else None
        tokens = await self._refresh_once(session.refresh_token)
        if tokens is None:
            return None
        return replace(
            session,
            access_token=tokens.access_token,
            access_expires_at=tokens.expires_at,
            refresh_token=tokens.refresh_token or session.refresh_token,
        )

    async def _refresh_once(self, refresh_token: str) -> Tokens | None:
        """The tokens this refresh token is exchanged for, presenting it at most once across every
        replica (None: refused, or the request presenting it never finished)."""
        token_hash = hashlib.sha256(refresh_token.encode()).hexdigest()
        sessions = self.runtime.sessions
        if await refreshes.claim(sessions, token_hash, self.now()):
            try:
                tokens = await self.auth.refresh(refresh_token)
            except OAuthFailure:
                log.info("session refresh refused: the user signs in again")
                await refreshes.settle(sessions, token_hash, None)
                return None
            except BaseException:
                await refreshes.settle(sessions, token_hash, None)
                raise
            await refreshes.settle(sessions, token_hash, self.box.seal(REFRESHED, _payload(tokens)))
            return tokens
        # Presented by another request, here or at another replica: its outcome, within bounds.
        for _ in range(round(self.refresh_wait_seconds / REFRESH_POLL_SECONDS)):
            settled, sealed = await refreshes.outcome(sessions, token_hash)
            if settled:
                return _tokens(self.box.open(REFRESHED, sealed))
            await asyncio.sleep(REFRESH_POLL_SECONDS)
        log.warning("a concurrent session refresh did not finish: the user signs in again")
        return None

    def same_origin(self, request: Request) -> bool:
        """An unsafe request's Origin (when the browser sends one) must be the EHR's own."""
        origin = request.headers.get("origin")
        if origin is None:
            return True
        own = urlsplit(self.config.base_url)
        return origin == f"{own.scheme}://{own.netloc}"

    async def posting_session(self, request: Request) -> Session | Response:
        """The session behind a JSON POST from the EHR's own pages, or the refusal to answer: 401
        without a live session, 403 without its CSRF token in X-CSRF-Token or from another origin."""
        session = await self.read(request)
        if session is None or session.access_expires_at <= self.now():
            return Response(status_code=401, headers={"WWW-Authenticate": "Session"})
        if not csrf_ok(session, request.headers.get(CSRF_HEADER)) or not self.same_origin(request):
            return JSONResponse({"error": "forbidden", "message": "CSRF token missing or wrong"}, status_code=403)
        return session

    async def resolve(self, request: Request) -> Principal | None:
        """`EhrState.session_resolver` for the EHR API: the signed-in user,
        or None. Unsafe methods need the session's CSRF token in X-CSRF-Token and a same-origin
        Origin. No refresh here (the API answer cannot carry a new cookie): an expired access
        token means None, and the page reloads, which refreshes."""
        session = await self.read(request)
        if session is None or session.access_expires_at <= self.now():
            return None
        if request.method not in SAFE_METHODS and (
            not csrf_ok(session, request.headers.get(CSRF_HEADER)) or not self.same_origin(request)
        ):
            return None
        return Principal(user_ref=session.user_ref, is_admin=session.is_admin, session_token=session.access_token)


def ui_state(request: Request) -> UiState:
    state = ehr_state(request.app)
    if state.ui is None:  # built on first use, inside the lifespan (the runtime exists by then)
        runtime: Runtime = request.app.state.runtime
        state.ui = UiState(
            config=state.ui_config,
            box=CookieBox(runtime.settings.kek()),
            auth=AuthClient(state.ui_config, runtime.http, runtime.signing_keys, runtime.clock),
            runtime=runtime,
        )
    return state.ui


async def resolve_session(request: Request) -> Principal | None:
    """`EhrState.session_resolver`: the API's caller by their UI session."""
    return await ui_state(request).resolve(request)
