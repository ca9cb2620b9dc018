"""The FHIR server in-process behind its guard, next to an in-process authorization server.

Tokens are minted with the authorization server's own signing key (what /token does), so the
guard is tested against real signatures, the real JWKS and the real revocation feed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from authserver import tokens
from authserver.app import create_app as create_authserver
from authserver.settings import AuthSettings
from authserver.tokens import Grant
from common.clock import FrozenClock
from common.jose import new_jti, sign_jwt
from fhirserver.app import create_app as create_fhirserver
from fhirserver.settings import FhirSettings
from fhirserver.state import fhir_state
from mockehr.demo import seed
from mockehr.seed import SeedResult, generate
from tests.integration.apps import serving

AUTH = "https://auth.test"
FHIR_ORIGIN = "https://fhir.test"
FHIR = f"{FHIR_ORIGIN}/fhir"


@dataclass
class FhirHarness:
    client: httpx.AsyncClient
    auth_app: Any
    fhir_app: Any
    clock: FrozenClock
    data: SeedResult

    async def token(
        self,
        scope: str,
        *,
        patient: str | None = None,
        user: str | None = None,
        client_id: str = "test-client",
        aud: str = FHIR,
        typ: str = "at+jwt",
        lifetime: int = 300,
        act: str | None = None,
        record: bool = False,
    ) -> str:
        """A token as the authorization server would issue it (optionally recorded, so it can be revoked)."""
        runtime = self.auth_app.state.runtime
        now = int(self.clock())
        if record:
            grant = Grant(
                client_id=client_id,
                sub=user or client_id,
                scope=scope,
                audience=aud,
                lifetime=lifetime,
                grant="test",
                patient=patient,
                fhir_user=f"{FHIR}/{user}" if user else None,
                actor_client_id=act,
            )
            async with runtime.sessions() as session, session.begin():
                return (await tokens.issue(session, runtime.signing_keys, AUTH, grant, now)).token
        claims: dict[str, Any] = {
            "iss": AUTH,
            "sub": user or client_id,
            "aud": aud,
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "exp": now + lifetime,
            "jti": new_jti(),
        }
        if patient:
            claims["patient"] = patient
        if user:
            claims["fhirUser"] = f"{FHIR}/{user}"
        if act:
            claims["act"] = {"sub": act}
        return sign_jwt(claims, await runtime.signing_keys.signer(), typ=typ)

    async def get(self, path: str, token: str | None, **params: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.client.get(f"/fhir/{path}", params=params, headers=headers)

    def patient_of(self, practitioner: int, index: int = 0) -> str:
        return self.data.practitioners[practitioner].patient_ids[index]

    def practitioner(self, index: int) -> str:
        return f"Practitioner/{self.data.practitioners[index].id}"


PATIENTS = 9  # seeded by default: enough for every practitioner to have several


@asynccontextmanager
async def fhir_harness(
    tmp_path: Path, database_url: str, patients: int = PATIENTS, **fhir_options: Any
) -> AsyncIterator[FhirHarness]:
    """`fhir_options`: further FhirSettings fields (e.g. limits) for the FHIR server."""
    clock = FrozenClock(time.time())
    auth_settings = AuthSettings(data_dir=tmp_path, database_url=database_url, public_url=AUTH, fhir_base_url=FHIR)
    fhir_settings = FhirSettings(
        data_dir=tmp_path, database_url=database_url, public_url=FHIR_ORIGIN, authserver_url=AUTH, **fhir_options
    )
    auth_app = create_authserver(auth_settings, clock=clock)
    async with serving(auth_app, AUTH):
        transport = httpx.ASGITransport(app=auth_app)
        async with httpx.AsyncClient(transport=transport, base_url=AUTH) as to_auth:
            fhir_app = create_fhirserver(fhir_settings, clock=clock, authserver_client=to_auth)
            async with serving(fhir_app, FHIR_ORIGIN) as client:
                await seed(fhir_app.state.runtime.sessions, tmp_path, patients=patients)
                await fhir_state(fhir_app).revocations.poll_once()
                yield FhirHarness(client, auth_app, fhir_app, clock, generate(patients))
