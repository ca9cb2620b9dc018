"""One presentation of each refresh token, across every EHR replica (issue 18).

Refresh tokens rotate, and the authorization server treats a refresh token presented twice as
theft (revoking the whole grant). Two requests of one browser may need a refresh at the same
moment, on one replica or on two. The first to insert the token's row (its SHA-256: the table
never holds a usable token) presents it; the others find the row and wait for its outcome, which
the first stores sealed with the EHR's key (ehr/ui/session.py:CookieBox). Rows live
`KEEP_SECONDS` and are purged at the next claim.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Index, Integer, String, Text, delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from common.db import Base

KEEP_SECONDS = 30


class UiRefreshRow(Base):
    __tablename__ = "ehr_ui_refreshes"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[int] = mapped_column(Integer)
    # Settled: `sealed` holds the new tokens, or `failed` says the refresh was refused.
    sealed: Mapped[str | None] = mapped_column(Text, nullable=True)
    failed: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (Index("ix_ehr_ui_refreshes_created_at", "created_at"),)


async def claim(sessions: async_sessionmaker[AsyncSession], token_hash: str, now: int) -> bool:
    """True when this request is the one to present the token (nobody did in `KEEP_SECONDS`)."""
    try:
        async with sessions() as session, session.begin():
            await session.execute(delete(UiRefreshRow).where(UiRefreshRow.created_at < now - KEEP_SECONDS))
            session.add(UiRefreshRow(token_hash=token_hash, created_at=now, sealed=None, failed=False))
    except IntegrityError:
        return False
    return True


async def settle(sessions: async_sessionmaker[AsyncSession], token_hash: str, sealed: str | None) -> None:
    """Store the outcome for the requests waiting on it (`sealed` None: the refresh was refused)."""
    async with sessions() as session, session.begin():
        await session.execute(
            update(UiRefreshRow)
            .where(UiRefreshRow.token_hash == token_hash)
            .values(sealed=sealed, failed=sealed is None)
        )


async def outcome(sessions: async_sessionmaker[AsyncSession], token_hash: str) -> tuple[bool, str | None]:
    """(settled, sealed tokens): (False, None) while the refresh is still running."""
    async with sessions() as session:
        row = await session.get(UiRefreshRow, token_hash)
    if row is None:
        return True, None  # purged: long past, and its tokens are no longer ours to reuse
    return row.failed or row.sealed is not None, row.sealed
