"""SMART launch options (a shorter token lifetime, a simulated error) on the launch, its code and
its refresh tokens; the EHR's record of the launches it registered

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CONTEXT_TABLES = ("smart_launches", "oauth_codes", "oauth_refresh_tokens")


def upgrade() -> None:
    for table in _CONTEXT_TABLES:
        op.add_column(table, sa.Column("launch_options", sa.Text(), nullable=True))
    op.create_table(
        "ehr_smart_launches",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("user_ref", sa.String(255), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("encounter_id", sa.String(64), nullable=True),
        sa.Column("client_id", sa.String(128), nullable=False),
        sa.Column("app_name", sa.String(255), nullable=False),
        sa.Column("launch_url", sa.Text(), nullable=False),
        sa.Column("fhir_context", sa.Text(), nullable=True),
        sa.Column("app_context", sa.Text(), nullable=True),
        sa.Column("options", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
    )
    op.create_index("ix_ehr_smart_launches_user", "ehr_smart_launches", ["user_ref", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_ehr_smart_launches_user", table_name="ehr_smart_launches")
    op.drop_table("ehr_smart_launches")
    for table in _CONTEXT_TABLES:
        # SQLite drops a column only by rebuilding the table (batch mode).
        with op.batch_alter_table(table) as batch:
            batch.drop_column("launch_options")
