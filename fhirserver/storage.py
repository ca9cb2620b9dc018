"""Versioned resource storage (FHIR R4 §3.1.0 RESTful API: versionId, lastUpdated, history).

All functions take an open AsyncSession and run inside the caller's transaction, so a whole
transaction Bundle commits or rolls back as one.

Concurrent writes of one resource (FHIR R4 http.html "Managing Resource Contention"): the
current row moves from version n to n+1 by a compare-and-set (`UPDATE … WHERE version_id = n`),
and a resource named by the client is created by `INSERT … ON CONFLICT DO NOTHING`. The loser
of a race learns it from the row count, before it writes anything else, and gets
VersionConflictError (409; the REST layer answers 412 when the request carried If-Match):
never a primary-key violation, and never a lost update. On PostgreSQL the loser's UPDATE waits
for the winner's row lock and then sees the new version; SQLite serialises writers.

Search-index rows (fhirserver.indexing) are queued on the session and inserted with one
multi-row INSERT per table before the session's next statement, flush or commit: a Synthea
bundle writes ~15 index rows per resource, and one statement per resource and table would
cost more than the extraction itself.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import and_, event, insert, select, text, update
from sqlalchemy import delete as sql_delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction
from sqlalchemy.orm.attributes import set_committed_value

from common.db import Base
from fhirserver import searchparams
from fhirserver.errors import Issue, VersionConflictError
from fhirserver.indexing import IndexRows, extract, identifier_tokens, literal_references
from fhirserver.models import (
    DateIndexRow,
    NumberIndexRow,
    QuantityIndexRow,
    ReferenceIndexRow,
    ResourceRow,
    ResourceVersionRow,
    SearchReferenceRow,
    StringIndexRow,
    TokenIndexRow,
    UriIndexRow,
)

INDEX_TABLES = (
    TokenIndexRow,
    StringIndexRow,
    SearchReferenceRow,
    DateIndexRow,
    QuantityIndexRow,
    NumberIndexRow,
    UriIndexRow,
    ReferenceIndexRow,
)
_PENDING = "fhirserver.pending_index_rows"
Rows = list[dict[str, Any]]
Model = type[Base]
# fhir_resources.version_id and fhir_resource_versions.version_id are 32-bit INTEGER columns.
MAX_VERSION_ID = 2**31 - 1


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
    if version > MAX_VERSION_ID:
        raise VersionConflictError([Issue(f"{rtype}/{rid} has reached the last version number", code="conflict")])
    stored = dict(resource)
    meta = dict(stored.get("meta") or {})
    meta.update({"versionId": str(version), "lastUpdated": _instant(now)})
    stored["meta"] = meta
    content = dumps(stored)
    values = {"version_id": version, "last_updated": now, "deleted": False, "content": content}
    if current is None and is_new:
        # A server-assigned id (a fresh UUID): no one else can be creating it.
        session.add(ResourceRow(resource_type=rtype, id=rid, **values))
    elif current is None:
        await _create_once(session, rtype, rid, values)
    else:
        await _advance(session, current, values)
    session.add(
        ResourceVersionRow(
            resource_type=rtype, id=rid, version_id=version, last_updated=now, method=method, content=content
        )
    )
    await _reindex(session, stored, drop_old=current is not None)
    return stored, created


def _conflict(rtype: str, rid: str) -> VersionConflictError:
    return VersionConflictError(
        [Issue(f"{rtype}/{rid} was changed by another request at the same time; read it again", code="conflict")]
    )


async def _create_once(session: AsyncSession, rtype: str, rid: str, values: dict[str, Any]) -> None:
    """Insert the first version of a client-named resource, unless a concurrent request did."""
    dialect = postgresql if (await session.connection()).dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(ResourceRow).values(resource_type=rtype, id=rid, **values).on_conflict_do_nothing()
    if (await session.execute(stmt)).rowcount != 1:  # type: ignore[attr-defined]
        raise _conflict(rtype, rid)


async def _advance(session: AsyncSession, current: ResourceRow, values: dict[str, Any]) -> None:
    """Move the current row from the version this request read to the next one (compare-and-set)."""
    stmt = (
        update(ResourceRow)
        .where(
            ResourceRow.resource_type == current.resource_type,
            ResourceRow.id == current.id,
            ResourceRow.version_id == current.version_id,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if (await session.execute(stmt)).rowcount != 1:  # type: ignore[attr-defined]
        raise _conflict(current.resource_type, current.id)
    for name, value in values.items():
        set_committed_value(current, name, value)


# A write of this many resources at once refreshes the planner's statistics (refresh_statistics).
ANALYZE_AFTER_RESOURCES = 1000


async def refresh_statistics(session: AsyncSession) -> None:
    """ANALYZE the FHIR tables on PostgreSQL, after a bulk write (`mockehr load`, a large transaction).

    Autovacuum analyses a table only after a fraction of it changed, and later: meanwhile the
    planner's statistics say that the values just written match "1 row". The search statements
    are shaped not to depend on those estimates (search._intersected); fresh statistics keep the
    rest of the planner's choices right too. SQLite's plans are built without statistics on
    purpose (search._NoIndex), so nothing is done there. ANALYZE samples a bounded number of
    rows per table, and inside a transaction it sees that transaction's own rows.
    """
    if (await session.connection()).dialect.name != "postgresql":
        return
    tables = ", ".join(model.__tablename__ for model in (ResourceRow, ResourceVersionRow, *INDEX_TABLES))
    await session.execute(text(f"ANALYZE {tables}"))


async def bulk_create(
    session: AsyncSession,
    resources: list[dict[str, Any]],
    *,
    now: dt.datetime,
    batch: int = 2000,
    method: str = "PUT",
    rows_of: Callable[[dict[str, Any]], dict[Model, Rows]] | None = None,
) -> int:
    """Store resources that do not exist yet (version 1), in multi-row INSERTs of `batch` rows.

    For bulk loading known-new resources (the scale benchmark, large seeds): what `write` stores
    for a new resource, without one ORM object per row. Every resource must carry its id and be
    valid already (fhirserver.validation); an existing id fails the INSERT (IntegrityError) and
    the caller's transaction rolls back as a whole. `rows_of` replaces `index_rows` by an
    equivalent that is cheaper for the caller's resources (audit.AuditIndex).
    """
    await flush_index(session)
    versions: Rows = []
    current: Rows = []
    indexes: dict[Model, Rows] = {}

    async def write_out() -> None:
        connection = await session.connection()
        tables: list[tuple[Model, Rows]] = [(ResourceRow, current), (ResourceVersionRow, versions)]
        for model, rows in [*tables, *indexes.items()]:
            if rows:
                await connection.execute(insert(model), rows)
        current.clear()
        versions.clear()
        indexes.clear()

    stamp = _instant(now)
    for resource in resources:
        stored = dict(resource)
        stored["meta"] = {**(stored.get("meta") or {}), "versionId": "1", "lastUpdated": stamp}
        content = dumps(stored)
        key = {"resource_type": stored["resourceType"], "id": stored["id"], "version_id": 1, "last_updated": now}
        current.append({**key, "deleted": False, "content": content})
        versions.append({**key, "method": method, "content": content})
        for table, rows in (rows_of or index_rows)(stored).items():
            indexes.setdefault(table, []).extend(rows)
        if len(current) >= batch:
            await write_out()
    await write_out()
    return len(resources)


async def _reindex(session: AsyncSession, resource: dict[str, Any], *, drop_old: bool) -> None:
    rtype, rid = resource["resourceType"], resource["id"]
    if drop_old:
        await _drop_index(session, rtype, rid)
    pending: dict[Model, Rows] = session.info.setdefault(_PENDING, {})
    for table, rows in index_rows(resource).items():
        pending.setdefault(table, []).extend(rows)


def index_rows(resource: dict[str, Any]) -> dict[Model, Rows]:
    """Every index row of one resource, per table."""
    rtype, rid = resource["resourceType"], resource["id"]
    owner = {"resource_type": rtype, "resource_id": rid}
    found = extract(resource)
    out: dict[Model, Rows] = {
        TokenIndexRow: [{**owner, "param": p, "system": s, "code": c, "text": t} for p, s, c, t in found.token],
        ReferenceIndexRow: [
            {**owner, "path": path[:255], "target_type": ttype, "target_id": tid}
            for path, ttype, tid in literal_references(resource)
        ],
    }
    if searchparams.get(rtype, "identifier") is None:
        # Conditional create/update (find_by_identifier) works on every type, searchable or not.
        out[TokenIndexRow] += [
            {**owner, "param": "identifier", "system": s, "code": c[:255], "text": None}
            for s, c in identifier_tokens(resource)
        ]
    out.update(_typed_rows(owner, found))
    return {table: rows for table, rows in out.items() if rows}


def _typed_rows(owner: dict[str, str], found: IndexRows) -> dict[Model, Rows]:
    return {
        StringIndexRow: [{**owner, "param": p, "value": v, "exact": e} for p, v, e in found.string],
        SearchReferenceRow: [
            {**owner, "param": p, "target_type": t, "target_id": i, "url": u} for p, t, i, u in found.reference
        ],
        DateIndexRow: [{**owner, "param": p, "low": lo, "high": hi} for p, lo, hi in found.date],
        QuantityIndexRow: [
            {**owner, "param": p, "low": lo, "high": hi, "system": s, "code": c, "unit": u}
            for p, lo, hi, s, c, u in found.quantity
        ],
        NumberIndexRow: [{**owner, "param": p, "low": lo, "high": hi} for p, lo, hi in found.number],
        UriIndexRow: [{**owner, "param": p, "value": v} for p, v in found.uri],
    }


def _insert_pending(session: Session) -> None:
    """Insert the index rows queued on this session, in its transaction."""
    pending: dict[Model, Rows] | None = session.info.pop(_PENDING, None)
    if pending:
        connection = session.connection()
        for model, rows in pending.items():
            connection.execute(insert(model), rows)


# Queued rows are inserted before any statement of the session runs, before a flush and before
# commit, so whoever reads through the session (search, find_by_identifier, referencing, the
# REST layer) sees them, and a commit never leaves them behind.
@event.listens_for(Session, "do_orm_execute")
def _before_statement(state: ORMExecuteState) -> None:
    _insert_pending(state.session)


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, _flush: UOWTransaction, _instances: object) -> None:
    _insert_pending(session)


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    _insert_pending(session)


@event.listens_for(Session, "after_soft_rollback")
def _forget_pending_rows(session: Session, _previous: object) -> None:
    session.info.pop(_PENDING, None)


async def flush_index(session: AsyncSession) -> None:
    """Insert queued index rows now (a query through the session does it anyway)."""
    if session.info.get(_PENDING):
        await session.run_sync(_insert_pending)


async def _drop_index(session: AsyncSession, rtype: str, rid: str) -> None:
    await flush_index(session)
    for model in INDEX_TABLES:
        await session.execute(sql_delete(model).where(and_(model.resource_type == rtype, model.resource_id == rid)))


async def reindex_all(session: AsyncSession, *, batch: int = 500) -> int:
    """Rebuild every index row from the stored resources (after a change of the extraction)."""
    for model in INDEX_TABLES:
        await session.execute(sql_delete(model))
    done = 0
    stream = await session.stream(select(ResourceRow.content).where(ResourceRow.deleted.is_(False)))
    async for chunk in stream.scalars().partitions(batch):
        rows: dict[Model, Rows] = {}
        for content in chunk:
            for table, found in index_rows(orjson.loads(content or "{}")).items():
                rows.setdefault(table, []).extend(found)
        for table, found in rows.items():
            await session.execute(insert(table), found)
        done += len(chunk)
    return done


async def find_by_identifier(session: AsyncSession, rtype: str, system: str | None, code: str) -> list[str]:
    """Ids of current resources with identifier `system|code` (`system` None: any system)."""
    await flush_index(session)
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
    """Ids of `rtype` resources whose reference at one of `paths` names target_type/target_id.

    `paths` are element paths ("generalPractitioner", "participant.member"), not search parameters.
    """
    await flush_index(session)
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
    version = current.version_id + 1
    await _advance(session, current, {"version_id": version, "last_updated": now, "deleted": True, "content": None})
    session.add(
        ResourceVersionRow(
            resource_type=rtype, id=rid, version_id=version, last_updated=now, method="DELETE", content=None
        )
    )
    await _drop_index(session, rtype, rid)
    return True
