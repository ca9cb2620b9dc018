"""The FHIR R4 RESTful API (http://hl7.org/fhir/R4/http.html), every interaction behind the guard.

Reads and write pre-checks go through the same restricted search as searches (`_id=`), so
compartment, granular scope filters and "a forbidden resource looks exactly like a missing one"
share one code path. A write is judged by that same search twice, under the restriction of the
scopes granting its interaction (SMART App Launch 2.2, "Finer-grained resource constraints using
search parameters"): on the stored resource before an update or delete, and on the written
content inside the write's database transaction, which is rolled back if it falls outside
(nothing is created in, or moved out of, a compartment or a granular filter the token does not
cover). Which versions vread and `_history` show is decided per version (fhirserver.history).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from fastapi import Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common.bodies import parse_json
from common.numbers import bounded_int
from fhirserver import cursor, history, storage
from fhirserver.audit import AuditRecord, AuditWriter
from fhirserver.compartments import Restriction, restriction_for
from fhirserver.errors import (
    FhirError,
    GoneError,
    Issue,
    NotFoundError,
    PreconditionFailedError,
    VersionConflictError,
)
from fhirserver.guard import Access, ForbiddenError, Guard, Permission, Principal, View
from fhirserver.models import ResourceVersionRow
from fhirserver.negotiation import FHIR_JSON, check_content_type, prefer_return, strict_handling
from fhirserver.search import SUPPORTED_TYPES, SearchResult, find_by_id, search
from fhirserver.settings import FhirSettings
from fhirserver.transaction import EntryGuard, process_transaction
from fhirserver.validation import validate_resource

MAX_EVERYTHING = 1000
SERVER_WRITTEN = frozenset({"AuditEvent"})
_VIEW_TYPES = sorted(SUPPORTED_TYPES)


def fhir_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON, headers=headers)


def _etag(version: int | str) -> str:
    return f'W/"{version}"'


def _not_found(rtype: str, rid: str) -> NotFoundError:
    return NotFoundError([Issue(f"{rtype}/{rid} is not known", code="not-found")])


def _version_id(vid: str) -> int:
    """A version id as this server writes them: 1 … storage.MAX_VERSION_ID (an INTEGER column)."""
    version = bounded_int(vid, 1, storage.MAX_VERSION_ID)
    if version is None:
        raise FhirError([Issue(f"a version id is an integer from 1 to {storage.MAX_VERSION_ID}", code="invalid")])
    return version


@dataclass
class Context:
    """One request: who asks, through which guard, against which database."""

    request: Request
    principal: Principal
    guard: Guard
    settings: FhirSettings
    audit: AuditWriter
    now: float

    _view: View | None = None

    async def access(self, rtype: str, permission: Permission) -> Access:
        if rtype not in SUPPORTED_TYPES:
            raise FhirError([Issue(f"resource type {rtype!r} is not supported", code="not-supported")], status=404)
        if rtype in SERVER_WRITTEN and permission in ("c", "u", "d"):
            # The audit trail is written by this server only; no scope lets a client change it.
            raise ForbiddenError
        access = await self.guard.access(self.principal, rtype, permission)
        if self._view is None:
            self._view = await self.guard.view(self.principal, _VIEW_TYPES)
        return access

    def restriction(self, access: Access) -> Restriction:
        """The searched type's own restriction, plus what included/chained types may show."""
        return restriction_for(access, self._view)  # access() always runs first and takes the view

    def record(self, interaction: str, target: str, status: int) -> None:
        if not self.principal.acting_for_cds_service:
            return
        user = "/".join(self.principal.fhir_user) if self.principal.fhir_user else None
        self.audit.record(
            AuditRecord(interaction, self.principal.client_id, user, self.principal.patient, target, status, self.now)
        )


async def visible(session: AsyncSession, ctx: Context, rtype: str, rid: str, access: Access) -> bool:
    return await visible_resource(session, ctx, rtype, rid, access) is not None


async def visible_resource(
    session: AsyncSession, ctx: Context, rtype: str, rid: str, access: Access
) -> dict[str, Any] | None:
    """The current resource if this token may see it, else None (missing and forbidden alike)."""
    return await find_by_id(
        session, rtype, rid, restriction=ctx.restriction(access), base_url=ctx.settings.fhir_base_url
    )


