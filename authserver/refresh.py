"""Refresh tokens for SMART apps, and the token response both user grants share.

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
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authserver import sessions, tokens, users
from authserver.clients import Client
from authserver.errors import InvalidGrantError, InvalidRequestError, InvalidScopeError
from authserver.launch import LaunchContext
from authserver.models import RefreshTokenRow
from authserver.sessions import digest, new_secret
from authserver.settings import AuthSettings
from authserver.tokens import Grant, Issued
from authserver.users import User
from common.runtime import Runtime
from common.scopes import InvalidScopeError as ScopeSyntaxError
from common.scopes import ScopeSet, narrow, parse_scopes

OFFLINE = "offline_access"
ONLINE = "online_access"
log = logging.getLogger(__name__)


# --- tokens for a signed-in user (authorization_code and refresh_token) ------------------------


async def issue_user_token(
    session: AsyncSession,
    runtime: Runtime,
    settings: AuthSettings,
    *,
    client_id: str,
    user: User,
    scope: str,
    context: LaunchContext,
    family: str,
    now: int,
) -> Issued:
    """An RFC 9068 access token for the user, recorded under the grant `family` (so a code replay
    or a refresh-token reuse can revoke it). fhirUser is always present: the FHIR server needs it
    for user/ scopes, and it marks the token as user-bound."""
    grant = Grant(
        client_id=client_id,
        sub=user.username,
        scope=scope,
        audience=settings.fhir_base_url,
        lifetime=context.options.lifetime(settings.access_token_lifetime_seconds),
        grant=family,
        patient=context.patient,
        fhir_user=f"{settings.fhir_base_url.rstrip('/')}/{user.fhir_user}",
        encounter=context.encounter,
    )
    issued = await tokens.issue(session, runtime.signing_keys, settings.base_url, grant, now)
    if context.options.simulate_error == "token_revoked":
        # Launch options: refused by the FHIR server before its exp (launch_options.py).
        row = await tokens.record(session, issued.jti)
        await tokens.revoke(session, [row] if row is not None else [], now)
    return issued


def token_body(issued: Issued, scope: str, context: LaunchContext, settings: AuthSettings) -> dict[str, Any]:
    """SMART 2.2 "Response to a successful access token request" (RFC 6749 §5.1 + launch context)."""
    body: dict[str, Any] = {
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": context.options.lifetime(settings.access_token_lifetime_seconds),
        "scope": scope,
    }
    body.update(context.response_fields())
    body["smart_style_url"] = settings.style_url
    return body


# --- refresh token families ----------------------------------------------------------------


def refresh_access(granted: ScopeSet) -> str | None:
    """offline | online | None: which kind of refresh token (if any) the grant allows."""
    if OFFLINE in granted.other:
        return "offline"
    if ONLINE in granted.other:
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


def _one(form: Any, name: str) -> str:
    values = [v for v in form.getlist(name) if isinstance(v, str)]
    if len(values) > 1:  # RFC 6749 §3.2: parameters must not be repeated
        raise InvalidRequestError(f"{name} is repeated")
    return values[0] if values else ""


def _narrower(requested: ScopeSet, allowed: ScopeSet) -> bool:
    """True when `requested` asks for nothing `allowed` does not grant."""
    narrowed = narrow(requested, allowed)
    return {s.to_v2() for s in narrowed.resources} == {s.to_v2() for s in requested.resources} and (
        narrowed.other == requested.other
    )


async def owner(runtime: Runtime, form: Any) -> str | None:
    """The client a presented refresh token was issued to (None if it is no refresh token of
    ours): how a public client that sends no client_id is identified (RFC 6749 §6)."""
    presented = _one(form, "refresh_token")
    if not presented:
        raise InvalidRequestError("refresh_token is required")
    if len(presented) > 256:
        return None
    async with tokens.autocommit(runtime.sessions) as session:
        found = await session.execute(
            select(RefreshTokenRow.client_id).where(RefreshTokenRow.token_hash == digest(presented))
        )
        return found.scalar_one_or_none()


async def refresh_token_grant(
    runtime: Runtime,
    settings: AuthSettings,
    client: Client,
    form: Any,
    can_see: Callable[[User, str], Awaitable[bool]],
) -> dict[str, Any]:
    """Rotate a refresh token and issue a new access token.

    The grant is checked again at every refresh: the scope is narrowed to what the client is
    registered for now and to the user's role, and a patient in context must still be in the
    user's reach — so removing an app's scope or a patient from a panel takes effect at the next
    refresh, not when the family expires.
    """
    presented = _one(form, "refresh_token")
    if not presented:
        raise InvalidRequestError("refresh_token is required")
    requested_scope = _one(form, "scope")
    now = int(runtime.clock())
    failure = ""
    body: dict[str, Any] = {}
    token_hash = digest(presented) if len(presented) <= 256 else ""
    async with runtime.sessions() as session, session.begin():
        # Rotate first: the guarded UPDATE takes the row (PostgreSQL) or the database (SQLite)
        # write lock before anything is read, so two concurrent uses cannot both see it unused.
        # A refusal that must not spend the token (a broader scope) raises, which rolls it back.
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
        fresh = getattr(rotated, "rowcount", 0) == 1
        if row is None:
            failure = "the refresh token is invalid"
        elif row.client_id != client.client_id:
            log.warning("refresh token of %s presented by %s: family revoked", row.client_id, client.client_id)
            await revoke_family(session, row.family, now)
            failure = "the refresh token was not issued to this client"
        elif not fresh and row.revoked_at is None:
            log.warning("rotated refresh token reused by %s: family revoked", client.client_id)
            await revoke_family(session, row.family, now)
            failure = "the refresh token was already used; every token of this grant is now revoked"
        elif not fresh or row.expires_at <= now:
            failure = "the refresh token is revoked or expired"
        elif LaunchContext.of(row).options.simulate_error == "refresh_refused":
            failure = "refresh refused (simulated by the EHR's launch options)"
        elif row.access == "online" and not (row.session_hash and await sessions.alive(session, row.session_hash, now)):
            await revoke_family(session, row.family, now)
            failure = "the user is no longer signed in (online_access)"
        else:
            scope = row.scope
            if requested_scope.strip():
                try:
                    requested = parse_scopes(requested_scope)
                except ScopeSyntaxError as exc:
                    raise InvalidScopeError(str(exc)) from None
                if not _narrower(requested, parse_scopes(row.scope)):
                    raise InvalidScopeError("a refresh may only narrow the scope granted at authorization")
                scope = str(requested)
            user = await users.by_username(session, row.username)
            context = LaunchContext.of(row)
            if user is not None:
                scope = str(narrow(narrow(parse_scopes(scope), parse_scopes(client.scope)), user.ceiling()))
            if user is None:
                await revoke_family(session, row.family, now)
                failure = "the user is no longer active"
            elif context.patient and not await can_see(user, context.patient):
                await revoke_family(session, row.family, now)
                failure = "the patient is no longer available to this user"
            else:
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
                body = token_body(issued, scope, context, settings)
                body["refresh_token"] = await create(
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
    if failure:
        raise InvalidGrantError(failure)
    return body


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
