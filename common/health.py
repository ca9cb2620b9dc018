"""Liveness and readiness endpoints, the same on every service.

`/healthz` answers as long as the process serves requests. `/readyz` runs the service's checks
(database reachable, keys loaded, ...) and answers 503 naming the failed checks — names only, no
error text, so nothing internal leaks.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from fastapi import APIRouter
from fastapi.responses import JSONResponse

Check = Callable[[], Awaitable[None]]
log = logging.getLogger(__name__)


def health_router(checks: Callable[[], Mapping[str, Check]]) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})

    @router.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        results: dict[str, str] = {}
        for name, check in checks().items():
            try:
                await check()
                results[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
                log.warning("readiness check %s failed: %s", name, type(exc).__name__)
                results[name] = "failed"
        ok = all(v == "ok" for v in results.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": results},
            status_code=200 if ok else 503,
            headers={"Cache-Control": "no-store"},
        )

    return router
