"""smart app launch tables (login sessions, login throttle, EHR launches, authorization codes, refresh tokens)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 09:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('auth_sessions',
    sa.Column('id_hash', sa.String(length=64), nullable=False),
    sa.Column('username', sa.String(length=128), nullable=False),
    sa.Column('auth_time', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id_hash', name=op.f('pk_auth_sessions'))
    )
    with op.batch_alter_table('auth_sessions', schema=None) as batch_op:
        batch_op.create_index('ix_auth_sessions_expires_at', ['expires_at'], unique=False)

    op.create_table('auth_login_throttle',
    sa.Column('key', sa.String(length=80), nullable=False),
    sa.Column('window_start', sa.Integer(), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_auth_login_throttle'))
    )

    op.create_table('smart_launches',
    sa.Column('launch_hash', sa.String(length=64), nullable=False),
    sa.Column('client_id', sa.String(length=128), nullable=False),
    sa.Column('registered_by', sa.String(length=128), nullable=False),
    sa.Column('username', sa.String(length=128), nullable=False),
    sa.Column('patient', sa.String(length=64), nullable=False),
    sa.Column('encounter', sa.String(length=64), nullable=True),
    sa.Column('fhir_context', sa.Text(), nullable=True),
    sa.Column('app_context', sa.Text(), nullable=True),
    sa.Column('need_patient_banner', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.Integer(), nullable=False),
    sa.Column('used_at', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('launch_hash', name=op.f('pk_smart_launches'))
    )
    with op.batch_alter_table('smart_launches', schema=None) as batch_op:
        batch_op.create_index('ix_smart_launches_expires_at', ['expires_at'], unique=False)

    op.create_table('oauth_codes',
    sa.Column('code_hash', sa.String(length=64), nullable=False),
    sa.Column('family', sa.String(length=64), nullable=False),
    sa.Column('client_id', sa.String(length=128), nullable=False),
    sa.Column('redirect_uri', sa.Text(), nullable=False),
    sa.Column('code_challenge', sa.String(length=128), nullable=False),
    sa.Column('username', sa.String(length=128), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('patient', sa.String(length=64), nullable=True),
    sa.Column('encounter', sa.String(length=64), nullable=True),
    sa.Column('fhir_context', sa.Text(), nullable=True),
    sa.Column('app_context', sa.Text(), nullable=True),
    sa.Column('need_patient_banner', sa.Boolean(), nullable=False),
    sa.Column('nonce', sa.String(length=255), nullable=True),
    sa.Column('session_hash', sa.String(length=64), nullable=True),
    sa.Column('auth_time', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.Integer(), nullable=False),
    sa.Column('used_at', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('code_hash', name=op.f('pk_oauth_codes'))
    )
    with op.batch_alter_table('oauth_codes', schema=None) as batch_op:
        batch_op.create_index('ix_oauth_codes_expires_at', ['expires_at'], unique=False)

    op.create_table('oauth_refresh_tokens',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('family', sa.String(length=64), nullable=False),
    sa.Column('client_id', sa.String(length=128), nullable=False),
    sa.Column('username', sa.String(length=128), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('access', sa.String(length=16), nullable=False),
    sa.Column('session_hash', sa.String(length=64), nullable=True),
    sa.Column('patient', sa.String(length=64), nullable=True),
    sa.Column('encounter', sa.String(length=64), nullable=True),
    sa.Column('fhir_context', sa.Text(), nullable=True),
    sa.Column('app_context', sa.Text(), nullable=True),
    sa.Column('need_patient_banner', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.Integer(), nullable=False),
    sa.Column('used_at', sa.Integer(), nullable=True),
    sa.Column('revoked_at', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_oauth_refresh_tokens'))
    )
    with op.batch_alter_table('oauth_refresh_tokens', schema=None) as batch_op:
        batch_op.create_index('ix_oauth_refresh_tokens_expires_at', ['expires_at'], unique=False)
        batch_op.create_index('ix_oauth_refresh_tokens_family', ['family'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('oauth_refresh_tokens', schema=None) as batch_op:
        batch_op.drop_index('ix_oauth_refresh_tokens_family')
        batch_op.drop_index('ix_oauth_refresh_tokens_expires_at')

    op.drop_table('oauth_refresh_tokens')
    with op.batch_alter_table('oauth_codes', schema=None) as batch_op:
        batch_op.drop_index('ix_oauth_codes_expires_at')

    op.drop_table('oauth_codes')
    with op.batch_alter_table('smart_launches', schema=None) as batch_op:
        batch_op.drop_index('ix_smart_launches_expires_at')

    op.drop_table('smart_launches')
    op.drop_table('auth_login_throttle')
    with op.batch_alter_table('auth_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_auth_sessions_expires_at')

    op.drop_table('auth_sessions')
