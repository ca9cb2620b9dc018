"""Access tokens: issuing (RFC 9068 JWT profile), revoking (RFC 7009) and introspecting (RFC 7662).

Every token is a JWT in the RFC 9068 profile of `common/access_token.py`, signed with the
authserver's current key, and is recorded in `oauth_tokens` so that it can be revoked and
introspected. Revocations are appended to `oauth_revocations`, the feed that every FHIR server
replica polls (see /revocations).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from authserver.models import IssuedTokenRow, RevocationRow
from common import access_token
from common.jose import KeySet
from common.keys import KeyStore

TOKEN_TYPE_ACCESS = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN


@asynccontextmanager
async def autocommit(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session whose statements each commit on their own: no BEGIN and COMMIT round trips.

    For units of work that are one statement (a lookup, one INSERT), which are atomic by
    themselves; the caller ends a write with `await session.commit()` (which then only flushes).
    """
    async with sessions() as session:
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


@dataclass(frozen=True)
class Grant:
    """What a grant decided; `issue` turns it into a signed, recorded token."""

    client_id: str
    sub: str
    scope: str
    audience: str
    lifetime: int
    grant: str
    patient: str | None = None
    fhir_user: str | None = None
    actor_client_id: str | None = None
    encounter: str | None = None


@dataclass(frozen=True)
class Issued:
    token: str
    jti: str
    exp: int
    claims: dict[str, Any]


async def issue(session: AsyncSession, keys: KeyStore, issuer: str, grant: Grant, now: int) -> Issued:
    """Sign an RFC 9068 access token for `grant` and record it (same transaction as the caller)."""
    claims = access_token.claims(
        issuer=issuer,
        subject=grant.sub,
        audience=grant.audience,
        client_id=grant.client_id,
        scope=grant.scope,
        now=now,
        lifetime=grant.lifetime,
        patient=grant.patient,
        encounter=grant.encounter,
        fhir_user=grant.fhir_user,
        actor_client_id=grant.actor_client_id,
    )
    jti = str(claims["jti"])
    token = access_token.sign(claims, await keys.signer())
    session.add(
        IssuedTokenRow(
            jti=jti,
            kind="access",
            client_id=grant.client_id,
            actor_client_id=grant.actor_client_id,
            sub=grant.sub,
            scope=grant.scope,
            patient=grant.patient,
            fhir_user=grant.fhir_user,
            grant=grant.grant,
            iat=now,
            exp=now + grant.lifetime,
        )
    )
    return Issued(token=token, jti=jti, exp=now + grant.lifetime, claims=claims)


async def verify_own(
    token: str, keys: KeyStore, issuer: str, audiences: list[str], now: int, leeway: int
) -> dict[str, Any]:
    """Verify an access token this server issued (the RFC 9068 profile, one of our audiences)."""

    async def own_keys(_kid: str) -> KeySet:
        return await keys.public_key_set()

    return await access_token.verify_access_token(
        token, own_keys, issuer=issuer, audience=audiences, clock=lambda: now, leeway=leeway
    )


async def record(session: AsyncSession, jti: str) -> IssuedTokenRow | None:
    return await session.get(IssuedTokenRow, jti)


async def revoke(session: AsyncSession, rows: list[IssuedTokenRow], now: int) -> int:
    """Revoke tokens (idempotent) and append them to the revocation feed."""
    count = 0
    for row in rows:
        if row.revoked_at is None:
            row.revoked_at = now
            session.add(RevocationRow(jti=row.jti, exp=row.exp, revoked_at=now))
            count += 1
    return count


async def revoke_grant(session: AsyncSession, grant: str, now: int) -> int:
    """Revoke every token a grant (an authorization code, a refresh family) produced."""
    rows = list((await session.execute(select(IssuedTokenRow).where(IssuedTokenRow.grant == grant))).scalars())
    return await revoke(session, rows, now)


async def feed(session: AsyncSession, after: int, now: int, limit: int) -> list[RevocationRow]:
    """Revocations after sequence `after` whose tokens have not expired yet, oldest first."""
    query = (
        select(RevocationRow)
        .where(RevocationRow.seq > after, RevocationRow.exp > now)
        .order_by(RevocationRow.seq)
        .limit(limit)
    )
    return list((await session.execute(query)).scalars())
