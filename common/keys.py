"""Signing keys: generation, storage encrypted at rest, public JWKS, rotation with overlap.

- Algorithms: ES384 (default), RS384, ES256 — the asymmetric algorithms CDS Hooks and SMART
  recommend; never HMAC, never `none`.
- `kid` is the RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key.
- Private keys are stored in the database encrypted (AES-256-GCM, common.crypto) under the
  key-encryption key from settings, so every replica of a service signs with the same key.
- Rotation (RFC 7517 §5 key sets; CDS Hooks 2.0 "Trusting CDS Clients": old keys stay
  published until every token they signed has expired): the new key is published at once and
  signs once it has been published for `publish_ahead` seconds (so verifiers that cached the
  JWKS a moment before can refetch it before they meet the new kid); until then the previous key
  keeps signing. The old key stays in the JWKS until `publish_until` = rotation time +
  publish_ahead + the longest token lifetime + leeway; then it is retired and its private part
  destroyed.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Literal

from joserfc.jwk import ECKey, KeySet, RSAKey
from sqlalchemy import Index, Integer, LargeBinary, String, Text, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from common import crypto
from common.clock import Clock, system_clock
from common.db import Base
from common.errors import KeyNotFoundError

Alg = Literal["ES384", "RS384", "ES256"]
ALGORITHMS: tuple[Alg, ...] = ("ES384", "RS384", "ES256")
PrivateKey = ECKey | RSAKey

# Members of a JWK that are private (RFC 7518 §6.2.2, §6.3.2): never published.
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

ACTIVE = "active"
RETIRING = "retiring"
RETIRED = "retired"


class SigningKeyRow(Base):
    """One key of one service. At most one `active` row per service (partial unique index)."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    service: Mapped[str] = mapped_column(String(64))
    alg: Mapped[str] = mapped_column(String(16))
    public_jwk: Mapped[str] = mapped_column(Text)
    private_jwk_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(Integer)
    rotated_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    publish_until: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (
        Index("ix_signing_keys_service_status", "service", "status"),
        Index(
            "uq_signing_keys_one_active",
            "service",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )


@dataclass(frozen=True)
class SigningKey:
    """A private key ready to sign, with its kid and algorithm."""

    kid: str
    alg: str
    key: PrivateKey


def generate_key(alg: Alg) -> PrivateKey:
    if alg == "ES384":
        return ECKey.generate_key("P-384", auto_kid=False)
    if alg == "ES256":
        return ECKey.generate_key("P-256", auto_kid=False)
    if alg == "RS384":
        return RSAKey.generate_key(3072, auto_kid=False)
    raise ValueError(f"unsupported signing algorithm {alg!r}")


def public_jwk(key: PrivateKey, kid: str, alg: str) -> dict[str, Any]:
    """The public JWK with kid, alg and use; asserts no private member slipped through."""
    jwk = dict(key.as_dict(private=False))
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    leaked = PRIVATE_MEMBERS & jwk.keys()
    if leaked:  # a bug, never a runtime condition: refuse rather than publish a private key
        raise AssertionError(f"public JWK would contain private members {sorted(leaked)}")
    return jwk


def _aad(service: str, kid: str) -> bytes:
    return f"mockehr-signing-key:{service}:{kid}".encode()


def new_key_row(service: str, alg: Alg, kek: bytes, now: int) -> tuple[SigningKeyRow, SigningKey]:
    key = generate_key(alg)
    kid = key.thumbprint()  # RFC 7638, SHA-256
    private = json.dumps(key.as_dict(private=True), separators=(",", ":")).encode()
    row = SigningKeyRow(
        kid=kid,
        service=service,
        alg=alg,
        public_jwk=json.dumps(public_jwk(key, kid, alg)),
        private_jwk_enc=crypto.encrypt(kek, private, _aad(service, kid)),
        status=ACTIVE,
        created_at=now,
    )
    return row, SigningKey(kid=kid, alg=alg, key=key)


def decrypt_row(row: SigningKeyRow, kek: bytes) -> SigningKey:
    if row.private_jwk_enc is None:
        raise KeyNotFoundError(f"key {row.kid} is retired")
    data = json.loads(crypto.decrypt(kek, row.private_jwk_enc, _aad(row.service, row.kid)))
    key: PrivateKey = ECKey.import_key(data) if data["kty"] == "EC" else RSAKey.import_key(data)
    return SigningKey(kid=row.kid, alg=row.alg, key=key)


async def active_row(session: AsyncSession, service: str) -> SigningKeyRow | None:
    result = await session.execute(
        select(SigningKeyRow).where(SigningKeyRow.service == service, SigningKeyRow.status == ACTIVE)
    )
    return result.scalar_one_or_none()


async def ensure_active_key(
    sessions: async_sessionmaker[AsyncSession], service: str, alg: Alg, kek: bytes, now: int
) -> str:
    """Create the service's first key if it has none; safe when replicas race. Returns the kid."""
    async with sessions() as session:
        row = await active_row(session, service)
        if row is not None:
            return row.kid
    try:
        async with sessions() as session, session.begin():
            new, _ = new_key_row(service, alg, kek, now)
            session.add(new)
        return new.kid
    except IntegrityError:  # another replica created it first: use theirs
        async with sessions() as session:
            row = await active_row(session, service)
            if row is None:
                raise
            return row.kid


async def rotate(
    sessions: async_sessionmaker[AsyncSession],
    service: str,
    alg: Alg,
    kek: bytes,
    now: int,
    overlap_seconds: int,
) -> tuple[str, str | None]:
    """Make a new active key; the old one keeps being published for `overlap_seconds`.

    Returns (new kid, old kid or None).
    """
    async with sessions() as session, session.begin():
        old = await active_row(session, service)
        if old is not None:
            old.status = RETIRING
            old.rotated_at = now
            old.publish_until = now + overlap_seconds
            await session.flush()  # free the "one active" slot before the insert
        new, _ = new_key_row(service, alg, kek, now)
        session.add(new)
    return new.kid, old.kid if old else None


async def retire_expired(sessions: async_sessionmaker[AsyncSession], now: int) -> int:
    """Retire keys whose overlap has passed: drop them from the JWKS, destroy the private part."""
    async with sessions() as session, session.begin():
        result = await session.execute(
            update(SigningKeyRow)
            .where(SigningKeyRow.status == RETIRING, SigningKeyRow.publish_until <= now)
            .values(status=RETIRED, private_jwk_enc=None)
        )
        return int(getattr(result, "rowcount", 0) or 0)


async def list_keys(sessions: async_sessionmaker[AsyncSession]) -> list[SigningKeyRow]:
    async with sessions() as session:
        rows = list((await session.execute(select(SigningKeyRow))).scalars())
    # Oldest first; within one second (created_at ties) the active key comes last.
    return sorted(rows, key=lambda r: (r.service, r.created_at, r.status == ACTIVE, r.rotated_at or 0))


def published(rows: list[SigningKeyRow], now: int) -> list[dict[str, Any]]:
    """Public JWKs of the active key and of retiring keys still inside their overlap."""
    keys: list[dict[str, Any]] = []
    for row in rows:
        if row.status == ACTIVE or (
            row.status == RETIRING and row.publish_until is not None and row.publish_until > now
        ):
            keys.append(json.loads(row.public_jwk))
    return keys


def _signing_row(rows: list[SigningKeyRow], now: int, publish_ahead: float) -> SigningKeyRow | None:
    """The active key, or — while it is younger than `publish_ahead` — the key it replaced."""
    active = next((r for r in rows if r.status == ACTIVE), None)
    if active is None or publish_ahead <= 0 or now - active.created_at >= publish_ahead:
        return active
    previous = [
        r for r in rows if r.status == RETIRING and r.private_jwk_enc is not None and (r.publish_until or 0) > now
    ]
    return max(previous, key=lambda r: r.rotated_at or 0, default=active)


class KeyStore:
    """A service's view of its keys, re-read from the database every `refresh_seconds`.

    The refresh is what makes `mockehr keys rotate` (another process) take effect in running
    services and keeps every replica signing with the same key.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        service: str,
        kek: bytes,
        *,
        refresh_seconds: float,
        publish_ahead: float = 0.0,
        clock: Clock = system_clock,
    ) -> None:
        self._sessions = sessions
        self._service = service
        self._kek = kek
        self._refresh = refresh_seconds
        self._publish_ahead = publish_ahead
        self._clock = clock
        self._lock = asyncio.Lock()
        self._loaded_at = float("-inf")
        self._signer: SigningKey | None = None
        self._jwks: list[dict[str, Any]] = []
        self._decrypted: dict[str, SigningKey] = {}

    @property
    def service(self) -> str:
        return self._service

    async def _maybe_refresh(self) -> None:
        if self._clock() - self._loaded_at < self._refresh and self._signer is not None:
            return
        async with self._lock:
            if self._clock() - self._loaded_at < self._refresh and self._signer is not None:
                return
            await self.reload()

    async def reload(self) -> None:
        now = int(self._clock())
        async with self._sessions() as session:
            result = await session.execute(
                select(SigningKeyRow).where(SigningKeyRow.service == self._service, SigningKeyRow.status != RETIRED)
            )
            rows = list(result.scalars())
        if any(r.status == RETIRING and (r.publish_until or 0) <= now for r in rows):
            await retire_expired(self._sessions, now)
        signing = _signing_row(rows, now, self._publish_ahead)
        if signing is None:
            raise KeyNotFoundError(f"no active signing key for {self._service}")
        if signing.kid not in self._decrypted:
            self._decrypted = {signing.kid: decrypt_row(signing, self._kek)}
        self._signer = self._decrypted[signing.kid]
        self._jwks = published(rows, now)
        self._loaded_at = self._clock()

    async def signer(self) -> SigningKey:
        await self._maybe_refresh()
        if self._signer is None:
            raise KeyNotFoundError(f"no active signing key for {self._service}")
        return self._signer

    async def jwks(self) -> dict[str, list[dict[str, Any]]]:
        await self._maybe_refresh()
        return {"keys": list(self._jwks)}

    async def public_key_set(self) -> KeySet:
        return KeySet.import_key_set(await self.jwks())  # type: ignore[arg-type]
