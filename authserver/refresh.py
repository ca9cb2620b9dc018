"""Refresh-token families for SMART apps, and the refresh_token grant.

SMART App Launch 2.2 "Scopes for requesting a refresh token" and "Refresh access token";
RFC 6749 §6; RFC 9700 §4.14 (refresh token protection):
- issued only when `offline_access` or `online_access` was granted; `online_access` tokens live
  only as long as the user's login session at this server (sign out, or session expiry, ends them);
- opaque, 256 random bits, stored as SHA-256 (`oauth_refresh_tokens`), bound to the client;
- a public client may leave out `client_id`: the token names its client (RFC 6749 §6 asks only
  confidential clients to authenticate; `owner`), which must still be active and public;
- rotated on every use: the presented token is marked used and a new one of the same family is
  returned. Presenting a token already rotated (or another client presenting it) is taken as
  theft: the whole family — every refresh token and every access token of the grant — is revoked
  (RFC 9700 §4.14.2 "refresh token rotation");
- the family keeps the scope granted at authorization; a refresh may ask for less (RFC 6749 §6:
  never more) and is then given an access token for the narrower scope, while the new refresh
  token keeps the family's scope; rotation never extends the family's absolute expiry.

A client whose network drops the response of a refresh and retries with the old token loses the
family and must send the user through /authorize again: the price of reuse detection.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authserver import sessions, tokens, users
from authserver.clients import Client
from authserver.errors import InvalidGrantError, InvalidRequestError, InvalidScopeError
from authserver.forms import one
from authserver.launch_context import LaunchContext
from authserver.models import RefreshTokenRow
from authserver.sessions import digest, new_secret
from authserver.settings import AuthSettings
from authserver.token_response import TokenResponse, issue_user_token, user_token_response
from authserver.users import User
from common.runtime import Runtime
from common.scopes import InvalidScopeError as ScopeSyntaxError
from common.scopes import ScopeSet, narrow, parse_scopes

OFFLINE = "offline_access"
ONLINE = "online_access"
log = logging.getLogger(__name__)


# --- refresh token families ----------------------------------------------------------------


def refresh_access(granted: ScopeSet, session_hash: str | None) -> str | None:
    """offline | online | None: which kind of refresh token (if any) the grant allows. An
    online_access token lives with the login session, so without one there is none."""
    if OFFLINE in granted.other:
        return "offline"
    if ONLINE in granted.other and session_hash is not None:
        return "online"
    return None


async def create(
    session: AsyncSession,
    *,
    family: str,
    client_id: str,
    username: str,
    scope: str,
    access: str,
    session_hash: str | None,
    context: LaunchContext,
    now: int,
    expires_at: int,
) -> str:
    # Expired families can never be used again: forget them (indexed, cheap, idempotent).
    await session.execute(delete(RefreshTokenRow).where(RefreshTokenRow.expires_at < now))
    value = new_secret()
    session.add(
        RefreshTokenRow(
            token_hash=digest(value),
            family=family,
            client_id=client_id,
            username=username,
            scope=scope,
            access=access,
            session_hash=session_hash,
            created_at=now,
            expires_at=expires_at,
            **context.columns(),
        )
    )
    return value


async def revoke_family(session: AsyncSession, family: str, now: int) -> None:
    """Revoke every refresh token and every access token of a grant family."""
    await session.execute(
        update(RefreshTokenRow)
        .where(RefreshTokenRow.family == family, RefreshTokenRow.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    await tokens.revoke_grant(session, family, now)


def narrower(requested: ScopeSet, allowed: ScopeSet) -> bool:
    """True when `requested` asks for nothing `allowed` does not grant."""
    narrowed = narrow(requested, allowed)
    return {s.to_v2() for s in narrowed.resources} == {s.to_v2() for s in requested.resources} and (
        narrowed.other == requested.other
    )


async def owner(runtime: Runtime, form: Any) -> str | None:
    """The client a presented refresh token was issued to (None if it is no refresh token of
    ours): how a public client that sends no client_id is identified (RFC 6749 §6)."""
    presented = one(form, "refresh_token")
    if not presented:
        raise InvalidRequestError("refresh_token is required")
    if len(presented) > 256:
        return None
    async with tokens.autocommit(runtime.sessions) as session:
        found = await session.execute(
            select(RefreshTokenRow.client_id).where(RefreshTokenRow.token_hash == digest(presented))
        )
        return found.scalar_one_or_none()


@dataclass(frozen=True)
class Refusal:
    reason: str
    revoke_family: bool = False  # theft or a grant that no longer holds: end every token of it


def refusal(row: RefreshTokenRow, client_id: str, fresh: bool, now: int) -> Refusal | None:
    """What the presented token's own record says (RFC 6749 §6, RFC 9700 §4.14.2): None when it
    may be rotated. `fresh`: this request's guarded UPDATE marked it used."""
    if row.client_id != client_id:
        return Refusal("the refresh token was not issued to this client", revoke_family=True)
    if not fresh and row.revoked_at is None:
        return Refusal(
            "the refresh token was already used; every token of this grant is now revoked", revoke_family=True
        )
    if not fresh or row.expires_at <= now:
        return Refusal("the refresh token is revoked or expired")
    if LaunchContext.of(row).options.simulate_error == "refresh_refused":
        return Refusal("refresh refused (simulated by the EHR's launch options)")
    return None


