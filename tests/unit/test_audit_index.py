"""AuditIndex: the index rows of the writer's AuditEvents are exactly storage.index_rows, whether
computed or taken from its memory of an earlier event with the same content."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fhirserver import storage
from fhirserver.audit import AuditIndex, AuditRecord, audit_event

RECORDS = [
    AuditRecord("read", "cds-example", "Practitioner/p1", "pat-1", "Patient/pat-1", 200, 1_790_000_000.123),
    AuditRecord("search-type", "cds-example", "Practitioner/p1", "pat-1", "Observation?patient=pat-1", 200, 1.0e9),
    AuditRecord("read", "cds-other", None, "pat-2", "Patient/pat-3", 404, 1_790_000_100.5),
    AuditRecord("transaction", "cds-example", "Practitioner/p2", None, "Bundle", 403, 1_790_000_200.0),
]


def _event(record: AuditRecord, rid: str) -> dict[str, Any]:
    stored = {**audit_event(record), "id": rid}
    stored["meta"] = {"versionId": "1", "lastUpdated": "2026-11-30T05:00:00.000Z"}
    return stored


def _canonical(rows: dict[Any, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {table.__name__: sorted(repr(sorted(r.items())) for r in found) for table, found in rows.items()}


@pytest.mark.parametrize("record", RECORDS)
def test_audit_index_rows_equal_the_generic_extraction_first_time_and_from_memory(record: AuditRecord) -> None:
    index = AuditIndex()
    first = _event(record, "a1")
    assert _canonical(index(first)) == _canonical(storage.index_rows(first))
    # The same content a second later, under another id: from memory, with its own date and id.
    later = _event(dataclasses.replace(record, when=record.when + 61.25), "a2")
    assert _canonical(index(later)) == _canonical(storage.index_rows(later))
    assert all(row["resource_id"] == "a2" for rows in index(later).values() for row in rows)
    assert "DateIndexRow" in _canonical(index(later))  # `recorded` is indexed, per event


def test_an_event_with_tags_is_indexed_the_generic_way() -> None:
    index = AuditIndex()
    tagged = _event(RECORDS[0], "t1")
    tagged["meta"]["tag"] = [{"system": "urn:example", "code": "x"}]
    assert _canonical(index(tagged)) == _canonical(storage.index_rows(tagged))
