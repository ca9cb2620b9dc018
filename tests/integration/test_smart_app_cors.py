"""CORS without configuration: the origins of registered, active SMART apps (their redirect URIs
and launch URL) get CORS from the authorization server and the FHIR server, read from the
registry at request time — registering is enough, disabling withdraws the origin at once — and
any other origin gets no CORS header from any service (authserver, FHIR server, EHR)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text

from authserver import clients
from authserver.clients import Client
from tests.integration.ehrharness import EhrHarness
from tests.integration.fhirharness import AUTH

APP = "js-app"
APP_ORIGIN = "https://app.example"
LAUNCH_ORIGIN = "https://launch.example:8443"
LOOK_ALIKES = (
    "https://app.example.evil",
    "https://app.example:444",
    "http://app.example",
    "https://evil.app.example",
    "null",
    "https://APP.example",
    "https://app.example:443",
    "https://app.example/",
)


@pytest.fixture
async def auth(h: EhrHarness) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=h.fhir.auth_app)
    async with httpx.AsyncClient(transport=transport, base_url=AUTH) as client:
        yield client


async def _register(h: EhrHarness, *, active: bool = True, redirect: str = f"{APP_ORIGIN}/callback") -> None:
    app = Client(
        APP,
        "smart-app",
        "A JS app",
        "none",
        "launch launch/patient openid fhirUser patient/*.rs",
        False,
        active,
        redirect_uris=(redirect,),
        launch_url=f"{LAUNCH_ORIGIN}/launch.html",
    )
    async with h.fhir.auth_app.state.runtime.sessions() as session, session.begin():
        await clients.register(session, app)


async def _set_active(h: EhrHarness, active: bool) -> None:
    async with h.fhir.auth_app.state.runtime.sessions() as session, session.begin():
        assert await clients.set_active(session, APP, active)


def _cors(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


async def _everywhere(h: EhrHarness, auth: httpx.AsyncClient, origin: str) -> list[httpx.Response]:
    """What a browser app at `origin` fetches from each service (no token for the FHIR data)."""
    headers = {"Origin": origin}
    token = await h.fhir.token("system/*.rs")
    return [
        await auth.post("/token", data={"grant_type": "refresh_token", "refresh_token": "x"}, headers=headers),
        await auth.get("/jwks", headers=headers),
        await auth.get("/.well-known/openid-configuration", headers=headers),
        await h.fhir.client.get("/fhir/metadata", headers=headers),
        await h.fhir.client.get("/fhir/.well-known/smart-configuration", headers=headers),
        await h.fhir.client.get(
            "/fhir/Patient", params={"_count": 1}, headers={**headers, "Authorization": f"Bearer {token}"}
        ),
        await h.ehr.get("/.well-known/jwks.json", headers=headers),
    ]


def _granted(responses: list[httpx.Response], origin: str) -> list[bool]:
    """For each response: CORS granted to exactly `origin` (never `*`, never with credentials)."""
    out = []
    for response in responses:
        assert response.status_code < 500, response.text
        assert "access-control-allow-credentials" not in response.headers
        allowed = response.headers.get("access-control-allow-origin")
        assert allowed in (None, origin), allowed
        out.append(allowed == origin)
    return out


ALL_BUT_THE_EHR = [True] * 6 + [False]


async def test_a_registered_apps_origins_get_cors_from_both_services_with_no_configuration(
    h: EhrHarness, auth: httpx.AsyncClient
) -> None:
    for origin in (APP_ORIGIN, LAUNCH_ORIGIN):
        assert _granted(await _everywhere(h, auth, origin), origin) == [False] * 7
    await _register(h)
    for origin in (APP_ORIGIN, LAUNCH_ORIGIN):
        assert _granted(await _everywhere(h, auth, origin), origin) == ALL_BUT_THE_EHR, origin


async def test_disabling_the_app_withdraws_its_origin_from_the_next_request(
    h: EhrHarness, auth: httpx.AsyncClient
) -> None:
    await _register(h)
    assert _granted(await _everywhere(h, auth, APP_ORIGIN), APP_ORIGIN) == ALL_BUT_THE_EHR
    await _set_active(h, False)
    assert _granted(await _everywhere(h, auth, APP_ORIGIN), APP_ORIGIN) == [False] * 7
    await _set_active(h, True)
    assert _granted(await _everywhere(h, auth, APP_ORIGIN), APP_ORIGIN) == ALL_BUT_THE_EHR
    # Registering it again with another redirect URI withdraws the old origin.
    await _register(h, redirect="https://moved.example/callback")
    assert _granted(await _everywhere(h, auth, APP_ORIGIN), APP_ORIGIN) == [False] * 7
    assert _granted(await _everywhere(h, auth, "https://moved.example"), "https://moved.example") == ALL_BUT_THE_EHR


async def test_an_app_registered_disabled_grants_no_origin(h: EhrHarness, auth: httpx.AsyncClient) -> None:
    await _register(h, active=False)
    assert _granted(await _everywhere(h, auth, APP_ORIGIN), APP_ORIGIN) == [False] * 7


async def test_unregistered_null_and_look_alike_origins_get_no_cors_header_from_any_service(
    h: EhrHarness, auth: httpx.AsyncClient
) -> None:
    await _register(h)
    for origin in LOOK_ALIKES:
        for response in await _everywhere(h, auth, origin):
            assert response.status_code < 500, response.text
            assert _cors(response) == {}, (origin, str(response.request.url))
        for client, path in ((auth, "/token"), (h.fhir.client, "/fhir/Patient")):
            preflight = await client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
            assert _cors(preflight) == {}, (origin, path)


async def test_a_preflight_from_a_registered_origin_is_answered_by_both_services(
    h: EhrHarness, auth: httpx.AsyncClient
) -> None:
    await _register(h)
    headers = {
        "Origin": APP_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, authorization, x-evil",
    }
    for client, path, methods in (
        (auth, "/token", {"post"}),
        (h.fhir.client, "/fhir/Observation", {"get", "post", "put", "delete", "options"}),
    ):
        response = await client.options(path, headers=headers)
        assert response.status_code == 204, path
        assert response.headers["access-control-allow-origin"] == APP_ORIGIN
        assert {m.strip().lower() for m in response.headers["access-control-allow-methods"].split(",")} == methods
        allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
        assert allowed == {"content-type", "authorization"}
        assert int(response.headers["access-control-max-age"]) > 0
        assert "access-control-allow-credentials" not in response.headers
    # Paths outside CORS never answer, even for a registered origin.
    for path in ("/authorize", "/introspect", "/launch"):
        assert _cors(await auth.options(path, headers=headers)) == {}, path


async def test_when_the_origins_cannot_be_read_no_cors_is_granted_and_nothing_fails(
    h: EhrHarness, auth: httpx.AsyncClient
) -> None:
    await _register(h)
    # As for a FHIR server on a database of its own: the table is not there.
    async with h.fhir.fhir_app.state.runtime.engine.begin() as connection:
        await connection.execute(text("DROP TABLE smart_app_origins"))
    responses = await _everywhere(h, auth, APP_ORIGIN)
    assert [r.status_code for r in responses][1:] == [200] * 6
    assert _granted(responses, APP_ORIGIN) == [False] * 7
