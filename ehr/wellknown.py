"""The EHR's published keys."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from common.web import jwks_response
from ehr.deps import RuntimeDep

router = APIRouter()


# CDS Hooks 2.0 "Trusting CDS Clients": the EHR publishes its JWT signing keys as a JWK Set;
# CDS Services are told this URL (and may see it as `jku`).
@router.get("/.well-known/jwks.json")
async def jwks(runtime: RuntimeDep) -> JSONResponse:
    return await jwks_response(runtime.keys)
