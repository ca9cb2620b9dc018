"""ehr_ui_refreshes: one presentation of each UI refresh token across EHR replicas

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08 00:40:00

See ehr/ui/refreshes.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ehr_ui_refreshes",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("sealed", sa.Text(), nullable=True),
        sa.Column("failed", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_ehr_ui_refreshes")),
    )
    with op.batch_alter_table("ehr_ui_refreshes", schema=None) as batch_op:
        batch_op.create_index("ix_ehr_ui_refreshes_created_at", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ehr_ui_refreshes", schema=None) as batch_op:
        batch_op.drop_index("ix_ehr_ui_refreshes_created_at")
    op.drop_table("ehr_ui_refreshes")
