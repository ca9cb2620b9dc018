"""`mockehr load`: import FHIR transaction Bundles through the FHIR server's transaction logic."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fhirserver import storage
from fhirserver.errors import FhirError
from fhirserver.transaction import process_transaction


@dataclass(frozen=True)
class LoadResult:
    path: Path
    ok: bool
    message: str
    created: int = 0
    updated: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "ok": self.ok,
            "message": self.message,
            "created": self.created,
            "updated": self.updated,
        }


async def load_file(sessions: async_sessionmaker[AsyncSession], path: Path) -> LoadResult:
    try:
        bundle = json.loads(await asyncio.to_thread(path.read_bytes))
    except OSError as exc:
        return LoadResult(path, False, f"cannot read: {exc.strerror}")
    except ValueError:
        return LoadResult(path, False, "not valid JSON")
    try:
        async with sessions() as session, session.begin():
            response = await process_transaction(session, bundle, now=dt.datetime.now(dt.UTC), max_entries=100_000)
    except FhirError as exc:
        first = exc.issues[0]
        where = f" at {first.expression[0]}" if first.expression else ""
        more = f" (+{len(exc.issues) - 1} more)" if len(exc.issues) > 1 else ""
        return LoadResult(path, False, f"{first.diagnostics}{where}{more}; nothing was stored")
    statuses = Counter(e["response"]["status"].split()[0] for e in response["entry"])
    return LoadResult(
        path,
        True,
        f"{len(response['entry'])} entries ({statuses.get('201', 0)} created, "
        f"{statuses.get('200', 0)} updated or matched)",
        created=statuses.get("201", 0),
        updated=statuses.get("200", 0),
    )


async def load_files(sessions: async_sessionmaker[AsyncSession], paths: list[Path]) -> list[LoadResult]:
    results = [await load_file(sessions, p) for p in paths]
    if any(r.ok for r in results):
        # Many small files add up: searches right after a load plan from fresh statistics.
        async with sessions() as session, session.begin():
            await storage.refresh_statistics(session)
    return results