async def read(session: AsyncSession, ctx: Context, rtype: str, rid: str) -> Response:
    access = await ctx.access(rtype, "r")
    resource = await visible_resource(session, ctx, rtype, rid, access)
    if resource is not None:
        meta = resource.get("meta", {})
        return fhir_response(
            resource,
            headers={
                "ETag": _etag(meta.get("versionId", "")),
                "Last-Modified": _http_date_text(meta.get("lastUpdated")),
            },
        )
    row = await storage.read_current(session, rtype, rid)
    if row is not None and row.deleted and access.patient_ids is None and not access.filters:
        raise GoneError([Issue(f"{rtype}/{rid} was deleted", code="deleted")])
    raise _not_found(rtype, rid)


MAX_HISTORY = 200


async def vread(session: AsyncSession, ctx: Context, rtype: str, rid: str, vid: str) -> Response:
    version = _version_id(vid)
    access = await ctx.access(rtype, "r")
    # The version before it too: a deletion is shown when the version it deleted is.
    rows = (
        await session.execute(
            select(ResourceVersionRow).where(
                ResourceVersionRow.resource_type == rtype,
                ResourceVersionRow.id == rid,
                ResourceVersionRow.version_id.in_([version - 1, version]),
            )
        )
    ).scalars()
    shown = await history.visible_versions(
        session, rtype, rid, list(rows), restriction=ctx.restriction(access), base_url=ctx.settings.fhir_base_url
    )
    row = next((r for r in shown if r.version_id == version), None)
    if row is None:
        raise _not_found(rtype, f"{rid}/_history/{vid}")
    if row.content is None:
        raise GoneError([Issue(f"version {vid} of {rtype}/{rid} is a deletion", code="deleted")])
    return fhir_response(json.loads(row.content), headers={"ETag": _etag(row.version_id)})


async def instance_history(session: AsyncSession, ctx: Context, rtype: str, rid: str) -> Response:
    access = await ctx.access(rtype, "r")
    rows = list(
        (
            await session.execute(
                select(ResourceVersionRow)
                .where(ResourceVersionRow.resource_type == rtype, ResourceVersionRow.id == rid)
                .order_by(ResourceVersionRow.version_id.desc())
                .limit(MAX_HISTORY + 1)  # one more: what the oldest listed deletion deleted
            )
        ).scalars()
    )
    shown = await history.visible_versions(
        session, rtype, rid, rows, restriction=ctx.restriction(access), base_url=ctx.settings.fhir_base_url
    )
    listed = {r.version_id for r in rows[:MAX_HISTORY]}
    shown = [r for r in shown if r.version_id in listed]
    if not shown:
        raise _not_found(rtype, rid)
    return fhir_response(_history_bundle(ctx, shown))


async def type_history(session: AsyncSession, ctx: Context, rtype: str) -> Response:
    access = await ctx.access(rtype, "s")
    if access.patient_ids is not None or access.filters:
        # Versions are judged one by one (fhirserver.history), with a lookup per resource, after
        # the newest 200 of the type are read: a restricted token would get a few of another
        # patient's 200 or none. Only unrestricted (system) tokens page through a type's history.
        raise ForbiddenError
    rows = (
        await session.execute(
            select(ResourceVersionRow)
            .where(ResourceVersionRow.resource_type == rtype)
            .order_by(ResourceVersionRow.last_updated.desc())
            .limit(MAX_HISTORY)
        )
    ).scalars()
    return fhir_response(_history_bundle(ctx, list(rows)))


def _history_bundle(ctx: Context, rows: list[ResourceVersionRow]) -> dict[str, Any]:
    entries = []
    for row in rows:
        entry: dict[str, Any] = {
            "fullUrl": f"{ctx.settings.fhir_base_url}/{row.resource_type}/{row.id}",
            "request": {
                "method": row.method,
                "url": f"{row.resource_type}/{row.id}" if row.method != "POST" else row.resource_type,
            },
            "response": {
                "status": "204" if row.content is None else ("201" if row.version_id == 1 else "200"),
                "etag": _etag(row.version_id),
            },
        }
        if row.content is not None:
            entry["resource"] = json.loads(row.content)
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries}


