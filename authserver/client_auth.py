"""Client authentication at the token, introspection and revocation endpoints.

- private_key_jwt (RFC 7523 §2.2 and §3; SMART App Launch 2.2 "Client Authentication:
  Asymmetric"): the assertion is verified with the client's registered keys (inline JWKS or its
  JWKS URL — a `jku` is accepted only if it equals that URL, and nothing else is ever fetched);
  algorithms pinned (RS384, ES384, plus configured extras); `typ` JWT; `kid` must name exactly
  one key, of a key type that fits the algorithm; `iss` = `sub` = client_id; `aud` = the token
  endpoint URL; `exp` at most 5 minutes ahead; `jti` never used before (a database row, so the
  rule holds across replicas and restarts).
- client_secret_basic (RFC 6749 §2.3.1) for symmetric clients, argon2-hashed secrets.
- public clients (SMART apps with auth_method none) identify themselves with `client_id`; on a
  refresh they may instead be identified by the refresh token they present (RFC 6749 §6: only a
  confidential client must authenticate), which `public_client` checks.

Every failure is the same `invalid_client` (401): the reason goes to the log, never to the peer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from urllib.parse import unquote

import httpx
import orjson
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import FormData, Headers

from authserver import clients
from authserver.clients import Client
from authserver.errors import InvalidClientError
from authserver.models import UsedJtiRow
from authserver.passwords import hash_password, verify_password
from authserver.tokens import autocommit
from common.clock import Clock
from common.errors import TokenInvalidError
from common.jose import KeySet, import_public_jwks, unverified_claims, unverified_header
from common.jwks import JwksCache
from common.jwt_verify import JwtRules, Replay, verify

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 300
INLINE_KEYS_CACHED = 1000  # parsed inline JWKS (a P-384 key import costs ~0.1 ms)
_DUMMY_HASH = hash_password("mockehr-no-such-client")  # SMART: exp no more than five minutes in the future
_KTY_FOR_ALG = {"ES": "EC", "RS": "RSA"}
log = logging.getLogger(__name__)


def _fail(reason: str) -> InvalidClientError:
    log.info("client authentication failed: %s", reason)
    return InvalidClientError("client authentication failed")


@dataclass
class ClientAuthenticator:
    sessions: async_sessionmaker[AsyncSession]
    token_url: str
    algorithms: Collection[str]
    clock: Clock
    leeway: int
    http: httpx.AsyncClient
    jwks_caches: dict[str, JwksCache] = field(default_factory=dict)
    inline_keys: dict[bytes, KeySet] = field(default_factory=dict)

    async def authenticate(self, form: FormData, headers: Headers, *, allow_public: bool = False) -> Client:
        assertion_type = form.get("client_assertion_type")
        if assertion_type is not None or form.get("client_assertion") is not None:
            if assertion_type != JWT_BEARER:
                raise _fail("unsupported client_assertion_type")
            return await self._private_key_jwt(str(form.get("client_assertion") or ""), form.get("client_id"))
        authorization = headers.get("authorization", "")
        if authorization[:6].lower() == "basic ":
            return await self._secret_basic(authorization[6:].strip())
        client_id = form.get("client_id")
        if allow_public and isinstance(client_id, str) and client_id:
            client = await self._client(client_id)
            if client.auth_method != "none":
                raise _fail(f"{client_id} is confidential but sent no credentials")
            return client
        raise _fail("no client credentials")

    @staticmethod
    def identifies_itself(form: FormData, headers: Headers) -> bool:
        """Does the request carry any client identification (an assertion, Basic or client_id)?"""
        return (
            "client_assertion" in form
            or "client_assertion_type" in form
            or "client_id" in form
            or headers.get("authorization", "")[:6].lower() == "basic "
        )

    async def public_client(self, client_id: str) -> Client:
        """The active public client a refresh token was issued to, for a request that sent no
        credentials; a confidential client never passes without authenticating."""
        client = await self._client(client_id)
        if client.auth_method != "none":
            raise _fail(f"{client_id} is confidential but sent no credentials")
        return client

    async def _client(self, client_id: str) -> Client:
        async with autocommit(self.sessions) as session:
            client = await clients.get(session, client_id)
        if client is None or not client.active:
            raise _fail(f"unknown or disabled client {client_id!r}")
        return client

    async def _secret_basic(self, encoded: str) -> Client:
        try:
            raw = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise _fail("malformed Basic credentials") from None
        client_id, sep, secret = raw.partition(":")
        if not sep:
            raise _fail("malformed Basic credentials")
        # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
        try:
            client = await self._client(unquote(client_id))
        except InvalidClientError:
            # Spend the same argon2 work as for a real client: timing must not tell which ids exist.
            await asyncio.to_thread(verify_password, _DUMMY_HASH, unquote(secret))
            raise
        if client.auth_method != "client_secret_basic" or not client.secret_hash:
            await asyncio.to_thread(verify_password, _DUMMY_HASH, unquote(secret))
            raise _fail("client is not registered for client_secret_basic")
        # argon2 takes tens of milliseconds: keep it off the event loop.
        if not await asyncio.to_thread(verify_password, client.secret_hash, unquote(secret)):
            raise _fail("wrong client secret")
        return client

    async def client_keys(self, client: Client, kid: str) -> KeySet:
        if client.jwks is not None:
            # Keyed by the registered JWKS itself: a changed registration is a different key.
            registered = orjson.dumps(client.jwks, option=orjson.OPT_SORT_KEYS)
            key_set = self.inline_keys.get(registered)
            if key_set is None:
                key_set = import_public_jwks(client.jwks)
                if len(self.inline_keys) >= INLINE_KEYS_CACHED:
                    self.inline_keys.clear()
                self.inline_keys[registered] = key_set
            return key_set
        if client.jwks_uri is None:
            raise _fail("client has no keys")
        cache = self.jwks_caches.get(client.jwks_uri)
        if cache is None:  # one cache per registered URL: bounded by the registry
            cache = JwksCache(self.http, client.jwks_uri, clock=self.clock)
            self.jwks_caches[client.jwks_uri] = cache
        return await cache.key_set(kid)

    async def _private_key_jwt(self, assertion: str, form_client_id: object) -> Client:
        try:
            header = unverified_header(assertion)
            claimed = unverified_claims(assertion)
        except TokenInvalidError as exc:
            raise _fail(exc.reason) from None
        client_id = claimed.get("iss")
        if not isinstance(client_id, str) or (form_client_id is not None and form_client_id != client_id):
            raise _fail("iss missing or different from client_id")
        client = await self._client(client_id)
        if client.auth_method != "private_key_jwt":
            raise _fail(f"{client_id} is not registered for private_key_jwt")
        # verify checks the header (alg among ours, a kid) before it asks for keys.
        alg = str(header.get("alg"))

        async def registered_keys(kid: str) -> KeySet:
            keys = await self.client_keys(client, kid)
            matching = [k for k in keys.keys if k.kid == kid]
            if len(matching) != 1 or matching[0].key_type != _KTY_FOR_ALG.get(alg[:2]):
                raise _fail("kid does not name exactly one key of the right type")
            return keys

        rules = JwtRules(
            algorithms=self.algorithms,
            typ="JWT",
            issuer=client_id,
            audience=self.token_url,
            clock=self.clock,
            leeway=self.leeway,
            max_lifetime=MAX_ASSERTION_LIFETIME,
            require=("exp", "jti"),
            allowed_jku=(client.jwks_uri,) if client.jwks_uri else (),
            subject=client_id,
        )
        try:
            await verify(assertion, registered_keys, rules, Replay(self.first_use, client_id))
        except TokenInvalidError as exc:
            raise _fail(exc.reason) from None
        return client

    async def first_use(self, key: str, expires_at: int) -> bool:
        """Record a jti; False if it was used before (a row, so replicas and restarts agree)."""
        try:
            # One INSERT, committed by itself (one round trip); the primary key refuses a replay.
            async with autocommit(self.sessions) as session:
                await session.execute(insert(UsedJtiRow).values(key=key[:300], expires_at=expires_at))
        except IntegrityError:
            return False
        return True  # expired rows are deleted by maintenance.Housekeeper
