"""Plugging the UI into the EHR app: its routers, its static files, and the API's session resolver."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from ehr.settings import EhrSettings
from ehr.ui.admin import admin_router
from ehr.ui.config import UiConfig
from ehr.ui.launcher import launcher_router
from ehr.ui.pages import pages_router
from ehr.ui.signin import signin_router
from ehr.ui.signing import signing_router
from ehr.ui.state import resolve_session
from ehr.ui.web import STATIC


class _Static(StaticFiles):
    """The UI's scripts and stylesheet, never content-sniffed into something else."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def install_ui(app: FastAPI, settings: EhrSettings) -> None:
    app.state.ui_config = UiConfig.of(settings)
    app.state.session_resolver = resolve_session
    app.include_router(signin_router())
    app.include_router(pages_router())
    app.include_router(launcher_router())
    app.include_router(signing_router())
    app.include_router(admin_router())
    app.mount("/static", _Static(directory=STATIC), name="static")