def _http_date_text(instant: object) -> str:
    if not isinstance(instant, str):
        return ""
    try:
        return _http_date(dt.datetime.fromisoformat(instant.replace("Z", "+00:00")))
    except ValueError:
        return ""


def _http_date(when: dt.datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


# --- search ------------------------------------------------------------------------------------


def _token_binding(ctx: Context) -> dict[str, str]:
    """What a paging link is bound to: everything that decides what the token may see."""
    claims = ctx.principal.claims
    context = f"{claims.get('scope', '')}\x00{claims.get('patient', '')}\x00{claims.get('fhirUser', '')}"
    return {"subject": ctx.principal.subject, "client_id": ctx.principal.client_id, "scope": context}


async def search_type(
    session: AsyncSession, ctx: Context, rtype: str, params: list[tuple[str, str]], key: bytes
) -> Response:
    offset = 0
    if any(name == "_cursor" for name, _ in params):
        value = next(v for n, v in params if n == "_cursor")
        try:
            page = cursor.decode(key, value, now=int(ctx.now), **_token_binding(ctx))
        except (cursor.CursorError, ValueError, KeyError, TypeError):
            raise FhirError([Issue("the paging link is not valid for this token", code="invalid")]) from None
        if page.resource_type != rtype:
            raise FhirError([Issue("the paging link is for another resource type", code="invalid")])
        params, offset = page.params, page.offset
    access = await ctx.access(rtype, "s")
    result = await search(
        session,
        rtype,
        params,
        restriction=ctx.restriction(access),
        base_url=ctx.settings.fhir_base_url,
        offset=offset,
        limits=ctx.settings.search_limits,
    )
    if result.unknown and strict_handling(ctx.request):
        raise FhirError(
            [
                Issue(f"unknown search parameter {name!r}", code="not-supported", expression=(name,))
                for name in result.unknown
            ]
        )
    return fhir_response(_searchset(ctx, rtype, params, result, key))


def _has_next(result: SearchResult) -> bool:
    if result.total is not None:
        return result.offset + len(result.resources) < result.total
    return len(result.resources) >= result.count > 0


def _link(ctx: Context, rtype: str, params: list[tuple[str, str]], offset: int, key: bytes) -> str:
    token = cursor.encode(key, cursor.Cursor(rtype, params, offset), now=int(ctx.now), **_token_binding(ctx))
    return f"{ctx.settings.fhir_base_url}/{rtype}?{urlencode({'_cursor': token})}"


def _searchset(
    ctx: Context, rtype: str, params: list[tuple[str, str]], result: SearchResult, key: bytes
) -> dict[str, Any]:
    base = ctx.settings.fhir_base_url
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if result.total is not None:
        bundle["total"] = result.total
    links = [{"relation": "self", "url": f"{base}/{rtype}?{urlencode(params)}" if params else f"{base}/{rtype}"}]
    if _has_next(result):
        links.append({"relation": "next", "url": _link(ctx, rtype, params, result.offset + result.count, key)})
    if result.offset > 0:
        links.append(
            {"relation": "previous", "url": _link(ctx, rtype, params, max(0, result.offset - result.count), key)}
        )
    bundle["link"] = links
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
        for r in result.resources
    ]
    entries += [
        {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "include"}}
        for r in result.included
    ]
    if result.unknown:
        entries.append(
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "warning",
                            "code": "not-supported",
                            "diagnostics": f"unknown search parameter {n!r} was ignored",
                        }
                        for n in result.unknown
                    ],
                },
                "search": {"mode": "outcome"},
            }
        )
    if entries:
        bundle["entry"] = entries
    return bundle


# --- writes ------------------------------------------------------------------------------------


async def json_body(request: Request, max_depth: int) -> Any:
    """The request's JSON body, after its Content-Type (415) and syntax (400 `structure`)."""
    # BodyLimitMiddleware has already held the body to max_body_bytes (413) and its depth (400).
    check_content_type(request)
    try:
        return parse_json(await request.body(), max_depth=max_depth)
    except ValueError:
        raise FhirError([Issue("the body is not valid JSON", code="structure")]) from None


