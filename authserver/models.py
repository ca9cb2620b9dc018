"""Authorization server tables."""

from __future__ import annotations

from sqlalchemy import Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from common.db import Base


class UserRow(Base):
    """A person who logs in: a practitioner or a patient, linked to a FHIR resource (fhirUser)."""

    __tablename__ = "users"

    username: Mapped[str] = mapped_column(String(128), primary_key=True)
    # argon2id hash (argon2-cffi); never the password itself.
    password_hash: Mapped[str] = mapped_column(String(255))
    fhir_user: Mapped[str] = mapped_column(String(128))  # e.g. "Practitioner/123"
    display: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[int] = mapped_column(Integer)
