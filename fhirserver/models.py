"""FHIR server tables: current resources, their version history, and search-index rows.

Index rows are extracted at write time (fhirserver.indexing) so searches never parse JSON.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from common.db import Base


class ResourceRow(Base):
    """The current version of each resource (deleted ones kept, flagged, for 410 Gone)."""

    __tablename__ = "fhir_resources"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    content: Mapped[str | None] = mapped_column(Text, nullable=True)


class ResourceVersionRow(Base):
    """Every version ever written (vread, _history)."""

    __tablename__ = "fhir_resource_versions"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_updated: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    method: Mapped[str] = mapped_column(String(8))
    content: Mapped[str | None] = mapped_column(Text, nullable=True)


class TokenIndexRow(Base):
    """Token search values (system|code) of the current version of a resource."""

    __tablename__ = "fhir_token_index"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    system: Mapped[str | None] = mapped_column(String(255), nullable=True)
    code: Mapped[str] = mapped_column(String(255))

    __table_args__ = (
        Index("ix_fhir_token_index_lookup", "resource_type", "param", "code", "system"),
        Index("ix_fhir_token_index_owner", "resource_type", "resource_id"),
    )


class ReferenceIndexRow(Base):
    """Literal references (Type/id) held by the current version of a resource, with their path.

    Serves compartments (who belongs to which Patient), the practitioner panel rule
    (Patient.generalPractitioner, CareTeam.participant.member) and _revinclude.
    """

    __tablename__ = "fhir_reference_index"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(255))
    target_type: Mapped[str] = mapped_column(String(64))
    target_id: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_fhir_reference_index_target", "target_type", "target_id", "resource_type", "path"),
        Index("ix_fhir_reference_index_owner", "resource_type", "resource_id"),
    )