async def _may_change_stored(session: AsyncSession, ctx: Context, rtype: str, rid: str, access: Access) -> bool:
    """Before an update or delete: may the token change the stored current `rtype/rid`?

    False when it is missing or outside the compartment: the caller answers as for a missing
    resource. ForbiddenError when it is in the compartment but matches none of the granular
    filters of the scopes granting this interaction (SMART App Launch 2.2, "Finer-grained
    resource constraints using search parameters": a scope covers what its search matches), so
    a `?category=laboratory` token cannot rewrite or delete a vital-signs Observation.
    """
    restriction = ctx.restriction(access)
    base = ctx.settings.fhir_base_url
    compartment = replace(restriction, extra_filters=[])
    if await find_by_id(session, rtype, rid, restriction=compartment, base_url=base) is None:
        return False
    if not restriction.extra_filters:
        return True
    if await find_by_id(session, rtype, rid, restriction=restriction, base_url=base) is None:
        raise ForbiddenError
    return True


async def _must_be_within_scopes(session: AsyncSession, ctx: Context, access: Access, rtype: str, rid: str) -> None:
    """After a create or update, in its database transaction: the written content must lie in an
    allowed compartment and match a granular filter of the scopes granting the interaction, as a
    search would decide; otherwise ForbiddenError, and the caller's transaction rolls back."""
    if access.patient_ids is None and not access.filters:
        return
    await session.flush()
    restriction = Restriction(allowed_patient_ids=access.patient_ids, extra_filters=[list(g) for g in access.filters])
    if await find_by_id(session, rtype, rid, restriction=restriction, base_url=ctx.settings.fhir_base_url) is None:
        raise ForbiddenError


def _written(ctx: Context, stored: dict[str, Any], status: int) -> Response:
    version = stored["meta"]["versionId"]
    headers = {
        "Location": f"{ctx.settings.fhir_base_url}/{stored['resourceType']}/{stored['id']}/_history/{version}",
        "ETag": _etag(version),
        "Last-Modified": stored["meta"]["lastUpdated"],
    }
    preference = prefer_return(ctx.request)
    if preference == "minimal":
        return Response(status_code=status, headers=headers)
    if preference == "OperationOutcome":
        return fhir_response(
            {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "information", "code": "informational", "diagnostics": "ok"}],
            },
            status,
            headers,
        )
    return fhir_response(stored, status, headers)


async def create(session: AsyncSession, ctx: Context, rtype: str, body: Any) -> Response:
    access = await ctx.access(rtype, "c")
    if not isinstance(body, dict) or body.get("resourceType") != rtype:
        raise FhirError([Issue(f"the body must be a {rtype}", code="invalid", expression=("resourceType",))])
    criteria = ctx.request.headers.get("if-none-exist")
    if criteria:
        # Conditional create matches only within what this token may see: it never reveals
        # (by answering 200) a resource in another patient's compartment.
        found = await search(
            session,
            rtype,
            parse_qsl(criteria),
            restriction=ctx.restriction(await ctx.access(rtype, "s")),
            base_url=ctx.settings.fhir_base_url,
            page_size_default=2,
        )
        if len(found.resources) > 1:
            raise PreconditionFailedError(
                [Issue("If-None-Exist matched more than one resource", code="multiple-matches")]
            )
        if found.resources:
            existing = found.resources[0]
            return fhir_response(
                existing,
                200,
                {
                    "ETag": _etag(existing["meta"]["versionId"]),
                    "Location": f"{ctx.settings.fhir_base_url}/{rtype}/{existing['id']}",
                },
            )
    resource = dict(body)
    resource["id"] = storage.new_id()
    validate_resource(resource)
    stored, _ = await storage.write(session, resource, method="POST", now=_now(ctx), is_new=True)
    await _must_be_within_scopes(session, ctx, access, rtype, resource["id"])
    return _written(ctx, stored, 201)


