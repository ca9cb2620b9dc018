"""AuditEvents for every request made with a CDS Service's token (issue 4; Argonaut R15, R17).

Who (the CDS Service's client_id and the user it acts for), on whom (the patient), what (the
interaction and its outcome). Events are queued and written in batches by one background task,
so a read never waits for an audit write; the queue is flushed on shutdown, so nothing queued is
lost on a clean stop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.clock import Clock
from common.periodic import Periodic
from fhirserver import storage
from fhirserver.models import DateIndexRow

log = logging.getLogger(__name__)

# http://hl7.org/fhir/R4/valueset-audit-event-action.html
_ACTION = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "update": "U",
    "delete": "D",
    "search-type": "E",
    "history-instance": "R",
    "history-type": "E",
    "operation": "E",
    "transaction": "E",
    "batch": "E",
}


@dataclass(frozen=True)
class AuditRecord:
    interaction: str  # http://hl7.org/fhir/restful-interaction code
    client_id: str
    user: str | None  # relative reference, e.g. Practitioner/123
    patient: str | None
    target: str  # what was asked for, e.g. "Observation?code=..." or "Patient/1"
    status: int
    when: float


def audit_event(record: AuditRecord) -> dict[str, Any]:
    outcome = "0" if record.status < 400 else ("4" if record.status < 500 else "8")
    agents: list[dict[str, Any]] = [
        {
            "type": {
                "coding": [
                    {
                        "system": "http://dicom.nema.org/resources/ontology/DCM",
                        "code": "110150",
                        "display": "Application",
                    }
                ]
            },
            "who": {"identifier": {"system": "urn:mockehr:oauth-client", "value": record.client_id}},
            "requestor": False,
        }
    ]
    if record.user:
        agents.append({"who": {"reference": record.user}, "requestor": True})
    entities: list[dict[str, Any]] = [{"what": {"display": record.target[:1000]}}]
    if record.patient:
        entities.insert(0, {"what": {"reference": f"Patient/{record.patient}"}})
    return {
        "resourceType": "AuditEvent",
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        },
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": record.interaction}],
        "action": _ACTION.get(record.interaction, "E"),
        "recorded": dt.datetime.fromtimestamp(record.when, dt.UTC).isoformat(timespec="milliseconds"),
        "outcome": outcome,
        "agent": agents,
        "source": {"observer": {"display": "mockehr fhirserver"}},
        "entity": entities,
    }


class AuditIndex:
    """The search-index rows of the AuditEvents this writer stores, at a fraction of the cost.

    Extracting an AuditEvent's ~20 search parameters costs about as much as serving the read it
    audits. The events of one client, user, patient, interaction, target and outcome differ only
    in `id` and `recorded`, and `recorded` feeds only the `date` parameter; so the other rows are
    kept per event content (without those two) and only `date` is extracted per event. The rows
    are exactly `storage.index_rows` of the event (tests/unit/test_audit_index.py).
    """

    KEPT = 4096

    def __init__(self) -> None:
        self._rows: dict[bytes, dict[storage.Model, storage.Rows]] = {}

    def __call__(self, event: dict[str, Any]) -> dict[storage.Model, storage.Rows]:
        rid = event["id"]
        volatile = ("id", "recorded", "meta")
        key = orjson.dumps({k: v for k, v in event.items() if k not in volatile}, option=orjson.OPT_SORT_KEYS)
        if event.get("meta", {}).keys() - {"versionId", "lastUpdated"}:
            return storage.index_rows(event)  # tags, profiles, security labels: not this writer's events
        template = self._rows.get(key)
        if template is None:
            rows = storage.index_rows(event)
            template = {
                table: [{**row, "resource_id": ""} for row in found if not _is_date_row(table, row)]
                for table, found in rows.items()
            }
            if len(self._rows) >= self.KEPT:
                self._rows.clear()
            self._rows[key] = template
        out = {table: [{**row, "resource_id": rid} for row in found] for table, found in template.items()}
        dated = storage.index_rows({"resourceType": "AuditEvent", "id": rid, "recorded": event.get("recorded")})
        for table, found in dated.items():
            out.setdefault(table, []).extend(row for row in found if _is_date_row(table, row))
        return {table: found for table, found in out.items() if found}


def _is_date_row(table: storage.Model, row: dict[str, Any]) -> bool:
    return table is DateIndexRow and row.get("param") == "date"


class AuditWriter:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], clock: Clock, *, batch: int = 500, interval: float = 0.5
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._batch = batch
        self._queue: asyncio.Queue[AuditRecord] = asyncio.Queue(maxsize=100_000)
        self._index = AuditIndex()
        # A failed flush requeues its batch (flush) and is logged by the loop.
        self._loop = Periodic("audit-writer", self.flush, interval)

    def record(self, record: AuditRecord) -> None:
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            log.error("audit queue full: an AuditEvent was dropped")

    async def flush(self) -> int:
        records: list[AuditRecord] = []
        while not self._queue.empty() and len(records) < self._batch * 10:
            records.append(self._queue.get_nowait())
        if not records:
            return 0
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        try:
            events = [{**audit_event(rec), "id": storage.new_id()} for rec in records]
            async with self._sessions() as session, session.begin():
                # New ids: one multi-row INSERT per table for the whole batch.
                await storage.bulk_create(session, events, now=now, method="POST", rows_of=self._index)
        except Exception:
            for rec in records:  # not lost: tried again at the next flush
                self.record(rec)
            raise
        return len(records)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        while await self.flush():
            pass
