"""The EHR's typed state: one object on `app.state.ehr` instead of loose attributes.

What exists from `create_app` on (settings, the admin token, the API's session resolver, the UI's
configuration) is set at once; the CDS Hooks client's parts need the runtime (database, keys,
HTTP client) and are built in the lifespan (ehr/cds_wiring.py); the UI's state is built on first
use (ehr/ui/state.py), when the runtime exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import FastAPI

from ehr.authserver_admin import AuthserverAdmin
from ehr.invoke import CdsEngine
from ehr.principal import SessionResolver
from ehr.registry import Registry
from ehr.settings import EhrSettings
from ehr.suggestions import CardActions

if TYPE_CHECKING:  # the UI is a layer above: it reads this state, this state only holds its object
    from ehr.ui.config import UiConfig
    from ehr.ui.state import UiState


@dataclass
class CdsParts:
    """The CDS Hooks client, built in the lifespan."""

    engine: CdsEngine
    registry: Registry
    card_actions: CardActions
    authserver_admin: AuthserverAdmin


@dataclass
class EhrState:
    settings: EhrSettings
    admin_token: str
    ui_config: UiConfig
    # The UI's session resolver for the API (ehr/principal.py); None: the admin token only.
    session_resolver: SessionResolver | None = None
    cds: CdsParts | None = None
    ui: UiState | None = None

    def parts(self) -> CdsParts:
        if self.cds is None:  # only before the lifespan started or after it ended
            raise RuntimeError("the EHR is not started")
        return self.cds


def ehr_state(app: FastAPI) -> EhrState:
    state: EhrState = app.state.ehr
    return state