async def update(session: AsyncSession, ctx: Context, rtype: str, rid: str, body: Any) -> Response:
    if not isinstance(body, dict) or body.get("resourceType") != rtype:
        raise FhirError([Issue(f"the body must be a {rtype}", code="invalid", expression=("resourceType",))])
    if body.get("id") != rid:
        raise FhirError(
            [Issue("resource.id must equal the id in the URL", code="invalid", expression=(f"{rtype}.id",))]
        )
    current = await storage.read_current(session, rtype, rid)
    exists = current is not None and not current.deleted
    access = await ctx.access(rtype, "u" if exists else "c")
    if exists and not await _may_change_stored(session, ctx, rtype, rid, access):
        raise _not_found(rtype, rid)
    if_match = ctx.request.headers.get("if-match")
    if if_match is not None and (not exists or current is None or if_match.strip() != _etag(current.version_id)):
        raise PreconditionFailedError([Issue("If-Match does not name the current version", code="conflict")])
    validate_resource(body)
    try:
        stored, created = await storage.write(session, dict(body), method="PUT", now=_now(ctx))
    except VersionConflictError:
        if if_match is None:
            raise  # 409: a plain update lost a race; the client may read and try again
        # http.html "Managing Resource Contention": the version If-Match named is no longer current.
        raise PreconditionFailedError([Issue("If-Match does not name the current version", code="conflict")]) from None
    await _must_be_within_scopes(session, ctx, access, rtype, rid)
    return _written(ctx, stored, 201 if created else 200)


async def delete(session: AsyncSession, ctx: Context, rtype: str, rid: str) -> Response:
    access = await ctx.access(rtype, "d")
    if await _may_change_stored(session, ctx, rtype, rid, access):
        await storage.delete(session, rtype, rid, now=_now(ctx))
    # FHIR R4 §3.1.0.7.1: deleting what is absent (or invisible) answers like success.
    return Response(status_code=204)


def _now(ctx: Context) -> dt.datetime:
    return dt.datetime.fromtimestamp(ctx.now, dt.UTC)


# --- Bundles and $everything -------------------------------------------------------------------


_METHOD_PERMISSION: dict[str, Permission] = {"POST": "c", "PUT": "u", "DELETE": "d"}


async def transaction(session: AsyncSession, ctx: Context, bundle: Any) -> Response:
    """A transaction Bundle with the guard applied to every entry (one DB transaction).

    A token without any scope for an entry's interaction is refused before any work; then each
    entry is judged as its single request would be, as it is applied (EntryGuard): the stored
    resource before a PUT or DELETE changes it, the written content after a POST or PUT. Any
    refusal fails the whole Bundle and rolls back what earlier entries wrote.
    """
    entries = bundle.get("entry") or [] if isinstance(bundle, dict) else []
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        request = entry.get("request") if isinstance(entry, dict) else None
        method = request.get("method") if isinstance(request, dict) else None
        url = str(request.get("url", "")) if isinstance(request, dict) else ""
        rtype = url.split("?")[0].split("/")[0]
        if method not in _METHOD_PERMISSION:
            raise FhirError(
                [Issue(f"entry {index}: method {method!r} is not supported in a transaction", code="not-supported")]
            )
        if method == "PUT":
            # An update needs u, a create by PUT c: which one is known once the target is resolved.
            try:
                await ctx.access(rtype, "u")
            except ForbiddenError:
                await ctx.access(rtype, "c")
        else:
            await ctx.access(rtype, _METHOD_PERMISSION[method])

    async def resolve(rtype: str, query: str) -> set[str]:
        access = await ctx.access(rtype, "s")
        found = await search(
            session,
            rtype,
            parse_qsl(query),
            restriction=ctx.restriction(access),
            base_url=ctx.settings.fhir_base_url,
            page_size_default=3,
        )
        return {r["id"] for r in found.resources}

    async def before(method: str, rtype: str, rid: str) -> None:
        if not await storage.exists(session, rtype, rid):
            return  # a PUT creates (judged on what it writes); a DELETE has no effect
        access = await ctx.access(rtype, _METHOD_PERMISSION[method])
        if not await _may_change_stored(session, ctx, rtype, rid, access):
            raise _not_found(rtype, rid)

    async def after(rtype: str, rid: str, created: bool) -> None:
        access = await ctx.access(rtype, "c" if created else "u")
        await _must_be_within_scopes(session, ctx, access, rtype, rid)

    response = await process_transaction(
        session,
        bundle,
        now=_now(ctx),
        max_entries=ctx.settings.max_bundle_entries,
        resolve=resolve,
        guard=EntryGuard(before=before, after=after),
    )
    return fhir_response(response)


