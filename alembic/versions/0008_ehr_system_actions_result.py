"""EHR exchange log: what applying a service's systemActions did (written or refused, and why)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 05:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("ehr_cds_exchanges", sa.Column("system_actions_result", sa.Text(), nullable=True))


def downgrade() -> None:
    # SQLite drops a column only by rebuilding the table (batch mode).
    with op.batch_alter_table("ehr_cds_exchanges") as batch:
        batch.drop_column("system_actions_result")
