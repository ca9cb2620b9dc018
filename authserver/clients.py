"""The client registry: who may ask this server for tokens, and for what.

Kinds (docs/tokens.md lists what each may obtain):
- `ehr`: confidential, private_key_jwt; `first_party` lets it obtain tokens on behalf of
  registered CDS Services (token exchange) and sign user assertions.
- `cds-service`: its client_id is `fhirAuthorization.subject`; `scope` is what an
  administrator approved for it. It may have its own keys for the backend-services path.
- `smart-app`: public (auth_method none) or confidential; exact redirect URIs; launch URL.
- `backend`: private_key_jwt with an inline JWKS or a JWKS URL; `scope` = pre-authorised system/ scopes.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from authserver.models import ClientRow
from authserver.passwords import hash_password
from common import app_origins
from common.http import check_outbound_url
from common.jose import import_public_jwks
from common.scopes import parse_scopes

Kind = Literal["ehr", "cds-service", "smart-app", "backend"]
AuthMethod = Literal["private_key_jwt", "client_secret_basic", "none"]
KINDS: tuple[Kind, ...] = ("ehr", "cds-service", "smart-app", "backend")
AUTH_METHODS: tuple[AuthMethod, ...] = ("private_key_jwt", "client_secret_basic", "none")
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class ClientError(ValueError):
    """A registration that would be unsafe or malformed; the message says which rule."""


@dataclass(frozen=True)
class Client:
    client_id: str
    kind: Kind
    name: str
    auth_method: AuthMethod
    scope: str
    first_party: bool
    active: bool
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    redirect_uris: tuple[str, ...] = ()
    launch_url: str | None = None
    secret_hash: str | None = field(default=None, repr=False)

    def public_json(self) -> dict[str, Any]:
        """What the admin API and `mockehr clients list` show (never the secret hash)."""
        return {
            "client_id": self.client_id,
            "kind": self.kind,
            "name": self.name,
            "auth_method": self.auth_method,
            "scope": self.scope,
            "first_party": self.first_party,
            "active": self.active,
            "jwks_uri": self.jwks_uri,
            "jwks": self.jwks,
            "redirect_uris": list(self.redirect_uris),
            "launch_url": self.launch_url,
        }


def _from_row(row: ClientRow) -> Client:
    return Client(
        client_id=row.client_id,
        kind=row.kind,  # type: ignore[arg-type]
        name=row.name,
        auth_method=row.auth_method,  # type: ignore[arg-type]
        scope=row.scope,
        first_party=row.first_party,
        active=row.active,
        jwks=json.loads(row.jwks) if row.jwks else None,
        jwks_uri=row.jwks_uri,
        redirect_uris=tuple(json.loads(row.redirect_uris or "[]")),
        launch_url=row.launch_url,
        secret_hash=row.secret_hash,
    )


def _check_redirect_uri(uri: str) -> None:
    # RFC 9700 §2.1: exact registered URIs; https, or http only on loopback (native/dev apps).
    try:
        check_outbound_url(uri, allow_loopback_http=True)
    except ValueError as exc:
        raise ClientError(f"redirect URI {uri!r}: {exc}") from None
    if "#" in uri:
        raise ClientError("a redirect URI may not contain a fragment (RFC 6749 §3.1.2)")


def validate(client: Client, secret: str | None) -> None:
    if not _CLIENT_ID.fullmatch(client.client_id):
        raise ClientError("client_id: 1–128 characters of A-Z a-z 0-9 . _ : -")
    if client.kind not in KINDS:
        raise ClientError(f"kind must be one of {', '.join(KINDS)}")
    if client.auth_method not in AUTH_METHODS:
        raise ClientError(f"auth_method must be one of {', '.join(AUTH_METHODS)}")
    if client.auth_method == "private_key_jwt" and not (client.jwks or client.jwks_uri):
        raise ClientError("private_key_jwt needs a JWKS (inline) or a JWKS URL")
    if client.jwks is not None:
        import_public_jwks(client.jwks)  # refuses private members and malformed keys
    if client.jwks_uri is not None:
        try:
            check_outbound_url(client.jwks_uri, allow_loopback_http=False)
        except ValueError as exc:
            raise ClientError(f"jwks_uri: {exc}") from None
    if client.auth_method == "client_secret_basic" and not secret:
        raise ClientError("client_secret_basic needs a secret")
    # A CDS Service that never calls the token endpoint itself (the EHR obtains its tokens) has
    # no credentials; it needs keys only for the backend-services path.
    if client.auth_method == "none" and client.kind not in ("smart-app", "cds-service"):
        raise ClientError("only SMART apps and key-less CDS Services may be public clients")
    if client.first_party and client.kind != "ehr":
        raise ClientError("only the EHR may be a first-party client")
    if client.kind == "backend" and any(r.context != "system" for r in parse_scopes(client.scope).resources):
        raise ClientError("backend clients are pre-authorised for system/ scopes only")
    parse_scopes(client.scope)
    for uri in client.redirect_uris:
        _check_redirect_uri(uri)


async def register(session: AsyncSession, client: Client, secret: str | None = None) -> Client:
    """Insert or replace a client registration (validated first)."""
    validate(client, secret)
    row = await session.get(ClientRow, client.client_id)
    if row is None:
        row = ClientRow(client_id=client.client_id, created_at=int(time.time()))
        session.add(row)
    row.kind, row.name, row.auth_method = client.kind, client.name, client.auth_method
    row.scope, row.first_party, row.active = client.scope, client.first_party, client.active
    row.jwks = json.dumps(client.jwks) if client.jwks else None
    row.jwks_uri = client.jwks_uri
    row.redirect_uris = json.dumps(list(client.redirect_uris))
    row.launch_url = client.launch_url
    row.secret_hash = hash_password(secret) if secret else None
    await session.flush()
    await _sync_origins(session, row)
    return _from_row(row)


async def _sync_origins(session: AsyncSession, row: ClientRow) -> None:
    """Browser origins granted CORS (common/app_origins.py): those of an active SMART app's
    redirect URIs and launch URL, kept in the transaction that changes the registration."""
    urls: list[str] = []
    if row.active and row.kind == "smart-app":
        urls = [*json.loads(row.redirect_uris or "[]"), *([row.launch_url] if row.launch_url else [])]
    await app_origins.sync(session, row.client_id, urls)


async def get(session: AsyncSession, client_id: str) -> Client | None:
    row = await session.get(ClientRow, client_id)
    return _from_row(row) if row is not None else None


async def list_all(session: AsyncSession) -> list[Client]:
    rows = (await session.execute(select(ClientRow).order_by(ClientRow.client_id))).scalars()
    return [_from_row(r) for r in rows]


async def set_active(session: AsyncSession, client_id: str, active: bool) -> bool:
    row = await session.get(ClientRow, client_id)
    if row is None:
        return False
    row.active = active
    await _sync_origins(session, row)
    return True
