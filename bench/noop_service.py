"""A no-op CDS Service for the hook benchmark: announces 1 + 5 services per prefetch variant and
answers every call with no cards, keeping the time its own handler took.

- `noop0-1` … `noop0-5` on patient-view announce no prefetch; `noop3-1` … `noop3-5` announce three
  templates (the patient, their conditions, their last ten observations).
- `GET /bench/own-time?reset=1` returns the handler times recorded since the last reset (ms),
  so the benchmark can subtract the service's own time from what the EHR took.

A benchmark fixture only, bound to loopback: it checks no CDS Client JWT and reads no prefetch.
"""

from __future__ import annotations

import time

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}&_count=10",
}
SERVICES = [
    {
        "hook": "patient-view",
        "id": f"noop{n}-{i}",
        "title": f"no-op {i} ({n} prefetch)",
        "description": "Answers with no cards (benchmark fixture).",
        **({"prefetch": PREFETCH} if n else {}),
    }
    for n in (0, 3)
    for i in range(1, 6)
]
JSON = "application/json"


def create_app() -> Starlette:
    own_ms: list[float] = []
    discovery = orjson.dumps({"services": SERVICES})
    empty = orjson.dumps({"cards": []})

    async def services(_request: Request) -> Response:
        return Response(discovery, media_type=JSON)

    async def call(request: Request) -> Response:
        start = time.perf_counter()
        orjson.loads(await request.body())
        response = Response(empty, media_type=JSON)
        own_ms.append((time.perf_counter() - start) * 1000)
        return response

    async def own_time(request: Request) -> Response:
        values = list(own_ms)
        if request.query_params.get("reset"):
            own_ms.clear()
        return Response(orjson.dumps({"ms": values}), media_type=JSON)

    return Starlette(
        routes=[
            Route("/cds-services", services),
            Route("/cds-services/{service_id}", call, methods=["POST"]),
            Route("/bench/own-time", own_time),
        ]
    )
