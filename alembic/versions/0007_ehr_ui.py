"""EHR UI: signed-out sessions (a copied session cookie is refused after sign-out)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 05:05:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ehr_ui_signouts",
        sa.Column("sid", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("sid"),
    )
    op.create_index("ix_ehr_ui_signouts_expires", "ehr_ui_signouts", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_ehr_ui_signouts_expires", table_name="ehr_ui_signouts")
    op.drop_table("ehr_ui_signouts")
