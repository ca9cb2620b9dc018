"""Sessions that were signed out, so a copy of their cookie is no session.

A UI session lives in a sealed cookie (ehr/ui/session.py); signing out clears the browser's
cookie and revokes the grant at the authorization server, but a copy of the cookie stays
well-formed until its access token expires, and the pages that read nothing from the FHIR server
(the exchange log, the admin pages) would not notice the revocation. So every session carries a
random id, sign-out records it here until the session could have lived at the latest (its
absolute expiry), and a session whose id is recorded is refused everywhere, on every replica
(the table is shared). Expired records are purged at each sign-out.
"""

from __future__ import annotations

from sqlalchemy import Index, Integer, String, delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from common.db import Base


class UiSignoutRow(Base):
    __tablename__ = "ehr_ui_signouts"

    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_ehr_ui_signouts_expires", "expires_at"),)


async def record_signout(sessions: async_sessionmaker[AsyncSession], sid: str, expires_at: int, now: int) -> None:
    try:
        async with sessions() as session, session.begin():
            await session.execute(delete(UiSignoutRow).where(UiSignoutRow.expires_at < now))
            if await session.get(UiSignoutRow, sid) is None:
                session.add(UiSignoutRow(sid=sid, expires_at=expires_at))
    except IntegrityError:
        pass  # signed out twice at the same moment: recorded by the other request


async def signed_out(sessions: async_sessionmaker[AsyncSession], sid: str) -> bool:
    async with sessions() as session:
        return await session.get(UiSignoutRow, sid) is not None
