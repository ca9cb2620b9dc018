"""An authorization server in-process with registered clients and their keys, for attack tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from authserver import clients
from authserver.app import create_app
from authserver.clients import Client
from authserver.models import UserRow
from authserver.settings import AuthSettings
from authserver.users import User
from common.clock import FrozenClock
from common.jose import new_jti, sign_jwt
from common.keys import SigningKey, generate_key, public_jwk
from tests.integration.apps import serving

AUTH = "https://auth.test"
FHIR = "https://fhir.test/fhir"
TOKEN_URL = f"{AUTH}/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TT_JWT = "urn:ietf:params:oauth:token-type:jwt"
TT_ACCESS = "urn:ietf:params:oauth:token-type:access_token"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_key(alg: str = "ES384") -> SigningKey:
    key = generate_key(alg)  # type: ignore[arg-type]
    return SigningKey(key.thumbprint(), alg, key)


def jwks_of(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [public_jwk(k.key, k.kid, k.alg) for k in keys]}


@dataclass
class FakeReach:
    """Test double for the FHIR server's reach answer (the real path is covered end to end)."""

    reachable: dict[str, set[str]] = field(default_factory=dict)
    asked: list[tuple[str, str]] = field(default_factory=list)

    async def can_see(self, user: User, patient_id: str) -> bool:
        self.asked.append((user.username, patient_id))
        if user.role == "Patient":
            return user.resource_id == patient_id
        return patient_id in self.reachable.get(user.fhir_user, set())


@dataclass
class Harness:
    client: httpx.AsyncClient
    app: Any
    clock: FrozenClock
    keys: dict[str, SigningKey]
    reach: FakeReach
    admin_token: str

    def assertion(
        self, client_id: str, *, key: SigningKey | None = None, header: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        now = int(self.clock())
        body: dict[str, Any] = {
            "iss": client_id,
            "sub": client_id,
            "aud": TOKEN_URL,
            "iat": now,
            "exp": now + 120,
            "jti": new_jti(),
        }
        body.update(claims)
        return sign_jwt(
            {k: v for k, v in body.items() if v is not None},
            key or self.keys[client_id],
            typ="JWT",
            extra_header=header,
        )

    def client_auth(self, client_id: str, **kwargs: Any) -> dict[str, str]:
        return {"client_assertion_type": JWT_BEARER, "client_assertion": self.assertion(client_id, **kwargs)}

    def user_assertion(self, sub: str, *, client_id: str = "ehr", typ: str = "user+jwt", **claims: Any) -> str:
        now = int(self.clock())
        body: dict[str, Any] = {
            "iss": client_id,
            "sub": sub,
            "aud": TOKEN_URL,
            "iat": now,
            "exp": now + 30,
            "jti": new_jti(),
        }
        body.update(claims)
        return sign_jwt(body, self.keys[client_id], typ=typ)

    async def token(self, form: dict[str, str], headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.post("/token", data=form, headers=headers or {})

    async def exchange(
        self,
        *,
        sub: str = "Practitioner/dr-a",
        patient: str = "p-a1",
        scope: str = "patient/Observation.rs patient/Patient.r",
        actor: str = "ehr",
        **extra: str,
    ) -> httpx.Response:
        form = {
            "grant_type": EXCHANGE,
            "subject_token": self.user_assertion(sub, client_id=actor),
            "subject_token_type": TT_JWT,
            "cds_service": "cds-a",
            "patient": patient,
            "resource": FHIR,
            "scope": scope,
            **self.client_auth(actor),
        }
        form.update(extra)
        return await self.token(form)

    async def backend_token(self, scope: str = "system/Patient.rs") -> str:
        response = await self.token(
            {"grant_type": "client_credentials", "scope": scope, **self.client_auth("backend-1")}
        )
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])


def claims_of(token: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))  # type: ignore[no-any-return]


def header_of(token: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(token.split(".", maxsplit=1)[0] + "=="))  # type: ignore[no-any-return]


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


CLIENTS: list[tuple[Client, str]] = []


async def _register(app: Any, keys: dict[str, SigningKey]) -> None:
    runtime = app.state.runtime
    registrations = [
        Client("ehr", "ehr", "The EHR", "private_key_jwt", "", True, True, jwks=jwks_of(keys["ehr"])),
        Client(
            "ehr-2",
            "ehr",
            "A second, non-first-party EHR",
            "private_key_jwt",
            "",
            False,
            True,
            jwks=jwks_of(keys["ehr-2"]),
        ),
        Client(
            "cds-a",
            "cds-service",
            "CDS A",
            "private_key_jwt",
            "patient/Observation.rs patient/Patient.rs patient/Condition.rs",
            False,
            True,
            jwks=jwks_of(keys["cds-a"]),
        ),
        Client(
            "backend-1",
            "backend",
            "Backend 1",
            "private_key_jwt",
            "system/Patient.rs system/Observation.rs",
            False,
            True,
            jwks=jwks_of(keys["backend-1"], keys["backend-1-rsa"]),
        ),
        Client(
            "backend-2",
            "backend",
            "Backend 2",
            "private_key_jwt",
            "system/Patient.rs",
            False,
            True,
            jwks=jwks_of(keys["backend-2"]),
        ),
    ]
    async with runtime.sessions() as session, session.begin():
        for client in registrations:
            await clients.register(session, client)
        for username, ref in (("dr.a", "Practitioner/dr-a"), ("dr.b", "Practitioner/dr-b"), ("pat.a1", "Patient/p-a1")):
            session.add(
                UserRow(
                    username=username, password_hash="x", fhir_user=ref, display=username, active=True, created_at=0
                )
            )


@asynccontextmanager
async def running_authserver(
    tmp_path: Path, database_url: str, clock: FrozenClock | None = None
) -> AsyncIterator[Harness]:
    clock = clock or FrozenClock(1_800_000_000)
    keys = {name: new_key() for name in ("ehr", "ehr-2", "cds-a", "backend-1", "backend-2")}
    keys["backend-1-rsa"] = new_key("RS384")
    settings = AuthSettings(data_dir=tmp_path, database_url=database_url, public_url=AUTH, fhir_base_url=FHIR)
    app = create_app(settings, clock=clock)
    async with serving(app, AUTH) as client:
        await _register(app, keys)
        reach = FakeReach({"Practitioner/dr-a": {"p-a1", "p-a2"}, "Practitioner/dr-b": {"p-b1"}})
        app.state.auth.reach = reach
        yield Harness(client, app, clock, keys, reach, settings.admin_secret())
