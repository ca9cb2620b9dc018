"""authserver clients tokens revocations

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 07:48:47.925320
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('oauth_clients',
    sa.Column('client_id', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('auth_method', sa.String(length=32), nullable=False),
    sa.Column('secret_hash', sa.String(length=255), nullable=True),
    sa.Column('jwks', sa.Text(), nullable=True),
    sa.Column('jwks_uri', sa.String(length=512), nullable=True),
    sa.Column('redirect_uris', sa.Text(), nullable=False),
    sa.Column('launch_url', sa.String(length=512), nullable=True),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('first_party', sa.Boolean(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('client_id', name=op.f('pk_oauth_clients'))
    )
    op.create_table('oauth_revocations',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('jti', sa.String(length=64), nullable=False),
    sa.Column('exp', sa.Integer(), nullable=False),
    sa.Column('revoked_at', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_oauth_revocations'))
    )
    with op.batch_alter_table('oauth_revocations', schema=None) as batch_op:
        batch_op.create_index('ix_oauth_revocations_exp', ['exp'], unique=False)

    op.create_table('oauth_tokens',
    sa.Column('jti', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('client_id', sa.String(length=128), nullable=False),
    sa.Column('actor_client_id', sa.String(length=128), nullable=True),
    sa.Column('sub', sa.String(length=255), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('patient', sa.String(length=64), nullable=True),
    sa.Column('fhir_user', sa.String(length=255), nullable=True),
    sa.Column('grant', sa.String(length=64), nullable=False),
    sa.Column('iat', sa.Integer(), nullable=False),
    sa.Column('exp', sa.Integer(), nullable=False),
    sa.Column('revoked_at', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('jti', name=op.f('pk_oauth_tokens'))
    )
    with op.batch_alter_table('oauth_tokens', schema=None) as batch_op:
        batch_op.create_index('ix_oauth_tokens_exp', ['exp'], unique=False)
        batch_op.create_index('ix_oauth_tokens_grant', ['grant'], unique=False)

    op.create_table('oauth_used_jtis',
    sa.Column('key', sa.String(length=300), nullable=False),
    sa.Column('expires_at', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_oauth_used_jtis'))
    )
    with op.batch_alter_table('oauth_used_jtis', schema=None) as batch_op:
        batch_op.create_index('ix_oauth_used_jtis_expires_at', ['expires_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('oauth_used_jtis', schema=None) as batch_op:
        batch_op.drop_index('ix_oauth_used_jtis_expires_at')

    op.drop_table('oauth_used_jtis')
    with op.batch_alter_table('oauth_tokens', schema=None) as batch_op:
        batch_op.drop_index('ix_oauth_tokens_grant')
        batch_op.drop_index('ix_oauth_tokens_exp')

    op.drop_table('oauth_tokens')
    with op.batch_alter_table('oauth_revocations', schema=None) as batch_op:
        batch_op.drop_index('ix_oauth_revocations_exp')

    op.drop_table('oauth_revocations')
    op.drop_table('oauth_clients')
