"""Plugging the UI into the EHR app: its routers, its static files, and the API's session resolver."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ehr.settings import EhrSettings
from ehr.ui.admin import admin_router
from ehr.ui.config import UiConfig
from ehr.ui.pages import pages_router
from ehr.ui.signin import signin_router
from ehr.ui.signing import signing_router
from ehr.ui.state import resolve_session
from ehr.ui.web import STATIC


def install_ui(app: FastAPI, settings: EhrSettings) -> None:
    app.state.ui_config = UiConfig.of(settings)
    app.state.session_resolver = resolve_session
    app.include_router(signin_router())
    app.include_router(pages_router())
    app.include_router(signing_router())
    app.include_router(admin_router())
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
