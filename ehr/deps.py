"""FastAPI dependency aliases of the EHR: its typed state (ehr/state.py) and who is calling."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from common.runtime import Runtime
from ehr.authserver_admin import AuthserverAdmin
from ehr.errors import Forbidden
from ehr.principal import Principal, resolve_principal
from ehr.registry import Registry
from ehr.state import CdsParts, EhrState, ehr_state
from ehr.suggestions import CardActions


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_state(request: Request) -> EhrState:
    return ehr_state(request.app)


def get_parts(state: Annotated[EhrState, Depends(get_state)]) -> CdsParts:
    return state.parts()


def get_registry(parts: Annotated[CdsParts, Depends(get_parts)]) -> Registry:
    return parts.registry


def get_card_actions(parts: Annotated[CdsParts, Depends(get_parts)]) -> CardActions:
    return parts.card_actions


def get_authserver_admin(parts: Annotated[CdsParts, Depends(get_parts)]) -> AuthserverAdmin:
    return parts.authserver_admin


async def get_principal(request: Request, state: Annotated[EhrState, Depends(get_state)]) -> Principal:
    return await resolve_principal(request, state.admin_token, state.session_resolver)


async def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not principal.is_admin:
        raise Forbidden("this operation needs the admin token")
    return principal


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
StateDep = Annotated[EhrState, Depends(get_state)]
PartsDep = Annotated[CdsParts, Depends(get_parts)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
CardActionsDep = Annotated[CardActions, Depends(get_card_actions)]
AuthserverAdminDep = Annotated[AuthserverAdmin, Depends(get_authserver_admin)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(require_admin)]
