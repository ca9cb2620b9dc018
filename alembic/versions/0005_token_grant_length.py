"""oauth_tokens.grant holds client ids up to 128 characters: widen it to 255

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 08:48:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("oauth_tokens", schema=None) as batch_op:
        batch_op.alter_column(
            "grant", existing_type=sa.String(length=64), type_=sa.String(length=255), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("oauth_tokens", schema=None) as batch_op:
        batch_op.alter_column(
            "grant", existing_type=sa.String(length=255), type_=sa.String(length=64), existing_nullable=False
        )
