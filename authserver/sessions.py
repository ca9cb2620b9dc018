"""Login sessions and CSRF tokens of the authorization server's HTML pages.

Session (SMART App Launch 2.2 leaves user authentication to the server; the OWASP session
management guidance shapes the choices):
- the cookie `__Host-mockehr-session` holds 256 random bits; the database keeps only their
  SHA-256 (`auth_sessions`), so every replica sees the same sessions and a reader of the table
  cannot ride one;
- `Secure; HttpOnly; SameSite=Lax; Path=/`, no Domain (the `__Host-` prefix makes browsers
  enforce all three), a short absolute lifetime (`session_lifetime_seconds`);
- a successful login always starts a new session (no fixation) and logout deletes the row.

CSRF (signed double-submit cookie): `__Host-mockehr-csrf` holds a random value (SameSite=Strict);
every form carries HMAC-SHA256(key, purpose | cookie value). An attacker can neither read the
cookie nor set one for this origin (`__Host-`), so cannot forge the pair. The HMAC key is derived
from the key-encryption key every replica shares, with its own label (domain separation), so any
replica accepts a token another one issued.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from authserver.models import LoginSessionRow

SESSION_COOKIE = "__Host-mockehr-session"
CSRF_COOKIE = "__Host-mockehr-csrf"
_CSRF_LABEL = b"mockehr authserver csrf v1"
_MAX_COOKIE = 200


def digest(value: str) -> str:
    """SHA-256 hex of a secret we must recognise but never store (cookies, codes, tokens)."""
    return hashlib.sha256(value.encode()).hexdigest()


def new_secret() -> str:
    """256 random bits, base64url: session ids, CSRF cookies, codes, launch values, refresh tokens."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class LoginSession:
    id_hash: str
    username: str
    auth_time: int
    expires_at: int


async def create(session: AsyncSession, username: str, now: int, lifetime: int) -> tuple[str, LoginSession]:
    """A new session row; returns the cookie value (only its hash is stored) and the session."""
    value = new_secret()
    row = LoginSessionRow(id_hash=digest(value), username=username, auth_time=now, expires_at=now + lifetime)
    session.add(row)
    return value, LoginSession(row.id_hash, username, now, row.expires_at)


async def load(session: AsyncSession, cookie: str | None, now: int) -> LoginSession | None:
    if not cookie or len(cookie) > _MAX_COOKIE:
        return None
    row = await session.get(LoginSessionRow, digest(cookie))
    if row is None or row.expires_at <= now:
        return None
    return LoginSession(row.id_hash, row.username, row.auth_time, row.expires_at)


async def alive(session: AsyncSession, id_hash: str, now: int) -> bool:
    """Is the user still online with this session (SMART `online_access`)?"""
    row = await session.get(LoginSessionRow, id_hash)
    return row is not None and row.expires_at > now


async def end(session: AsyncSession, cookie: str | None) -> None:
    if cookie and len(cookie) <= _MAX_COOKIE:
        await session.execute(delete(LoginSessionRow).where(LoginSessionRow.id_hash == digest(cookie)))


async def purge(session: AsyncSession, now: int) -> None:
    await session.execute(delete(LoginSessionRow).where(LoginSessionRow.expires_at <= now))


def set_session_cookie(response: Response, value: str, lifetime: int) -> None:
    response.set_cookie(SESSION_COOKIE, value, max_age=lifetime, path="/", secure=True, httponly=True, samesite="lax")


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="lax")


class CsrfSigner:
    """Signed double-submit CSRF tokens, bound to the browser's CSRF cookie and to a purpose."""

    def __init__(self, kek: bytes) -> None:
        self._key = hmac.new(kek, _CSRF_LABEL, hashlib.sha256).digest()

    @staticmethod
    def cookie_value(existing: str | None) -> str:
        """Keep a well-formed existing cookie (several tabs stay valid), else make a new one."""
        if existing and 32 <= len(existing) <= 64 and all(c.isalnum() or c in "-_" for c in existing):
            return existing
        return new_secret()

    def token(self, cookie: str, purpose: str) -> str:
        mac = hmac.new(self._key, f"{purpose}|{cookie}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def check(self, cookie: str | None, purpose: str, token: object) -> bool:
        if not cookie or not isinstance(token, str) or not token or len(cookie) > _MAX_COOKIE:
            return False
        # Bytes: compare_digest refuses a str with non-ASCII characters (TypeError, a 500).
        return hmac.compare_digest(self.token(cookie, purpose).encode(), token.encode())


def set_csrf_cookie(response: Response, value: str) -> None:
    # A session cookie (no Max-Age): it lives as long as the browser window, Strict: never sent
    # on a cross-site request, so only our own pages can post it back.
    response.set_cookie(CSRF_COOKIE, value, path="/", secure=True, httponly=True, samesite="strict")
