"""smart_app_origins: the browser origins of active SMART apps (CORS without configuration)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 22:00:00

Filled here from the registrations that exist; kept in step by authserver/clients.py afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import urlsplit

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_of(url: str) -> str | None:
    """common/app_origins.py:origin_of as of this revision (a migration does not follow later code)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or not host.isascii() or "@" in parts.netloc:
        return None
    if ":" in host:
        host = f"[{host}]"
    origin = f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"
    return origin if len(origin) <= 300 else None


def upgrade() -> None:
    table = op.create_table(
        "smart_app_origins",
        sa.Column("origin", sa.String(length=300), nullable=False),
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("origin", "client_id", name=op.f("pk_smart_app_origins")),
    )
    with op.batch_alter_table("smart_app_origins", schema=None) as batch_op:
        batch_op.create_index("ix_smart_app_origins_client_id", ["client_id"], unique=False)
    clients = sa.table(
        "oauth_clients",
        sa.column("client_id", sa.String),
        sa.column("kind", sa.String),
        sa.column("active", sa.Boolean),
        sa.column("redirect_uris", sa.Text),
        sa.column("launch_url", sa.String),
    )
    rows = op.get_bind().execute(
        sa.select(clients.c.client_id, clients.c.redirect_uris, clients.c.launch_url).where(
            clients.c.kind == "smart-app", clients.c.active.is_(True)
        )
    )
    found = []
    for client_id, redirect_uris, launch_url in rows:
        urls = [*json.loads(redirect_uris or "[]"), *([launch_url] if launch_url else [])]
        origins = {o for o in (_origin_of(u) for u in urls) if o is not None}
        found += [{"origin": o, "client_id": client_id} for o in sorted(origins)]
    if found:
        op.bulk_insert(table, found)


def downgrade() -> None:
    with op.batch_alter_table("smart_app_origins", schema=None) as batch_op:
        batch_op.drop_index("ix_smart_app_origins_client_id")
    op.drop_table("smart_app_origins")
