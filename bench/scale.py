"""How search cost grows with data: compartment search (`_count=10`) p50/p95 and database size at
30, 300 and 3,000 synthetic patients (mockehr.seed), on SQLite, through the real search code.

In-process (no HTTP), so it isolates the database and the search engine from the web stack.
Loading validates every resource (fhirserver.validation) and stores it with
`storage.bulk_create` (multi-row INSERTs of resources, versions and index rows), so the
3,000-patient point loads in about two minutes instead of fifteen through the transaction path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common.db import make_engine, make_sessionmaker
from fhirserver import storage
from fhirserver.compartments import Restriction
from fhirserver.search import search
from fhirserver.validation import validate_resource
from mockehr import migrate
from mockehr.seed import generate

QUERIES = 300
WARMUP = 30


async def _measure(url: str, patients: int) -> dict[str, Any]:
    data = generate(patients, seed=7)
    resources = [entry["resource"] for entry in data.bundle["entry"]]
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    try:
        start = time.perf_counter()
        for resource in resources:
            validate_resource(resource)
        async with sessions() as session, session.begin():
            await storage.bulk_create(session, resources, now=dt.datetime.now(dt.UTC))
        load_seconds = time.perf_counter() - start
        rng = random.Random(3)  # noqa: S311 - sampling, not security
        latencies: list[float] = []
        async with sessions() as session:
            for i in range(QUERIES + WARMUP):
                patient = rng.choice(data.patient_ids)
                restriction = Restriction(allowed_patient_ids=frozenset({patient}))
                t = time.perf_counter()
                result = await search(
                    session,
                    "Observation",
                    [("patient", patient), ("_count", "10")],
                    restriction=restriction,
                    base_url="https://fhir.test/fhir",
                )
                if i >= WARMUP:
                    latencies.append(time.perf_counter() - t)
                assert result.resources, "every synthetic patient has observations"
        latencies.sort()
        return {
            "patients": patients,
            "resources": len(resources),
            "load_s": round(load_seconds, 1),
            "load_resources_per_s": round(len(resources) / load_seconds),
            "search_p50_ms": round(statistics.median(latencies) * 1000, 2),
            "search_p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 2),
        }
    finally:
        await engine.dispose()


def run(sizes: tuple[int, ...] = (30, 300, 3000)) -> list[dict[str, Any]]:
    rows = []
    for patients in sizes:
        folder = Path(tempfile.mkdtemp(prefix="mockehr-scale-"))
        url = f"sqlite:///{folder / 'scale.db'}"
        migrate.upgrade(url)
        try:
            row = asyncio.run(_measure(url, patients))
            size = sum(p.stat().st_size for p in folder.glob("scale.db*"))
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # 3,000 patients are ~0.7 GB
        row["database_mb"] = round(size / 1e6, 1)
        rows.append(row)
    return rows
