"""EHR CDS Hooks client: the service registry, the exchange log, card outcomes

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 04:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ehr_cds_services",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("discovery_url", sa.String(length=512), nullable=False),
        sa.Column("cds_id", sa.String(length=128), nullable=False),
        sa.Column("hook", sa.String(length=64), nullable=False),
        sa.Column("url", sa.String(length=700), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("announced_prefetch", sa.Text(), nullable=False),
        sa.Column("approved_prefetch", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("deadline_seconds", sa.Float(), nullable=False),
        sa.Column("allow_system_actions", sa.Boolean(), nullable=False),
        sa.Column("allow_http_loopback", sa.Boolean(), nullable=False),
        sa.Column("client_cert_file", sa.String(length=1024), nullable=True),
        sa.Column("client_key_file", sa.String(length=1024), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ehr_cds_services")),
        sa.UniqueConstraint("discovery_url", "cds_id", "hook", name="uq_ehr_cds_services_endpoint"),
    )
    with op.batch_alter_table("ehr_cds_services", schema=None) as batch_op:
        batch_op.create_index("ix_ehr_cds_services_hook", ["hook", "enabled"], unique=False)

    op.create_table(
        "ehr_cds_exchanges",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("hook_instance", sa.String(length=64), nullable=False),
        sa.Column("hook", sa.String(length=64), nullable=False),
        sa.Column("service_id", sa.String(length=128), nullable=False),
        sa.Column("user_ref", sa.String(length=255), nullable=True),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("request", sa.Text(), nullable=True),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("cards", sa.Text(), nullable=False),
        sa.Column("system_actions", sa.Text(), nullable=False),
        sa.Column("dropped", sa.Text(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("timings", sa.Text(), nullable=False),
        sa.Column("token_scope", sa.Text(), nullable=True),
        sa.Column("total_ms", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ehr_cds_exchanges")),
        sa.UniqueConstraint("hook_instance", "service_id", name="uq_ehr_cds_exchanges_instance_service"),
    )
    with op.batch_alter_table("ehr_cds_exchanges", schema=None) as batch_op:
        batch_op.create_index("ix_ehr_cds_exchanges_created", ["created_at", "id"], unique=False)
        batch_op.create_index("ix_ehr_cds_exchanges_patient", ["patient_id", "created_at"], unique=False)
        batch_op.create_index("ix_ehr_cds_exchanges_service", ["service_id", "created_at"], unique=False)

    op.create_table(
        "ehr_cds_card_outcomes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("hook_instance", sa.String(length=64), nullable=False),
        sa.Column("service_id", sa.String(length=128), nullable=False),
        sa.Column("card_uuid", sa.String(length=128), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("suggestion_uuid", sa.String(length=128), nullable=True),
        sa.Column("user_ref", sa.String(length=255), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("feedback_status", sa.Integer(), nullable=True),
        sa.Column("feedback_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ehr_cds_card_outcomes")),
        sa.UniqueConstraint("hook_instance", "service_id", "card_uuid", name="uq_ehr_cds_card_outcomes_card"),
    )


def downgrade() -> None:
    op.drop_table("ehr_cds_card_outcomes")
    with op.batch_alter_table("ehr_cds_exchanges", schema=None) as batch_op:
        batch_op.drop_index("ix_ehr_cds_exchanges_service")
        batch_op.drop_index("ix_ehr_cds_exchanges_patient")
        batch_op.drop_index("ix_ehr_cds_exchanges_created")
    op.drop_table("ehr_cds_exchanges")
    with op.batch_alter_table("ehr_cds_services", schema=None) as batch_op:
        batch_op.drop_index("ix_ehr_cds_services_hook")
    op.drop_table("ehr_cds_services")
