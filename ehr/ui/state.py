"""The UI's per-app state and the session of a request (reading, refreshing, resolving for /api)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from fastapi import Request
from starlette.responses import JSONResponse, Response

from common.runtime import Runtime
from ehr.principal import Principal
from ehr.state import ehr_state
from ehr.ui.config import UiConfig
from ehr.ui.oauth import AuthClient, OAuthFailure, Tokens
from ehr.ui.session import CSRF_HEADER, SESSION_COOKIE, CookieBox, Session, csrf_ok, session_from, session_payload
from ehr.ui.signouts import record_signout, signed_out

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
log = logging.getLogger(__name__)


@dataclass
class UiState:
    config: UiConfig
    box: CookieBox
    auth: AuthClient
    runtime: Runtime
    # Refresh tokens rotate: two requests of one browser refreshing at once would present the
    # same refresh token twice, which the authserver treats as theft (revoking the grant). One
    # refresh per token at a time, and its result kept briefly for the other request.
    _refresh_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _refreshed: dict[str, tuple[float, Tokens]] = field(default_factory=dict)

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
        key = hashlib.sha256(session.refresh_token.encode()).hexdigest()
        async with self._refresh_lock:
            for old in [k for k, (at, _) in self._refreshed.items() if now - at > 30]:
                del self._refreshed[old]
            done = self._refreshed.get(key)
            if done is None:
                try:
                    tokens = await self.auth.refresh(session.refresh_token)
                except OAuthFailure:
                    log.info("session refresh refused: the user signs in again")
                    return None
                self._refreshed[key] = (now, tokens)
            else:
                tokens = done[1]
        return replace(
            session,
            access_token=tokens.access_token,
            access_expires_at=tokens.expires_at,
            refresh_token=tokens.refresh_token or session.refresh_token,
        )

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
        """`EhrState.session_resolver` for the EHR API (HELPERS.md contract): the signed-in user,
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
