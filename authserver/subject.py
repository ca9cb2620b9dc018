"""The subject of a token exchange: who the user is (RFC 8693 §2.1 subject_token)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from authserver import tokens, users
from authserver.client_auth import ClientAuthenticator
from authserver.clients import Client
from authserver.errors import InvalidGrantError, InvalidRequestError
from authserver.token_exchange import TOKEN_TYPE_JWT, USER_ASSERTION_MAX_LIFETIME, USER_ASSERTION_TYP
from authserver.tokens import TOKEN_TYPE_ACCESS
from authserver.users import User
from common.errors import TokenInvalidError
from common.jose import KeySet
from common.jwt_verify import JwtRules, Replay, TokenReplayedError, verify
from common.keys import KeyStore


async def user_from_assertion(session: AsyncSession, assertion: str, actor: Client, auth: ClientAuthenticator) -> User:
    """A user assertion signed by the first-party EHR with its registered keys."""
    rules = JwtRules(
        algorithms=auth.algorithms,
        typ=USER_ASSERTION_TYP,
        issuer=actor.client_id,
        audience=auth.token_url,
        clock=auth.clock,
        leeway=auth.leeway,
        max_lifetime=USER_ASSERTION_MAX_LIFETIME,
    )

    async def actor_keys(kid: str) -> KeySet:
        return await auth.client_keys(actor, kid)

    try:
        verified = await verify(
            assertion, actor_keys, rules, Replay(auth.first_use, f"user-assertion|{actor.client_id}")
        )
    except TokenReplayedError:
        raise InvalidGrantError("subject_token was already used") from None
    except TokenInvalidError:
        raise InvalidGrantError("subject_token is not a valid user assertion from this client") from None
    claims = verified.claims
    user = await users.by_fhir_user(session, str(claims.get("sub", "")))
    if user is None:
        raise InvalidGrantError("subject_token names no active user")
    return user


async def user_from_access_token(
    session: AsyncSession,
    token: str,
    actor: Client,
    keys: KeyStore,
    issuer: str,
    audiences: list[str],
    now: int,
    leeway: int,
) -> User:
    """The user's own session token, issued by this server to this same client."""
    try:
        claims = await tokens.verify_own(token, keys, issuer, audiences, now, leeway)
    except TokenInvalidError:
        raise InvalidGrantError("subject_token is not a valid access token") from None
    row = await tokens.record(session, str(claims["jti"]))
    if row is None or row.revoked_at is not None or row.client_id != actor.client_id:
        raise InvalidGrantError("subject_token is not a live token of this client")
    if row.grant.startswith("token-exchange"):
        # A token the EHR got for itself for one patient (token_exchange.py) must not become a
        # key to the user's other patients: only the user's own session token stands for them.
        raise InvalidGrantError("subject_token is itself an exchanged token; present the user's own token")
    user = await users.by_username(session, str(claims.get("sub", "")))
    if user is None:
        raise InvalidGrantError("subject_token names no active user")
    return user


async def subject_user(
    session: AsyncSession,
    token: str,
    token_type: str,
    actor: Client,
    auth: ClientAuthenticator,
    keys: KeyStore,
    issuer: str,
    audiences: list[str],
    now: int,
) -> User:
    if not token:
        raise InvalidRequestError("subject_token is required")
    if token_type == TOKEN_TYPE_JWT:
        return await user_from_assertion(session, token, actor, auth)
    if token_type == TOKEN_TYPE_ACCESS:
        return await user_from_access_token(session, token, actor, keys, issuer, audiences, now, auth.leeway)
    raise InvalidRequestError("subject_token_type must be the jwt or access_token token type")
