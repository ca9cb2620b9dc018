"""FHIR server tables: current resources, their version history, and search-index rows.

Index rows are extracted at write time (fhirserver.indexing) so searches never parse JSON. There
is one index table per search parameter type (R4 search.html#ptypes); each row names the
resource (resource_type, resource_id) and the parameter code. Every table has an "owner" index
(resource_type, resource_id, param, value…) used to replace a resource's rows and to sort by a
parameter (covering, so a sort reads one index entry per resource), and a
lookup index led by (resource_type, param, value…) and ending with resource_id, so a search
reads only the matching slice of the index and never the table rows (SQLite covering index,
PostgreSQL index-only scan).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, Float, Index, Integer, String, Text, text
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

    # Default search order (_lastUpdated, then _id) and _lastUpdated filters.
    __table_args__ = (Index("ix_fhir_resources_type_updated", "resource_type", "last_updated", "id"),)


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
    """Token values (R4 search.html#token): system|code, plus the normalised display text (:text).

    A CodeableConcept with only `text` gives a row with an empty code, so :text and :missing see it.
    """

    __tablename__ = "fhir_token_index"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    system: Mapped[str | None] = mapped_column(String(255), nullable=True)
    code: Mapped[str] = mapped_column(String(255))
    text: Mapped[str | None] = mapped_column(String(255), nullable=True)

    __table_args__ = (
        Index("ix_fhir_token_index_search", "resource_type", "param", "code", "system", "resource_id"),
        Index("ix_fhir_token_index_owner", "resource_type", "resource_id", "param", "code"),
    )


# Byte order on PostgreSQL whatever the database's locale, as on SQLite: a prefix search
# `value >= 'abc' AND value < 'abd'` is then exact and served by the index.
_C_STRING = String(255).with_variant(String(255, collation="C"), "postgresql")


class StringIndexRow(Base):
    """String values (R4 search.html#string): `value` lower-cased and accent-stripped for the
    default (starts-with) and :contains searches; `exact` as written, for :exact."""

    __tablename__ = "fhir_string_index"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(_C_STRING)
    exact: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        Index("ix_fhir_string_index_search", "resource_type", "param", "value", "resource_id"),
        Index("ix_fhir_string_index_owner", "resource_type", "resource_id", "param", "value"),
    )


class SearchReferenceRow(Base):
    """Reference values by search parameter (R4 search.html#reference): a relative literal
    reference as (target_type, target_id); anything else (absolute URL, canonical) in `url`.

    Serves reference searches, chaining, _has, _include/_revinclude and the Patient compartment.
    """

    __tablename__ = "fhir_search_reference_index"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    target_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    url: Mapped[str | None] = mapped_column(String(512), nullable=True)

    __table_args__ = (
        # target_id first: the most selective column, and the one every lookup knows.
        Index(
            "ix_fhir_search_reference_index_target", "target_id", "target_type", "resource_type", "param", "resource_id"
        ),
        Index(
            "ix_fhir_search_reference_index_owner", "resource_type", "resource_id", "param", "target_type", "target_id"
        ),
        Index(
            "ix_fhir_search_reference_index_url",
            "resource_type",
            "param",
            "url",
            sqlite_where=text("url IS NOT NULL"),
            postgresql_where=text("url IS NOT NULL"),
        ),
    )


class DateIndexRow(Base):
    """Date values as the instants [low, high] of their precision range, in UTC (R4 search.html#date)."""

    __tablename__ = "fhir_date_index"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    low: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    high: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_fhir_date_index_low", "resource_type", "param", "low", "high", "resource_id"),
        Index("ix_fhir_date_index_high", "resource_type", "param", "high", "low", "resource_id"),
        Index("ix_fhir_date_index_owner", "resource_type", "resource_id", "param", "low", "high"),
    )


class QuantityIndexRow(Base):
    """Quantity values (R4 search.html#quantity): [low, high] (equal for a Quantity, the bounds
    of a Range), system, code and the human unit."""

    __tablename__ = "fhir_quantity_index"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    low: Mapped[float] = mapped_column(Float)
    high: Mapped[float] = mapped_column(Float)
    system: Mapped[str | None] = mapped_column(String(255), nullable=True)
    code: Mapped[str | None] = mapped_column(String(255), nullable=True)
    unit: Mapped[str | None] = mapped_column(String(255), nullable=True)

    __table_args__ = (
        Index("ix_fhir_quantity_index_search", "resource_type", "param", "low", "high", "resource_id"),
        Index("ix_fhir_quantity_index_owner", "resource_type", "resource_id", "param", "low", "high"),
    )


class NumberIndexRow(Base):
    """Number values (R4 search.html#number)."""

    __tablename__ = "fhir_number_index"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    low: Mapped[float] = mapped_column(Float)
    high: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        Index("ix_fhir_number_index_search", "resource_type", "param", "low", "high", "resource_id"),
        Index("ix_fhir_number_index_owner", "resource_type", "resource_id", "param", "low", "high"),
    )


class UriIndexRow(Base):
    """URI values (R4 search.html#uri)."""

    __tablename__ = "fhir_uri_index"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(64))
    param: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(String(512))

    __table_args__ = (
        Index("ix_fhir_uri_index_search", "resource_type", "param", "value", "resource_id"),
        Index("ix_fhir_uri_index_owner", "resource_type", "resource_id", "param", "value"),
    )


class ReferenceIndexRow(Base):
    """Literal references (Type/id) held by the current version of a resource, with their element path.

    Kept for storage.referencing() (element paths such as "generalPractitioner"); searches use
    SearchReferenceRow, which is keyed by search parameter instead.
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
