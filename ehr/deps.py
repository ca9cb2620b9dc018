"""FastAPI dependency aliases of the EHR."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from common.runtime import Runtime
from ehr.errors import Forbidden
from ehr.principal import Principal, resolve_principal


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_principal(request: Request) -> Principal:
    admin_token: str = request.app.state.admin_token
    return await resolve_principal(request, admin_token)


async def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not principal.is_admin:
        raise Forbidden("this operation needs the admin token")
    return principal


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(require_admin)]
