"""EHR application factory.

Run alone with `uvicorn --factory ehr.app:create_app` (settings from MOCKEHR_EHR_*).
"""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from common.app import service_app
from common.clock import Clock, system_clock
from common.settings import load_settings
from ehr import api, wellknown
from ehr.api_errors import install_error_handlers
from ehr.cds_wiring import CdsWiring
from ehr.settings import EhrSettings
from ehr.state import EhrState
from ehr.ui.config import UiConfig
from ehr.ui.install import install_ui
from ehr.ui.state import resolve_session


def create_app(
    settings: EhrSettings | None = None,
    *,
    clock: Clock = system_clock,
    transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    settings = settings or load_settings(EhrSettings)
    state = EhrState(
        settings=settings,
        admin_token=settings.admin_secret(),
        ui_config=UiConfig.of(settings),
        session_resolver=resolve_session,  # a UI session may call the API too (ehr/principal.py)
    )
    # The CDS Hooks client: engine, registry and card actions, built in the lifespan.
    cds = CdsWiring(state, clock=clock, transport=transport)
    app = service_app(
        settings, title="mockehr EHR", signing=True, clock=clock, on_start=cds.on_start, on_stop=cds.on_stop
    )
    app.state.ehr = state
    install_error_handlers(app)
    for router in (*api.ROUTERS, wellknown.router):
        app.include_router(router)
    install_ui(app)  # the web UI (ehr/ui): its pages and static files
    return app
