"""fhir search index: one index table per search parameter type, token :text, resource order

Resources written before this revision have identifier tokens only; reload them, or run
fhirserver.storage.reindex_all, to make them searchable by every parameter.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 08:03:56.450214
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('fhir_date_index',
    sa.Column('pk', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('low', sa.DateTime(timezone=True), nullable=False),
    sa.Column('high', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_fhir_date_index'))
    )
    with op.batch_alter_table('fhir_date_index', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_date_index_high', ['resource_type', 'param', 'high', 'low', 'resource_id'], unique=False)
        batch_op.create_index('ix_fhir_date_index_low', ['resource_type', 'param', 'low', 'high', 'resource_id'], unique=False)
        batch_op.create_index('ix_fhir_date_index_owner', ['resource_type', 'resource_id', 'param', 'low', 'high'], unique=False)

    op.create_table('fhir_number_index',
    sa.Column('pk', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('low', sa.Float(), nullable=False),
    sa.Column('high', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_fhir_number_index'))
    )
    with op.batch_alter_table('fhir_number_index', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_number_index_owner', ['resource_type', 'resource_id', 'param', 'low', 'high'], unique=False)
        batch_op.create_index('ix_fhir_number_index_search', ['resource_type', 'param', 'low', 'high', 'resource_id'], unique=False)

    op.create_table('fhir_quantity_index',
    sa.Column('pk', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('low', sa.Float(), nullable=False),
    sa.Column('high', sa.Float(), nullable=False),
    sa.Column('system', sa.String(length=255), nullable=True),
    sa.Column('code', sa.String(length=255), nullable=True),
    sa.Column('unit', sa.String(length=255), nullable=True),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_fhir_quantity_index'))
    )
    with op.batch_alter_table('fhir_quantity_index', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_quantity_index_owner', ['resource_type', 'resource_id', 'param', 'low', 'high'], unique=False)
        batch_op.create_index('ix_fhir_quantity_index_search', ['resource_type', 'param', 'low', 'high', 'resource_id'], unique=False)

    op.create_table('fhir_search_reference_index',
    sa.Column('pk', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('target_type', sa.String(length=64), nullable=True),
    sa.Column('target_id', sa.String(length=64), nullable=True),
    sa.Column('url', sa.String(length=512), nullable=True),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_fhir_search_reference_index'))
    )
    with op.batch_alter_table('fhir_search_reference_index', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_search_reference_index_owner', ['resource_type', 'resource_id', 'param', 'target_type', 'target_id'], unique=False)
        batch_op.create_index('ix_fhir_search_reference_index_target', ['target_id', 'target_type', 'resource_type', 'param', 'resource_id'], unique=False)
        batch_op.create_index('ix_fhir_search_reference_index_url', ['resource_type', 'param', 'url'], unique=False, sqlite_where=sa.text('url IS NOT NULL'), postgresql_where=sa.text('url IS NOT NULL'))

    op.create_table('fhir_string_index',
    sa.Column('pk', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=255).with_variant(sa.String(length=255, collation='C'), 'postgresql'), nullable=False),
    sa.Column('exact', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_fhir_string_index'))
    )
    with op.batch_alter_table('fhir_string_index', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_string_index_owner', ['resource_type', 'resource_id', 'param', 'value'], unique=False)
        batch_op.create_index('ix_fhir_string_index_search', ['resource_type', 'param', 'value', 'resource_id'], unique=False)

    op.create_table('fhir_uri_index',
    sa.Column('pk', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=512), nullable=False),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_fhir_uri_index'))
    )
    with op.batch_alter_table('fhir_uri_index', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_uri_index_owner', ['resource_type', 'resource_id', 'param', 'value'], unique=False)
        batch_op.create_index('ix_fhir_uri_index_search', ['resource_type', 'param', 'value', 'resource_id'], unique=False)

    with op.batch_alter_table('fhir_resources', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_resources_type_updated', ['resource_type', 'last_updated', 'id'], unique=False)

    with op.batch_alter_table('fhir_token_index', schema=None) as batch_op:
        batch_op.add_column(sa.Column('text', sa.String(length=255), nullable=True))
        batch_op.drop_index(batch_op.f('ix_fhir_token_index_lookup'))
        batch_op.drop_index(batch_op.f('ix_fhir_token_index_owner'))
        batch_op.create_index('ix_fhir_token_index_owner', ['resource_type', 'resource_id', 'param', 'code'], unique=False)
        batch_op.create_index('ix_fhir_token_index_search', ['resource_type', 'param', 'code', 'system', 'resource_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('fhir_token_index', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_token_index_search')
        batch_op.drop_index('ix_fhir_token_index_owner')
        batch_op.create_index(batch_op.f('ix_fhir_token_index_owner'), ['resource_type', 'resource_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_fhir_token_index_lookup'), ['resource_type', 'param', 'code', 'system'], unique=False)
        batch_op.drop_column('text')

    with op.batch_alter_table('fhir_resources', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_resources_type_updated')

    with op.batch_alter_table('fhir_uri_index', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_uri_index_search')
        batch_op.drop_index('ix_fhir_uri_index_owner')

    op.drop_table('fhir_uri_index')
    with op.batch_alter_table('fhir_string_index', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_string_index_search')
        batch_op.drop_index('ix_fhir_string_index_owner')

    op.drop_table('fhir_string_index')
    with op.batch_alter_table('fhir_search_reference_index', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_search_reference_index_url', sqlite_where=sa.text('url IS NOT NULL'), postgresql_where=sa.text('url IS NOT NULL'))
        batch_op.drop_index('ix_fhir_search_reference_index_target')
        batch_op.drop_index('ix_fhir_search_reference_index_owner')

    op.drop_table('fhir_search_reference_index')
    with op.batch_alter_table('fhir_quantity_index', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_quantity_index_search')
        batch_op.drop_index('ix_fhir_quantity_index_owner')

    op.drop_table('fhir_quantity_index')
    with op.batch_alter_table('fhir_number_index', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_number_index_search')
        batch_op.drop_index('ix_fhir_number_index_owner')

    op.drop_table('fhir_number_index')
    with op.batch_alter_table('fhir_date_index', schema=None) as batch_op:
        batch_op.drop_index('ix_fhir_date_index_owner')
        batch_op.drop_index('ix_fhir_date_index_low')
        batch_op.drop_index('ix_fhir_date_index_high')

    op.drop_table('fhir_date_index')
