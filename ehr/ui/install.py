"""Plugging the UI into the EHR app: its routers and its static files."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from ehr.ui import admin, launcher, pages, signin, signing
from ehr.ui.web import STATIC


class _Static(StaticFiles):
    """The UI's scripts and stylesheet, never content-sniffed into something else."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def install_ui(app: FastAPI) -> None:
    for module in (signin, pages, launcher, signing, admin):
        app.include_router(module.router)
    app.mount("/static", _Static(directory=STATIC), name="static")
