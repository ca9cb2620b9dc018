"""UI sessions, kept in an encrypted cookie (AES-256-GCM), so every EHR replica can read them.

Why a cookie and not a table: the session is small (the user, their current access and refresh
token, a CSRF secret, times), every replica shares the KEK already, and nothing has to be purged.
What a table would add — killing a session server-side — is covered by revoking its tokens:
sign-out revokes the refresh token at the authorization server (RFC 7009), which revokes the whole
grant, so a copied cookie is worth nothing after sign-out (the FHIR server honours revocations
within a second); and the refresh token is `online_access`, which dies with the user's sign-in at
the authorization server.

- The key is derived from the KEK with HKDF-SHA256 for this one purpose; the cookie's name is the
  associated data, so a login-state cookie can never be replayed as a session cookie.
- `__Host-` cookies: Secure, Path=/, no Domain (cannot be set by a sibling host), HttpOnly,
  SameSite=Lax (the sign-in comes back as a top-level GET from the authorization server).
- Expiry is enforced inside the encrypted payload (idle and absolute), not by the browser.
- CSRF: a random per-session secret; every unsafe request must echo it (form field `csrf` or
  header `X-CSRF-Token`), compared in constant time. SameSite=Lax alone does not cover same-site
  attackers (other ports of localhost are same-site).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
from dataclasses import asdict, dataclass, replace
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from starlette.responses import Response

from common.crypto import decrypt, encrypt
from common.errors import KeyDecryptionError

SESSION_COOKIE = "__Host-mockehr-ehr-session"
LOGIN_COOKIE = "__Host-mockehr-ehr-login"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
MAX_COOKIE = 3800  # browsers keep at least 4096 bytes per cookie, name and attributes included


@dataclass(frozen=True)
class Session:
    user_ref: str  # "Practitioner/<id>"
    display: str
    access_token: str
    access_expires_at: int
    refresh_token: str | None
    csrf: str
    created_at: int
    seen_at: int
    is_admin: bool = False
    sid: str = ""  # random; recorded at sign-out so a copy of the cookie is refused (signouts.py)

    def touched(self, now: int) -> Session:
        return replace(self, seen_at=now)


@dataclass(frozen=True)
class LoginState:
    """A sign-in on its way through the authorization server."""

    state: str
    verifier: str
    nonce: str
    created_at: int
    next_path: str = "/patients"


def derive_key(kek: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"mockehr ehr ui cookies v1").derive(kek)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CookieBox:
    """Seals and opens the UI's cookies."""

    def __init__(self, kek: bytes) -> None:
        self._key = derive_key(kek)

    def seal(self, name: str, payload: dict[str, Any]) -> str:
        value = _b64(encrypt(self._key, json.dumps(payload, separators=(",", ":")).encode(), name.encode()))
        if len(value) > MAX_COOKIE:
            raise ValueError(f"{name} would exceed the cookie size limit")
        return value

    def open(self, name: str, value: str | None) -> dict[str, Any] | None:
        if not value or len(value) > MAX_COOKIE:
            return None
        try:
            data = json.loads(decrypt(self._key, _unb64(value), name.encode()))
        except (KeyDecryptionError, binascii.Error, ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def set(self, response: Response, name: str, payload: dict[str, Any], max_age: int) -> None:
        response.set_cookie(
            name,
            self.seal(name, payload),
            max_age=max_age,
            path="/",
            secure=True,
            httponly=True,
            samesite="lax",
        )

    def clear(self, response: Response, name: str) -> None:
        response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="lax")


def session_payload(session: Session) -> dict[str, Any]:
    return asdict(session)


def session_from(data: dict[str, Any] | None, now: int, idle: int, absolute: int) -> Session | None:
    """The session in a cookie payload if well-formed and not expired (idle or absolute)."""
    if data is None:
        return None
    try:
        session = Session(**data)
    except TypeError:
        return None
    if not isinstance(session.created_at, int) or not isinstance(session.seen_at, int):
        return None
    if not isinstance(session.sid, str) or not session.sid:
        return None  # a cookie from before session ids: sign in again
    if now - session.seen_at > idle or now - session.created_at > absolute:
        return None
    return session


def login_from(data: dict[str, Any] | None, now: int, lifetime: int) -> LoginState | None:
    if data is None:
        return None
    try:
        login = LoginState(**data)
    except TypeError:
        return None
    return login if isinstance(login.created_at, int) and 0 <= now - login.created_at <= lifetime else None


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(session: Session, presented: object) -> bool:
    # Bytes: compare_digest refuses a str with non-ASCII characters (TypeError, a 500).
    return (
        isinstance(presented, str)
        and bool(presented)
        and hmac.compare_digest(presented.encode(), session.csrf.encode())
    )
