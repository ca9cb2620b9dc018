"""Which stored versions of a resource a token may see: vread and instance `_history`
(FHIR R4 http.html#vread, #history; docs/security.md "The FHIR server's guard").

A version is shown only if THAT version lies in the token's compartment and granular scope
filters, whatever the current version looks like: an Observation misfiled under patient A and
moved to patient B by an update shows B's token only the versions filed under B, and A's token
only those filed under A. A hidden version looks exactly like one that does not exist.

Search indexes are kept for current versions only (fhirserver.storage), so a past version is
judged from its JSON, with no second matcher:

- compartment: the references the indexing code extracts from the version
  (`storage.index_rows`), the very rows `compartments.compartment_condition` looks up in SQL for a
  current version;
- granular filters: the search itself (`search.find_by_id`) decides whether the current version
  matches; a past version counts as matching only if it indexes every parameter the filters
  name exactly as that current version does (same rows, so the search would answer the same).
  Every other past version is hidden, even one the search would have matched (fail closed), and
  so is every version of a resource that is deleted or that the filters no longer match;
- a deletion (a version without content) is shown when the version it deleted is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from fhirserver import storage
from fhirserver.compartments import Restriction
from fhirserver.models import ReferenceIndexRow, ResourceVersionRow, SearchReferenceRow
from fhirserver.search import find_by_id
from fhirserver.searchparams import compartment_params

_OWNER = frozenset({"resource_type", "resource_id"})


def in_compartment_of(resource: dict[str, Any], patient_ids: frozenset[str]) -> bool:
    """Is this resource content in the Patient compartment of one of `patient_ids`?

    The rule of `compartments.compartment_condition` (CompartmentDefinition-patient), applied to the
    reference rows the indexing code extracts from the content instead of the stored index.
    """
    rtype = str(resource.get("resourceType", ""))
    codes = compartment_params(rtype)
    if codes is None or not patient_ids:
        return False
    if rtype == "Patient" and resource.get("id") in patient_ids:
        return True
    return any(
        row["param"] in codes and row["target_type"] == "Patient" and row["target_id"] in patient_ids
        for row in storage.index_rows(resource).get(SearchReferenceRow, [])
    )


def _param_code(raw: str) -> str:
    """The parameter a filter name reads: `code` of `code:modifier` and `code.chain`; `_has` for
    `_has:…`, which, like `_id`, reads nothing a version can change."""
    return raw.partition(".")[0].partition(":")[0]


def _filter_key(resource: dict[str, Any], codes: frozenset[str]) -> frozenset[Any]:
    """Everything a search on `codes` reads of this content: its index rows for those parameters
    (and its lastUpdated, a column rather than an index row, if `_lastUpdated` is among them)."""
    key: set[Any] = set()
    for table, rows in storage.index_rows(resource).items():
        if table is ReferenceIndexRow:  # literal references, not a search parameter's index
            continue
        for row in rows:
            if row["param"] in codes:
                values = tuple(sorted(((k, v) for k, v in row.items() if k not in _OWNER), key=lambda kv: kv[0]))
                key.add((table.__tablename__, values))
    if "_lastUpdated" in codes:
        key.add(("_lastUpdated", (resource.get("meta") or {}).get("lastUpdated")))
    return frozenset(key)


async def visible_versions(
    session: AsyncSession,
    rtype: str,
    rid: str,
    rows: Sequence[ResourceVersionRow],
    *,
    restriction: Restriction,
    base_url: str,
) -> list[ResourceVersionRow]:
    """The versions among `rows` (of `rtype/rid`, in any order) that `restriction` lets the caller
    see, in the order given. A deletion needs the version it deleted among `rows` to be shown."""
    if restriction.types is not None and rtype not in restriction.types:
        return []
    patients = restriction.allowed_patient_ids
    filters = restriction.extra_filters
    if patients is None and not filters:
        return list(rows)
    matches: Callable[[dict[str, Any]], bool] = lambda _: True  # noqa: E731
    if filters:
        current = await find_by_id(
            session, rtype, rid, restriction=Restriction(extra_filters=filters), base_url=base_url
        )
        if current is None:
            return []
        codes = frozenset(_param_code(name) for group in filters for name, _ in group)
        wanted = _filter_key(current, codes)
        matches = lambda content: _filter_key(content, codes) == wanted  # noqa: E731
    shown: set[int] = set()
    for row in sorted(rows, key=lambda r: r.version_id):
        if row.content is None:
            visible = row.version_id - 1 in shown
        else:
            content: dict[str, Any] = orjson.loads(row.content)
            visible = (patients is None or in_compartment_of(content, patients)) and matches(content)
        if visible:
            shown.add(row.version_id)
    return [row for row in rows if row.version_id in shown]