async def everything(session: AsyncSession, ctx: Context, patient_id: str, compartment_types: list[str]) -> Response:
    """Patient/$everything: the patient and their compartment, as far as this token may read."""
    access = await ctx.access("Patient", "r")
    if not await visible(session, ctx, "Patient", patient_id, access):
        raise _not_found("Patient", patient_id)
    base = ctx.settings.fhir_base_url
    entries: list[dict[str, Any]] = []
    for rtype in ["Patient", *compartment_types]:
        try:
            type_access = await ctx.access(rtype, "s")
        except (ForbiddenError, FhirError):
            continue
        allowed = frozenset({patient_id}) if type_access.patient_ids is None else type_access.patient_ids & {patient_id}
        if not allowed:
            continue
        restriction = Restriction(
            allowed_patient_ids=allowed, extra_filters=[list(g) for g in type_access.filters], types=None
        )
        params = [("_id", patient_id)] if rtype == "Patient" else []
        found = await search(
            session,
            rtype,
            params,
            restriction=restriction,
            base_url=base,
            page_size_default=MAX_EVERYTHING,
            page_size_max=MAX_EVERYTHING,
        )
        entries += [
            {"fullUrl": f"{base}/{rtype}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in found.resources
        ]
        if len(entries) >= MAX_EVERYTHING:
            break
    return fhir_response(
        {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries[:MAX_EVERYTHING]}
    )


def bundle_kind(body: Any, max_entries: int) -> str:
    """`batch` or `transaction`: what POST to the base takes (http.html#transaction), or FhirError."""
    kind = body.get("type") if isinstance(body, dict) else None
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle" or kind not in ("batch", "transaction"):
        raise FhirError([Issue("POST to the base takes a batch or transaction Bundle", code="invalid")])
    entries = body.get("entry") or []
    if not isinstance(entries, list):  # FHIR R4 Bundle.entry is 0..*: a JSON array
        raise FhirError([Issue("Bundle.entry must be a list", code="invalid")])
    if len(entries) > max_entries:
        raise FhirError([Issue(f"a Bundle may hold at most {max_entries} entries", code="too-costly")], status=413)
    return str(kind)


async def batch(sessions: Any, ctx: Context, bundle: dict[str, Any], key: bytes) -> Response:
    """A batch Bundle: every entry on its own (its own DB transaction), each through the guard."""
    out: list[dict[str, Any]] = []
    for index, entry in enumerate(bundle.get("entry") or []):
        try:
            out.append(await _batch_entry(sessions, ctx, entry, key))
        except FhirError as exc:
            out.append({"response": {"status": str(exc.status), "outcome": exc.outcome()}})
        except ForbiddenError:
            out.append({"response": {"status": "403", "outcome": _forbidden_outcome()}})
        except (TypeError, AttributeError, KeyError):
            out.append({"response": {"status": "400", "outcome": FhirError(f"entry {index} is malformed").outcome()}})
    return fhir_response({"resourceType": "Bundle", "type": "batch-response", "entry": out})


def _forbidden_outcome() -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "forbidden",
                "diagnostics": "the token's scopes do not allow this interaction",
            }
        ],
    }


async def _batch_entry(sessions: Any, ctx: Context, entry: dict[str, Any], key: bytes) -> dict[str, Any]:
    request = entry["request"]
    method, url = request["method"], str(request["url"])
    path, _, query = url.partition("?")
    parts = path.strip("/").split("/")
    async with sessions() as session, session.begin():
        if method == "GET" and len(parts) == 1:
            response = await search_type(session, ctx, parts[0], parse_qsl(query), key)
        elif method == "GET" and len(parts) == 2:
            response = await read(session, ctx, parts[0], parts[1])
        elif method == "POST" and len(parts) == 1:
            response = await create(session, ctx, parts[0], entry.get("resource"))
        elif method == "PUT" and len(parts) == 2:
            response = await update(session, ctx, parts[0], parts[1], entry.get("resource"))
        elif method == "DELETE" and len(parts) == 2:
            response = await delete(session, ctx, parts[0], parts[1])
        else:
            raise FhirError([Issue(f"{method} {url} is not supported in a batch", code="not-supported")])
    out: dict[str, Any] = {"response": {"status": str(response.status_code)}}
    if response.headers.get("location"):
        out["response"]["location"] = response.headers["location"]
    if response.headers.get("etag"):
        out["response"]["etag"] = response.headers["etag"]
    if response.body:
        out["resource"] = orjson.loads(response.body)
    return out
