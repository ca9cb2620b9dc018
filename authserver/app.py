"""Authorization server application factory.

Run alone with `uvicorn --factory authserver.app:create_app` (settings from MOCKEHR_AUTH_*).
The routes are module-level routers, one per concern; what they share is the typed `AuthState`
the lifespan builds (deps.py).
"""

from __future__ import annotations

from fastapi import FastAPI

from authserver import admin, authorize, error_responses, launch, login, metadata, oauth
from authserver.client_auth import ClientAuthenticator
from authserver.cors import CorsMiddleware
from authserver.deps import AuthState
from authserver.maintenance import Housekeeper
from authserver.patients import FhirPatients
from authserver.reach import FhirReach
from authserver.sessions import CsrfSigner
from authserver.settings import AuthSettings
from common.app import service_app
from common.app_origins import registered_origins
from common.clock import Clock, system_clock
from common.runtime import Runtime
from common.settings import load_settings

ROUTERS = (oauth.router, admin.router, login.router, authorize.router, launch.router, metadata.router)


def auth_state(settings: AuthSettings, runtime: Runtime, clock: Clock, admin_secret: str) -> AuthState:
    client_auth = ClientAuthenticator(
        sessions=runtime.sessions,
        token_url=f"{settings.base_url}/token",
        algorithms=tuple(settings.client_assertion_algorithms),
        clock=clock,
        leeway=settings.jwt_leeway_seconds,
        http=runtime.http,
    )
    reach = FhirReach(runtime.http, runtime.signing_keys, settings.base_url, settings.fhir_base_url, clock)
    return AuthState(
        settings=settings,
        runtime=runtime,
        client_auth=client_auth,
        reach=reach,
        patients=FhirPatients(reach),
        csrf=CsrfSigner(settings.kek()),
        housekeeper=Housekeeper(runtime.sessions, clock),
        admin_secret=admin_secret,
    )


def create_app(settings: AuthSettings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or load_settings(AuthSettings)
    admin_secret = settings.admin_secret()  # now: a production server without one does not start

    def on_start(app: FastAPI, runtime: Runtime) -> None:
        app.state.auth = auth_state(settings, runtime, clock, admin_secret)
        app.state.auth.housekeeper.start()

    async def on_stop(app: FastAPI) -> None:
        await app.state.auth.housekeeper.stop()

    app = service_app(
        settings, title="mockehr authorization server", signing=True, clock=clock, on_start=on_start, on_stop=on_stop
    )
    error_responses.install(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(CorsMiddleware, origins=settings.cors_origins, registered=registered_origins(app))
    return app
