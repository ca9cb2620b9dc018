"""The authorization server's typed state and the FastAPI dependencies routes reach it through.

`AuthState` is built once by the lifespan (app.py) and kept at `app.state.auth`; a route asks for
what it needs (`SettingsDep`, `RuntimeDep`, `StateDep`) instead of reading `app.state` or
capturing settings in a closure, so every handler is a module-level function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Protocol

from fastapi import Depends, Request

from authserver.settings import AuthSettings
from common.runtime import Runtime

if TYPE_CHECKING:  # logic modules; imported by the lifespan, never at this layer's import time
    from authserver.client_auth import ClientAuthenticator
    from authserver.maintenance import Housekeeper
    from authserver.patients import PatientDirectory
    from authserver.sessions import CsrfSigner
    from authserver.users import User


class PatientReach(Protocol):
    """May this user see this patient? (authserver/reach.py asks the FHIR server.)"""

    async def can_see(self, user: User, patient_id: str) -> bool: ...


@dataclass
class AuthState:
    settings: AuthSettings
    runtime: Runtime
    client_auth: ClientAuthenticator
    reach: PatientReach
    patients: PatientDirectory  # the patient picker's list (authorize.py)
    csrf: CsrfSigner
    housekeeper: Housekeeper
    admin_secret: str


def get_state(request: Request) -> AuthState:
    state: AuthState = request.app.state.auth
    return state


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_settings(request: Request) -> AuthSettings:
    settings: AuthSettings = request.app.state.settings
    return settings


StateDep = Annotated[AuthState, Depends(get_state)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[AuthSettings, Depends(get_settings)]
