"""EHR tables: the CDS Service registry (allow-list and approvals), the exchange log and the
outcome recorded per card (feedback).

Timestamps are integer epoch seconds (as elsewhere in the stack); JSON documents are stored as
text so SQLite and PostgreSQL hold them alike.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from common.db import Base


class CdsServiceRow(Base):
    """One CDS Service endpoint for one hook, as discovered and as an administrator approved it.

    CDS Hooks 2.0 §Discovery: a discovery endpoint lists services by (hook, id); the same id may
    appear under several hooks, so the registry keeps one row per (discovery URL, id, hook) under
    an EHR-wide key `id`. Only `enabled` rows are ever called (the allow-list).
    """

    __tablename__ = "ehr_cds_services"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    discovery_url: Mapped[str] = mapped_column(String(512))
    cds_id: Mapped[str] = mapped_column(String(128))
    hook: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(700))  # {discovery URL}/{id}
    title: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    announced_prefetch: Mapped[str] = mapped_column(Text, default="{}")  # JSON: what discovery offered
    approved_prefetch: Mapped[str] = mapped_column(Text, default="{}")  # JSON: the approved subset (R13)
    scope: Mapped[str] = mapped_column(Text, default="")  # approved scopes, space separated
    client_id: Mapped[str] = mapped_column(String(128))  # the service's client at the authserver
    deadline_seconds: Mapped[float] = mapped_column(Float, default=5.0)
    allow_system_actions: Mapped[bool] = mapped_column(Boolean, default=False)
    allow_http_loopback: Mapped[bool] = mapped_column(Boolean, default=False)
    client_cert_file: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    client_key_file: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        UniqueConstraint("discovery_url", "cds_id", "hook", name="uq_ehr_cds_services_endpoint"),
        Index("ix_ehr_cds_services_hook", "hook", "enabled"),
    )


class CdsExchangeRow(Base):
    """One service's part of one hook firing: what was sent (redacted) and what came back."""

    __tablename__ = "ehr_cds_exchanges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    hook_instance: Mapped[str] = mapped_column(String(64))
    hook: Mapped[str] = mapped_column(String(64))
    service_id: Mapped[str] = mapped_column(String(128))
    user_ref: Mapped[str | None] = mapped_column(String(255), nullable=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # ok | error
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    http_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    request: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON, secrets redacted
    response: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON as received
    cards: Mapped[str] = mapped_column(Text, default="[]")  # JSON: the validated cards shown
    system_actions: Mapped[str] = mapped_column(Text, default="[]")  # JSON: validated systemActions
    # JSON: what became of them — {"applied": true, "transaction": [{status, location}]} or
    # {"applied": false, "reason": ...}; None when the service sent none (revision 0008).
    system_actions_result: Mapped[str | None] = mapped_column(Text, nullable=True)
    dropped: Mapped[str] = mapped_column(Text, default="[]")  # JSON: [{index, reason}]
    notes: Mapped[str] = mapped_column(Text, default="[]")  # JSON: what was changed or left out
    timings: Mapped[str] = mapped_column(Text, default="{}")  # JSON: milliseconds per phase
    token_scope: Mapped[str | None] = mapped_column(Text, nullable=True)
    total_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        UniqueConstraint("hook_instance", "service_id", name="uq_ehr_cds_exchanges_instance_service"),
        Index("ix_ehr_cds_exchanges_created", "created_at", "id"),
        Index("ix_ehr_cds_exchanges_patient", "patient_id", "created_at"),
        Index("ix_ehr_cds_exchanges_service", "service_id", "created_at"),
    )


class CdsCardOutcomeRow(Base):
    """The user's decision on one card (CDS Hooks 2.0 §Feedback): at most one per card, so an
    accepted suggestion is never applied twice, and whether the service received the feedback."""

    __tablename__ = "ehr_cds_card_outcomes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    hook_instance: Mapped[str] = mapped_column(String(64))
    service_id: Mapped[str] = mapped_column(String(128))
    card_uuid: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(16))  # accepted | overridden
    suggestion_uuid: Mapped[str | None] = mapped_column(String(128), nullable=True)
    user_ref: Mapped[str | None] = mapped_column(String(255), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON: override reason, transaction summary
    feedback_status: Mapped[int | None] = mapped_column(Integer, nullable=True)  # HTTP status from the service
    feedback_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        UniqueConstraint("hook_instance", "service_id", "card_uuid", name="uq_ehr_cds_card_outcomes_card"),
    )


class SmartLaunchRow(Base):
    """One SMART app launch the EHR registered at the authorization server (the chart's Apps menu
    or a card's smart link): for whom, with which context and launch options, and the outcome."""

    __tablename__ = "ehr_smart_launches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_ref: Mapped[str] = mapped_column(String(255))
    patient_id: Mapped[str] = mapped_column(String(64))
    encounter_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    client_id: Mapped[str] = mapped_column(String(128))
    app_name: Mapped[str] = mapped_column(String(255))
    launch_url: Mapped[str] = mapped_column(Text)
    fhir_context: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON array
    app_context: Mapped[str | None] = mapped_column(Text, nullable=True)
    options: Mapped[str] = mapped_column(Text)  # JSON: the launch options sent (revision 0009)
    outcome: Mapped[str] = mapped_column(String(16))  # registered | refused
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)  # why it was refused
    created_at: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_ehr_smart_launches_user", "user_ref", "created_at"),)
