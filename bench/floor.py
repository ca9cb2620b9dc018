"""The floor: a bare Starlette endpoint serving fixed bytes, run by the same uvicorn with the same
TLS, flags and worker count as the services, so `service ÷ floor` is what the service's own work
costs (guard, database, FHIR) on top of what any Python web service costs here.

`GET /floor/{name}` answers `<MOCKEHR_BENCH_FLOOR_DIR>/{name}.json`; `POST` reads and discards
the request body first (the floor of a transaction upload).
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

MEDIA_TYPE = "application/fhir+json"


def create_app() -> Starlette:
    folder = Path(os.environ["MOCKEHR_BENCH_FLOOR_DIR"])
    bodies = {path.stem: path.read_bytes() for path in folder.glob("*.json")}

    async def serve(request: Request) -> Response:
        if request.method == "POST":
            await request.body()
        body = bodies.get(request.path_params["name"])
        if body is None:
            return Response(status_code=404)
        return Response(body, media_type=MEDIA_TYPE)

    return Starlette(routes=[Route("/floor/{name}", serve, methods=["GET", "POST"])])
