"""Versioned resource storage (FHIR R4 §3.1.0 RESTful API: versionId, lastUpdated, history).

All functions take an open AsyncSession and run inside the caller's transaction, so a whole
transaction Bundle commits or rolls back as one.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import orjson
from sqlalchemy import and_, select
from sqlalchemy import delete as sql_delete
from sqlalchemy.ext.asyncio import AsyncSession

from fhirserver.indexing import identifier_tokens, literal_references
from fhirserver.models import ReferenceIndexRow, ResourceRow, ResourceVersionRow, TokenIndexRow


def new_id() -> str:
    return str(uuid.uuid4())


def _instant(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dumps(resource: dict[str, Any]) -> str:
    return orjson.dumps(resource).decode()


async def read_current(session: AsyncSession, rtype: str, rid: str) -> ResourceRow | None:
    return await session.get(ResourceRow, (rtype, rid))


async def write(
    session: AsyncSession,
    resource: dict[str, Any],
    *,
    method: str,
    now: dt.datetime,
    is_new: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Create or update `resource` (its id must be set). Returns (stored resource, created?).

    `is_new` (a server-assigned id): skip the lookup of a current version and of old index rows,
    which would otherwise cost two queries and an autoflush per resource.
    """
    rtype, rid = resource["resourceType"], resource["id"]
    current = None if is_new else await read_current(session, rtype, rid)
    created = current is None or current.deleted
    version = 1 if current is None else current.version_id + 1
    stored = dict(resource)
    meta = dict(stored.get("meta") or {})
    meta.update({"versionId": str(version), "lastUpdated": _instant(now)})
    stored["meta"] = meta
    content = dumps(stored)
    if current is None:
        session.add(
            ResourceRow(
                resource_type=rtype, id=rid, version_id=version, last_updated=now, deleted=False, content=content
            )
        )
    else:
        current.version_id, current.last_updated, current.deleted, current.content = version, now, False, content
    session.add(
        ResourceVersionRow(
            resource_type=rtype, id=rid, version_id=version, last_updated=now, method=method, content=content
        )
    )
    await _reindex(session, stored, drop_old=current is not None)
    return stored, created


async def _reindex(session: AsyncSession, resource: dict[str, Any], *, drop_old: bool) -> None:
    rtype, rid = resource["resourceType"], resource["id"]
    if drop_old:
        await _drop_index(session, rtype, rid)
    session.add_all(
        TokenIndexRow(resource_type=rtype, resource_id=rid, param="identifier", system=system, code=code[:255])
        for system, code in identifier_tokens(resource)
    )
    session.add_all(
        ReferenceIndexRow(resource_type=rtype, resource_id=rid, path=path[:255], target_type=ttype, target_id=tid)
        for path, ttype, tid in literal_references(resource)
    )


async def _drop_index(session: AsyncSession, rtype: str, rid: str) -> None:
    for table in (TokenIndexRow, ReferenceIndexRow):
        await session.execute(sql_delete(table).where(and_(table.resource_type == rtype, table.resource_id == rid)))


async def find_by_identifier(session: AsyncSession, rtype: str, system: str | None, code: str) -> list[str]:
    """Ids of current resources with identifier `system|code` (`system` None: any system)."""
    query = select(TokenIndexRow.resource_id).where(
        TokenIndexRow.resource_type == rtype,
        TokenIndexRow.param == "identifier",
        TokenIndexRow.code == code,
    )
    if system is not None:
        query = query.where(TokenIndexRow.system == (system or None))
    result = await session.execute(query.distinct())
    return [r for (r,) in result]


async def exists(session: AsyncSession, rtype: str, rid: str) -> bool:
    row = await read_current(session, rtype, rid)
    return row is not None and not row.deleted


async def referencing(
    session: AsyncSession, target_type: str, target_id: str, rtype: str, paths: tuple[str, ...]
) -> list[str]:
    """Ids of `rtype` resources whose reference at one of `paths` names target_type/target_id."""
    result = await session.execute(
        select(ReferenceIndexRow.resource_id)
        .where(
            ReferenceIndexRow.target_type == target_type,
            ReferenceIndexRow.target_id == target_id,
            ReferenceIndexRow.resource_type == rtype,
            ReferenceIndexRow.path.in_(paths),
        )
        .distinct()
    )
    return [r for (r,) in result]


async def delete(session: AsyncSession, rtype: str, rid: str, *, now: dt.datetime) -> bool:
    """Delete the current version (a later read answers 410). False when there is nothing to delete."""
    current = await read_current(session, rtype, rid)
    if current is None or current.deleted:
        return False
    current.version_id += 1
    current.last_updated, current.deleted, current.content = now, True, None
    session.add(
        ResourceVersionRow(
            resource_type=rtype, id=rid, version_id=current.version_id, last_updated=now, method="DELETE", content=None
        )
    )
    await _drop_index(session, rtype, rid)
    return True