def requested_scope(requested: str, family_scope: str) -> str:
    """The scope of the new access token: the family's, or a narrower one asked for (RFC 6749 §6:
    never more than granted at authorization)."""
    if not requested.strip():
        return family_scope
    try:
        asked = parse_scopes(requested)
    except ScopeSyntaxError as exc:
        raise InvalidScopeError(str(exc)) from None
    if not narrower(asked, parse_scopes(family_scope)):
        raise InvalidScopeError("a refresh may only narrow the scope granted at authorization")
    return str(asked)


def current_scope(scope: str, client: Client, user: User) -> str:
    """The grant checked again: what the client is registered for now, within the user's role."""
    return str(narrow(narrow(parse_scopes(scope), parse_scopes(client.scope)), user.ceiling()))


async def _rotate(session: AsyncSession, token_hash: str, now: int) -> tuple[RefreshTokenRow | None, bool]:
    """Mark the token used. The guarded UPDATE runs first and takes the row (PostgreSQL) or the
    database (SQLite) write lock before anything is read, so two concurrent uses cannot both see
    it unused. Returns the row and whether this request was the one that marked it."""
    rotated = await session.execute(
        update(RefreshTokenRow)
        .where(
            RefreshTokenRow.token_hash == token_hash,
            RefreshTokenRow.used_at.is_(None),
            RefreshTokenRow.revoked_at.is_(None),
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    row = await session.get(RefreshTokenRow, token_hash) if token_hash else None
    return row, getattr(rotated, "rowcount", 0) == 1


async def _session_ended(session: AsyncSession, row: RefreshTokenRow, now: int) -> Refusal | None:
    """online_access tokens live only as long as the user's login session here."""
    if row.access == "online" and not (row.session_hash and await sessions.alive(session, row.session_hash, now)):
        return Refusal("the user is no longer signed in (online_access)", revoke_family=True)
    return None


async def _user_refusal(
    row: RefreshTokenRow, user: User | None, can_see: Callable[[User, str], Awaitable[bool]]
) -> Refusal | None:
    """What may have changed since authorization: the user, the patient's reach."""
    if user is None:
        return Refusal("the user is no longer active", revoke_family=True)
    patient = LaunchContext.of(row).patient
    if patient and not await can_see(user, patient):
        return Refusal("the patient is no longer available to this user", revoke_family=True)
    return None


async def refresh_token_grant(
    runtime: Runtime,
    settings: AuthSettings,
    client: Client,
    form: Any,
    can_see: Callable[[User, str], Awaitable[bool]],
) -> TokenResponse:
    """Rotate a refresh token and issue a new access token.

    The grant is checked again at every refresh: the scope is narrowed to what the client is
    registered for now and to the user's role, and a patient in context must still be in the
    user's reach — so removing an app's scope or a patient from a panel takes effect at the next
    refresh, not when the family expires. A refusal commits what it revoked, then answers
    invalid_grant; a broader scope raises inside the transaction, which rolls the rotation back.
    """
    presented = one(form, "refresh_token")
    if not presented:
        raise InvalidRequestError("refresh_token is required")
    asked = one(form, "scope")
    now = int(runtime.clock())
    token_hash = digest(presented) if len(presented) <= 256 else ""
    async with runtime.sessions() as session, session.begin():
        row, fresh = await _rotate(session, token_hash, now)
        outcome = await _refresh(session, runtime, settings, client, row, fresh, asked, can_see, now)
    if isinstance(outcome, Refusal):
        raise InvalidGrantError(outcome.reason)
    return outcome


async def _refresh(
    session: AsyncSession,
    runtime: Runtime,
    settings: AuthSettings,
    client: Client,
    row: RefreshTokenRow | None,
    fresh: bool,
    asked: str,
    can_see: Callable[[User, str], Awaitable[bool]],
    now: int,
) -> TokenResponse | Refusal:
    if row is None:
        return Refusal("the refresh token is invalid")
    refused = refusal(row, client.client_id, fresh, now) or await _session_ended(session, row, now)
    user: User | None = None
    scope = row.scope
    if refused is None:
        scope = requested_scope(asked, row.scope)
        user = await users.by_username(session, row.username)
        refused = await _user_refusal(row, user, can_see)
    if refused is not None or user is None:
        refused = refused or Refusal("the user is no longer active")
        if refused.revoke_family:
            log.warning(
                "refresh token of %s presented by %s refused (%s): family revoked",
                row.client_id,
                client.client_id,
                refused.reason,
            )
            await revoke_family(session, row.family, now)
        return refused
    scope = current_scope(scope, client, user)
    context = LaunchContext.of(row)
    issued = await issue_user_token(
        session,
        runtime,
        settings,
        client_id=client.client_id,
        user=user,
        scope=scope,
        context=context,
        family=row.family,
        now=now,
    )
    new_token = await create(
        session,
        family=row.family,
        client_id=row.client_id,
        username=row.username,
        scope=row.scope,
        access=row.access,
        session_hash=row.session_hash,
        context=context,
        now=now,
        expires_at=row.expires_at,
    )
    return user_token_response(issued, scope, context, settings).with_fields(refresh_token=new_token)


async def revoke_presented(session: AsyncSession, token: str, caller: Client, now: int) -> bool | None:
    """RFC 7009 for refresh tokens: None if `token` is no refresh token of ours; False if it
    belongs to another client; True once its family (refresh and access tokens) is revoked."""
    if not token or len(token) > 256:
        return None
    row = (
        await session.execute(select(RefreshTokenRow).where(RefreshTokenRow.token_hash == digest(token)))
    ).scalar_one_or_none()
    if row is None:
        return None
    if row.client_id != caller.client_id:
        return False
    await revoke_family(session, row.family, now)
    return True
