"""Transaction Bundles (FHIR R4 §3.1.0.11.2 "Transaction Processing Rules").

All entries succeed or none do: the caller runs this inside one database transaction and rolls
back on any FhirError. Implemented:
- POST (with `ifNoneExist` conditional create), PUT `Type/id` (update or create with a client id),
  PUT `Type?criteria` (conditional update), DELETE `Type/id`;
- processing order DELETE, POST, PUT (§3.1.0.11.2);
- `fullUrl` resolution: every reference to an entry's fullUrl (urn:uuid:… or absolute) is
  rewritten to the entry's final `Type/id`;
- conditional references `Type?criteria` (§3.1.0.11.2, "conditional references"): must match
  exactly one existing resource;
- every resource validated before anything is written.
Conditional criteria are searches (fhirserver.search); unknown parameters are refused, not ignored.
The REST layer passes an EntryGuard that judges every change as the token's single request would.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy.ext.asyncio import AsyncSession

from fhirserver import storage
from fhirserver.errors import FhirError, InvalidResourceError, Issue, NotFoundError, PreconditionFailedError
from fhirserver.validation import validate_resource

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2}


@dataclass
class _Entry:
    index: int
    method: str
    rtype: str
    rid: str = ""
    resource: dict[str, Any] | None = None
    existing: bool = False  # conditional create matched: nothing to write
    response: dict[str, Any] = field(default_factory=dict)


Resolver = Callable[[str, str], Awaitable[set[str]]]


@dataclass(frozen=True)
class EntryGuard:
    """Authorization around each change, inside the transaction (fhirserver.rest.transaction).

    `before(method, type, id)` runs before a PUT or DELETE touches `type/id` (the stored resource,
    if any, is still the old one); `after(type, id, created)` runs once a POST or PUT has written
    its content. Either refuses by raising, and the caller rolls back every entry.
    """

    before: Callable[[str, str, str], Awaitable[None]]
    after: Callable[[str, str, bool], Awaitable[None]]


async def resolve_criteria(session: AsyncSession, rtype: str, query: str) -> set[str]:
    """Ids of `rtype` resources matching a conditional query (any supported search parameter).

    The unrestricted resolver, for trusted loading (`mockehr load`); the REST layer passes one
    that searches only what the caller's token may see. Unknown parameters are refused, never
    ignored: ignoring one would widen the match.
    """
    from fhirserver.search import search

    params = parse_qsl(query, keep_blank_values=True)
    if not params:
        raise FhirError([Issue(f"empty conditional criteria for {rtype}", code="invalid")])
    result = await search(session, rtype, params, base_url="", page_size_default=3, page_size_max=3)
    if result.unknown:
        raise FhirError(
            [
                Issue(f"conditional criteria parameter {name!r} is not supported", code="not-supported")
                for name in result.unknown
            ]
        )
    return {r["id"] for r in result.resources}


def _where(index: int) -> str:
    return f"Bundle.entry[{index}]"


def _parse_entries(bundle: Any, max_entries: int) -> list[tuple[int, dict[str, Any]]]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidResourceError([Issue("body must be a Bundle", code="structure")])
    if bundle.get("type") != "transaction":
        raise InvalidResourceError([Issue("Bundle.type must be 'transaction'", expression=("Bundle.type",))])
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise InvalidResourceError([Issue("Bundle.entry must be a list", expression=("Bundle.entry",))])
    if len(entries) > max_entries:
        raise FhirError([Issue(f"a Bundle may hold at most {max_entries} entries", code="too-costly")], status=413)
    return list(enumerate(entries))


async def _plan(session: AsyncSession, index: int, raw: Any, resolve: Resolver) -> _Entry:
    where = _where(index)
    if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
        raise InvalidResourceError([Issue("entry.request is required", expression=(f"{where}.request",))])
    request = raw["request"]
    method, url = request.get("method"), str(request.get("url") or "")
    if method not in _ORDER:
        raise FhirError(
            [
                Issue(
                    f"request.method {method!r} is not supported in a transaction",
                    code="not-supported",
                    expression=(f"{where}.request.method",),
                )
            ]
        )
    path, _, query = url.partition("?")
    parts = path.strip("/").split("/")
    rtype = parts[0]
    resource = raw.get("resource")
    if method in ("POST", "PUT"):
        if not isinstance(resource, dict) or resource.get("resourceType") != rtype:
            raise InvalidResourceError(
                [
                    Issue(
                        f"entry.resource must be a {rtype or 'resource'} matching request.url",
                        expression=(f"{where}.resource",),
                    )
                ]
            )
        resource = dict(resource)
    entry = _Entry(index=index, method=method, rtype=rtype, resource=resource)
    if method == "POST":
        if len(parts) != 1 or query:
            raise InvalidResourceError(
                [Issue("POST url must be a resource type", expression=(f"{where}.request.url",))]
            )
        criteria = request.get("ifNoneExist")
        found = await resolve(rtype, str(criteria)) if criteria else set()
        if len(found) > 1:
            raise PreconditionFailedError(
                [
                    Issue(
                        f"ifNoneExist matched {len(found)} resources",
                        code="multiple-matches",
                        expression=(f"{where}.request.ifNoneExist",),
                    )
                ]
            )
        entry.existing = bool(found)
        entry.rid = found.pop() if found else storage.new_id()
    elif method == "PUT" and query:
        found = await resolve(rtype, query)
        if len(found) > 1:
            raise PreconditionFailedError(
                [
                    Issue(
                        f"conditional update matched {len(found)} resources",
                        code="multiple-matches",
                        expression=(f"{where}.request.url",),
                    )
                ]
            )
        entry.rid = found.pop() if found else str((resource or {}).get("id") or storage.new_id())
    else:
        if len(parts) != 2 or not parts[1]:
            raise InvalidResourceError([Issue(f"{method} url must be Type/id", expression=(f"{where}.request.url",))])
        entry.rid = parts[1]
        if method == "PUT" and resource is not None and resource.get("id") not in (None, entry.rid):
            raise InvalidResourceError(
                [Issue("resource.id does not match request.url", expression=(f"{where}.resource.id",))]
            )
    if entry.resource is not None:
        entry.resource["id"] = entry.rid
    return entry


async def _rewrite_references(
    resolve: Resolver, node: Any, full_urls: dict[str, str], where: str, cache: dict[str, str]
) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                node[key] = await _resolve_reference(resolve, value, full_urls, where, cache)
            else:
                await _rewrite_references(resolve, value, full_urls, where, cache)
    elif isinstance(node, list):
        for item in node:
            await _rewrite_references(resolve, item, full_urls, where, cache)


async def _resolve_reference(
    resolve: Resolver, value: str, full_urls: dict[str, str], where: str, cache: dict[str, str]
) -> str:
    if value in full_urls:
        return full_urls[value]
    if value.startswith("urn:uuid:") or value.startswith("urn:oid:"):
        raise InvalidResourceError([Issue(f"reference {value} names no entry of this Bundle", expression=(where,))])
    rtype, sep, query = value.partition("?")
    if sep and "/" not in rtype:
        if value not in cache:
            found = await resolve(rtype, query)
            if len(found) != 1:
                raise PreconditionFailedError(
                    [
                        Issue(
                            f"conditional reference {value} matched {len(found)} resources (needs exactly 1)",
                            code="not-found" if not found else "multiple-matches",
                            expression=(where,),
                        )
                    ]
                )
            cache[value] = f"{rtype}/{found.pop()}"
        return cache[value]
    return value


async def process_transaction(
    session: AsyncSession,
    bundle: Any,
    *,
    now: dt.datetime,
    max_entries: int = 5000,
    resolve: Resolver | None = None,
    guard: EntryGuard | None = None,
) -> dict[str, Any]:
    """Apply a transaction Bundle inside the caller's DB transaction; return the response Bundle.

    Without `guard` (trusted loading) no entry is authorized."""

    async def unrestricted(rtype: str, query: str) -> set[str]:
        return await resolve_criteria(session, rtype, query)

    resolver = resolve or unrestricted
    entries = _parse_entries(bundle, max_entries)
    planned = [await _plan(session, i, raw, resolver) for i, raw in entries]
    full_urls: dict[str, str] = {}
    for (_, raw), entry in zip(entries, planned, strict=True):
        full_url = raw.get("fullUrl")
        if isinstance(full_url, str) and full_url:
            full_urls[full_url] = f"{entry.rtype}/{entry.rid}"
    cache: dict[str, str] = {}
    for entry in planned:
        if entry.resource is not None:
            await _rewrite_references(resolver, entry.resource, full_urls, f"{_where(entry.index)}.resource", cache)
            validate_resource(entry.resource, where=f"{_where(entry.index)}: ")
    for entry in sorted(planned, key=lambda e: _ORDER[e.method]):
        await _apply(session, entry, now, guard)
    if len(planned) >= storage.ANALYZE_AFTER_RESOURCES:
        await storage.refresh_statistics(session)
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [{"response": e.response} for e in planned],
    }


async def _apply(session: AsyncSession, entry: _Entry, now: dt.datetime, guard: EntryGuard | None) -> None:
    if entry.method == "DELETE":
        if guard is not None:
            await guard.before(entry.method, entry.rtype, entry.rid)
        # FHIR R4 §3.1.0.7.1: deleting what is absent or already deleted has no effect and succeeds.
        await storage.delete(session, entry.rtype, entry.rid, now=now)
        entry.response = {"status": "204 No Content"}
        return
    if entry.existing:
        row = await storage.read_current(session, entry.rtype, entry.rid)
        if row is None:  # matched a moment ago in this same transaction
            raise NotFoundError(f"{entry.rtype}/{entry.rid} vanished during the transaction")
        entry.response = {
            "status": "200 OK",
            "location": f"{entry.rtype}/{entry.rid}/_history/{row.version_id}",
            "etag": f'W/"{row.version_id}"',
        }
        return
    if entry.resource is None:
        raise InvalidResourceError(f"{_where(entry.index)}: a resource is required")
    if guard is not None and entry.method == "PUT":
        await guard.before(entry.method, entry.rtype, entry.rid)
    stored, created = await storage.write(
        session, entry.resource, method=entry.method, now=now, is_new=entry.method == "POST"
    )
    if guard is not None:
        await guard.after(entry.rtype, entry.rid, created)
    version = stored["meta"]["versionId"]
    entry.response = {
        "status": "201 Created" if created else "200 OK",
        "location": f"{entry.rtype}/{entry.rid}/_history/{version}",
        "etag": f'W/"{version}"',
        "lastModified": stored["meta"]["lastUpdated"],
    }
