"""The example service's typed state: one object on `app.state.cds` instead of loose attributes.

Its memory of issued cards and of feedback exists from `create_app` on; its connections (the
outbound HTTP client, the CDS Clients' keys, the replay store) are opened in the lifespan.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from fastapi import FastAPI

from common.clock import Clock
from common.replay import ReplayStore
from examples.cds_service.auth import TrustedClients
from examples.cds_service.feedback import FeedbackLog, IssuedCardStore
from examples.cds_service.settings import CdsSettings


@dataclass
class Connections:
    http: httpx.AsyncClient
    trusted: TrustedClients
    replay: ReplayStore


@dataclass
class CdsState:
    settings: CdsSettings
    clock: Clock
    issued: IssuedCardStore  # memory; Redis (RedisIssuedCards) from the lifespan when configured
    feedback: FeedbackLog
    http_client: httpx.AsyncClient | None = None  # tests: replaces the outbound client
    connections: Connections | None = None

    def connected(self) -> Connections:
        if self.connections is None:  # only before the lifespan started or after it ended
            raise RuntimeError("the service is not started")
        return self.connections


def cds_state(app: FastAPI) -> CdsState:
    state: CdsState = app.state.cds
    return state
