"""Authorization codes and the authorization_code grant (RFC 6749 §4.1, RFC 7636, SMART 2.2).

A code is 256 random bits, handed to the app once in the redirect and stored only as its
SHA-256 (`oauth_codes`), bound to the client, the redirect_uri, the PKCE S256 challenge, the user,
the granted scope and the launch context. It lives `authorization_code_lifetime_seconds` (≤ 60 s).

At the token endpoint (`grant_type=authorization_code`):
- the code is marked used in the same transaction that issues the tokens, by an UPDATE guarded
  by `used_at IS NULL`, so two concurrent redemptions cannot both win (PostgreSQL row lock,
  SQLite database write lock);
- a code presented again → invalid_grant, and every token it issued (access and refresh, one
  grant family) is revoked (RFC 6749 §4.1.2 and §10.5);
- a code presented with a wrong binding (other client, other redirect_uri, wrong or missing
  code_verifier, expired) → invalid_grant, and the code is burnt: a legitimate client never
  makes that mistake, so whoever holds it is not to be given a second try;
- PKCE (RFC 7636 §4.1, §4.6): code_verifier is 43–128 unreserved characters and
  BASE64URL(SHA256(verifier)) must equal the stored challenge (constant-time comparison);
- public clients identify with client_id, confidential ones authenticate (client_auth.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession

from authserver import refresh, users
from authserver.clients import Client
from authserver.errors import InvalidGrantError, InvalidRequestError, UnauthorizedClientError
from authserver.forms import one
from authserver.id_token import make_id_token
from authserver.launch_context import LaunchContext
from authserver.models import AuthorizationCodeRow
from authserver.sessions import digest, new_secret
from authserver.settings import AuthSettings
from authserver.token_response import TokenResponse, issue_user_token, user_token_response
from common.runtime import Runtime
from common.scopes import parse_scopes

VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")  # RFC 7636 §4.1
CHALLENGE_S256 = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of 32 bytes, no padding (§4.2)
log = logging.getLogger(__name__)


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def new_family() -> str:
    """The grant id recorded on every token a code (and its refresh tokens) produce."""
    return "smart:" + new_secret()[:32]


@dataclass(frozen=True)
class CodeGrant:
    client_id: str
    redirect_uri: str
    code_challenge: str
    username: str
    scope: str
    context: LaunchContext
    nonce: str | None
    session_hash: str | None
    auth_time: int


# Used and expired codes are kept this long, so that a late replay still revokes what the code
# issued; then they are forgotten (on the next code issued).
CODE_RECORD_GRACE = 3600


async def create(session: AsyncSession, grant: CodeGrant, now: int, lifetime: int) -> str:
    await session.execute(delete(AuthorizationCodeRow).where(AuthorizationCodeRow.expires_at < now - CODE_RECORD_GRACE))
    code = new_secret()
    session.add(
        AuthorizationCodeRow(
            code_hash=digest(code),
            family=new_family(),
            client_id=grant.client_id,
            redirect_uri=grant.redirect_uri,
            code_challenge=grant.code_challenge,
            username=grant.username,
            scope=grant.scope,
            nonce=grant.nonce,
            session_hash=grant.session_hash,
            auth_time=grant.auth_time,
            created_at=now,
            expires_at=now + lifetime,
            **grant.context.columns(),
        )
    )
    return code


def binding_failure(row: AuthorizationCodeRow, client: Client, redirect_uri: str, verifier: str, now: int) -> str:
    """Why a code cannot be redeemed by this client with this redirect_uri and verifier ("" if it
    can): RFC 6749 §4.1.3 (client and redirect_uri binding), RFC 7636 §4.6 (PKCE S256)."""
    if row.expires_at <= now:
        return "the authorization code has expired"
    if row.client_id != client.client_id:
        return "the authorization code was not issued to this client"
    if redirect_uri != row.redirect_uri:
        return "redirect_uri does not match the authorization request"
    if not VERIFIER.fullmatch(verifier):
        return "code_verifier is missing or malformed (RFC 7636: 43-128 unreserved characters)"
    if not hmac.compare_digest(s256(verifier), row.code_challenge):
        return "code_verifier does not match the code_challenge"
    return ""


async def authorization_code_grant(
    runtime: Runtime, settings: AuthSettings, client: Client, form: Any
) -> TokenResponse:
    if client.kind not in ("smart-app", "ehr"):
        raise UnauthorizedClientError("the authorization_code grant is for SMART apps")
    code = one(form, "code")
    if not code:
        raise InvalidRequestError("code is required")
    redirect_uri, verifier = one(form, "redirect_uri"), one(form, "code_verifier")
    code_hash = digest(code) if len(code) <= 256 else ""
    now = int(runtime.clock())
    failure = ""
    response: TokenResponse | None = None
    async with runtime.sessions() as session, session.begin():
        marked = await session.execute(
            update(AuthorizationCodeRow)
            .where(AuthorizationCodeRow.code_hash == code_hash, AuthorizationCodeRow.used_at.is_(None))
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        row = await session.get(AuthorizationCodeRow, code_hash) if code_hash else None
        if row is None:
            failure = "the authorization code is invalid"
        elif getattr(marked, "rowcount", 0) != 1:
            log.warning("authorization code replayed by %s: its tokens are revoked", client.client_id)
            await refresh.revoke_family(session, row.family, now)
            failure = "the authorization code was already used; the tokens it issued are now revoked"
        else:
            failure = binding_failure(row, client, redirect_uri, verifier, now)
            user = await users.by_username(session, row.username) if not failure else None
            if not failure and user is None:
                failure = "the user is no longer active"
            if not failure and user is not None:
                response = await _tokens(session, runtime, settings, row, client, user, now)
    if failure or response is None:
        raise InvalidGrantError(failure)
    return response


async def _tokens(
    session: AsyncSession,
    runtime: Runtime,
    settings: AuthSettings,
    row: AuthorizationCodeRow,
    client: Client,
    user: users.User,
    now: int,
) -> TokenResponse:
    context = LaunchContext.of(row)
    granted = parse_scopes(row.scope)
    issued = await issue_user_token(
        session,
        runtime,
        settings,
        client_id=client.client_id,
        user=user,
        scope=row.scope,
        context=context,
        family=row.family,
        now=now,
    )
    response = user_token_response(issued, row.scope, context, settings)
    if "openid" in granted.other:
        id_token = await make_id_token(
            runtime.signing_keys,
            issuer=settings.base_url,
            fhir_base=settings.fhir_base_url,
            user=user,
            client_id=client.client_id,
            nonce=row.nonce,
            auth_time=row.auth_time,
            access_token=issued.token,
            now=now,
            lifetime=settings.access_token_lifetime_seconds,
            with_fhir_user="fhirUser" in granted.other,
            with_profile="profile" in granted.other,
        )
        response = response.with_fields(id_token=id_token)
    access = refresh.refresh_access(granted, row.session_hash)
    if access is not None:
        refresh_token = await refresh.create(
            session,
            family=row.family,
            client_id=client.client_id,
            username=user.username,
            scope=row.scope,
            access=access,
            session_hash=row.session_hash if access == "online" else None,
            context=context,
            now=now,
            expires_at=now + settings.refresh_token_lifetime_seconds,
        )
        response = response.with_fields(refresh_token=refresh_token)
    return response
