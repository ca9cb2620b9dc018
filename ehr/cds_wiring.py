"""Wiring the CDS Hooks client into the EHR: the engine, the registry and card actions, built in
the lifespan (nothing at import) into the EHR's typed state (ehr/state.py), and closed at its end."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from common.clock import Clock
from common.http import make_http_client
from common.runtime import Runtime
from ehr.authserver_admin import AuthserverAdmin
from ehr.feedback import FeedbackSender
from ehr.hooks import HOOKS
from ehr.invoke import CdsEngine
from ehr.prefetch import check_template
from ehr.registry import Registry
from ehr.settings import EhrSettings
from ehr.state import CdsParts, EhrState
from ehr.suggestions import CardActions
from ehr.user_fhir import UserFhir


class CdsWiring:
    """Builds (on_start) and closes (on_stop) the engine and its peers in the app's lifespan.

    `transport` (tests) routes every outbound call of the EHR through one in-process transport.
    """

    def __init__(self, state: EhrState, *, clock: Clock, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.state = state
        self.settings: EhrSettings = state.settings
        self.clock = clock
        self.transport = transport
        self._owned: list[httpx.AsyncClient] = []
        self._engine: CdsEngine | None = None

    def on_start(self, app: FastAPI, runtime: Runtime) -> None:
        settings = self.settings
        if self.transport is not None:
            http = httpx.AsyncClient(transport=self.transport, timeout=settings.http_timeout_seconds)
            service_http = httpx.AsyncClient(transport=self.transport, timeout=settings.cds_total_deadline_seconds)
            self._owned += [http, service_http]
        else:
            http = runtime.http
            # Discovery and feedback go to CDS Services: the same client rules as hook calls.
            service_http = make_http_client(ca_file=settings.ca_path, timeout=settings.http_timeout_seconds)
            self._owned.append(service_http)
        admin = AuthserverAdmin(http, settings.authserver_url, self.state.admin_token, clock=self.clock)
        engine = CdsEngine(
            settings,
            http=http,
            keys=runtime.signing_keys,
            clock=self.clock,
            smart_launch_urls=admin.smart_launch_urls,
            service_http=service_http if self.transport is not None else None,
        )
        self._engine = engine
        registry = Registry(
            runtime.sessions,
            service_http,
            engine.jwt,
            admin,
            check_template=check_template,
            supported_hooks=HOOKS,
            clock=self.clock,
            ca_file=settings.ca_path,
        )
        feedback = FeedbackSender(service_http, engine.jwt, ca_file=settings.ca_path)
        user_fhir = UserFhir(http, engine.tokens, fhir_base_url=settings.fhir_base_url)
        card_actions = CardActions(runtime.sessions, user_fhir, feedback, self.clock)
        self.state.cds = CdsParts(engine=engine, registry=registry, card_actions=card_actions, authserver_admin=admin)

    async def on_stop(self, _app: FastAPI) -> None:
        if self._engine is not None:
            await self._engine.aclose()
            self._engine = None
        for client in self._owned:
            await client.aclose()
        self._owned.clear()
