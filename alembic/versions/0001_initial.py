"""initial schema: keys, users, fhir storage

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-22 07:20:09.031657
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('fhir_reference_index',
    sa.Column('pk', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('path', sa.String(length=255), nullable=False),
    sa.Column('target_type', sa.String(length=64), nullable=False),
    sa.Column('target_id', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_fhir_reference_index'))
    )
    with op.batch_alter_table('fhir_reference_index', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_reference_index_owner', ['resource_type', 'resource_id'], unique=False)
        batch_op.create_index('ix_fhir_reference_index_target', ['target_type', 'target_id', 'resource_type', 'path'], unique=False)

    op.create_table('fhir_resource_versions',
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.DateTime(timezone=True), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('content', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('resource_type', 'id', 'version_id', name=op.f('pk_fhir_resource_versions'))
    )
    op.create_table('fhir_resources',
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('content', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('resource_type', 'id', name=op.f('pk_fhir_resources'))
    )
    op.create_table('fhir_token_index',
    sa.Column('pk', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('system', sa.String(length=255), nullable=True),
    sa.Column('code', sa.String(length=255), nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_fhir_token_index'))
    )
    with op.batch_alter_table('fhir_token_index', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_token_index_lookup', ['resource_type', 'param', 'code', 'system'], unique=False)
        batch_op.create_index('ix_fhir_token_index_owner', ['resource_type', 'resource_id'], unique=False)

    op.create_table('signing_keys',
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('service', sa.String(length=64), nullable=False),
    sa.Column('alg', sa.String(length=16), nullable=False),
    sa.Column('public_jwk', sa.Text(), nullable=False),
    sa.Column('private_jwk_enc', sa.LargeBinary(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('rotated_at', sa.Integer(), nullable=True),
    sa.Column('publish_until', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('kid', name=op.f('pk_signing_keys'))
    )
    with op.batch_alter_table('signing_keys', schema=None) as batch_op:
        batch_op.create_index('ix_signing_keys_service_status', ['service', 'status'], unique=False)
        batch_op.create_index('uq_signing_keys_one_active', ['service'], unique=True, sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"))

    op.create_table('users',
    sa.Column('username', sa.String(length=128), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('fhir_user', sa.String(length=128), nullable=False),
    sa.Column('display', sa.String(length=255), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('username', name=op.f('pk_users'))
    )


def downgrade() -> None:
    op.drop_table('users')
    with op.batch_alter_table('signing_keys', schema=None) as batch_op:
        batch_op.drop_index('uq_signing_keys_one_active', sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"))
        batch_op.drop_index('ix_signing_keys_service_status')

    op.drop_table('signing_keys')
    with op.batch_alter_table('fhir_token_index', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_token_index_owner')
        batch_op.drop_index('ix_fhir_token_index_lookup')

    op.drop_table('fhir_token_index')
    op.drop_table('fhir_resources')
    op.drop_table('fhir_resource_versions')
    with op.batch_alter_table('fhir_reference_index', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_reference_index_target')
        batch_op.drop_index('ix_fhir_reference_index_owner')

    op.drop_table('fhir_reference_index')
