"""CORS on the FHIR server for browser SMART apps: only configured origins, every /fhir path,
preflights answered without a token, the actual request still guarded."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from authserver.app import create_app as create_authserver
from authserver.settings import AuthSettings
from common.clock import FrozenClock
from fhirserver.app import create_app as create_fhirserver
from fhirserver.settings import FhirSettings
from fhirserver.state import fhir_state
from mockehr.demo import seed
from mockehr.seed import generate
from tests.integration.apps import serving
from tests.integration.fhirharness import AUTH, FHIR, FHIR_ORIGIN, FhirHarness, fhir_harness

ALLOWED = "https://app.test"
OTHER_ALLOWED = "http://localhost:8000"
EXPOSED = {"location", "etag", "content-location", "last-modified"}
SYSTEM = "system/*.cruds"
PATIENTS = 3


@asynccontextmanager
async def cors_harness(tmp_path: Path, database_url: str, cors_origins: list[str]) -> AsyncIterator[FhirHarness]:
    """`fhir_harness` with `cors_origins` set on the FHIR server."""
    clock = FrozenClock(time.time())
    auth_settings = AuthSettings(data_dir=tmp_path, database_url=database_url, public_url=AUTH, fhir_base_url=FHIR)
    fhir_settings = FhirSettings(
        data_dir=tmp_path,
        database_url=database_url,
        public_url=FHIR_ORIGIN,
        authserver_url=AUTH,
        cors_origins=cors_origins,
    )
    auth_app = create_authserver(auth_settings, clock=clock)
    async with serving(auth_app, AUTH):
        transport = httpx.ASGITransport(app=auth_app)
        async with httpx.AsyncClient(transport=transport, base_url=AUTH) as to_auth:
            fhir_app = create_fhirserver(fhir_settings, clock=clock, authserver_client=to_auth)
            async with serving(fhir_app, FHIR_ORIGIN) as client:
                await seed(fhir_app.state.runtime.sessions, tmp_path, patients=PATIENTS)
                await fhir_state(fhir_app).revocations.poll_once()
                yield FhirHarness(client, auth_app, fhir_app, clock, generate(PATIENTS))


@pytest.fixture
async def fhir(tmp_path: Path, database_url: str) -> AsyncIterator[FhirHarness]:
    async with cors_harness(tmp_path, database_url, [ALLOWED, OTHER_ALLOWED]) as harness:
        yield harness


def _cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def _list(value: str) -> set[str]:
    return {v.strip().lower() for v in value.split(",") if v.strip()}


def _assert_granted(response: httpx.Response, origin: str = ALLOWED) -> None:
    assert response.headers["access-control-allow-origin"] == origin
    assert "origin" in _list(response.headers["vary"])
    assert _list(response.headers["access-control-expose-headers"]) == EXPOSED
    assert "access-control-allow-credentials" not in response.headers


def _preflight_headers(origin: str, method: str = "GET", headers: str = "authorization") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


async def _observation_of(fhir: FhirHarness, token: str) -> str:
    bundle = (await fhir.get("Observation", token, patient=fhir.patient_of(0), _count=1)).json()
    return str(bundle["entry"][0]["resource"]["id"])


# --- actual requests -----------------------------------------------------------------------------


async def test_an_allowed_origin_reading_with_a_token_gets_its_origin_vary_and_the_exposed_headers(
    fhir: FhirHarness,
) -> None:
    token = await fhir.token(SYSTEM)
    obs_id = await _observation_of(fhir, token)
    for origin in (ALLOWED, OTHER_ALLOWED):
        response = await fhir.client.get(
            f"/fhir/Observation/{obs_id}", headers={"Authorization": f"Bearer {token}", "Origin": origin}
        )
        assert response.status_code == 200 and "etag" in response.headers
        _assert_granted(response, origin)
    search = await fhir.client.get(
        "/fhir/Patient", params={"_count": 1}, headers={"Authorization": f"Bearer {token}", "Origin": ALLOWED}
    )
    assert search.status_code == 200
    _assert_granted(search)


async def test_an_allowed_origin_creating_with_a_token_can_read_location_and_etag(fhir: FhirHarness) -> None:
    patient = fhir.patient_of(0)
    token = await fhir.token("patient/*.cruds", patient=patient)
    response = await fhir.client.post(
        "/fhir/Observation",
        json={
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "cors"},
            "subject": {"reference": f"Patient/{patient}"},
        },
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json", "Origin": ALLOWED},
    )
    assert response.status_code == 201
    assert response.headers["location"].startswith(f"{FHIR}/Observation/") and "etag" in response.headers
    _assert_granted(response)


async def test_metadata_and_smart_configuration_are_granted_without_a_token(fhir: FhirHarness) -> None:
    for path in ("/fhir/metadata", "/fhir/.well-known/smart-configuration"):
        response = await fhir.client.get(path, headers={"Origin": ALLOWED})
        assert response.status_code == 200, path
        _assert_granted(response)


async def test_the_guard_still_refuses_the_actual_request_without_a_token(fhir: FhirHarness) -> None:
    for method, path in (("GET", "/fhir/Patient"), ("POST", "/fhir/Observation"), ("DELETE", "/fhir/Patient/x")):
        response = await fhir.client.request(
            method, path, headers={"Origin": ALLOWED, "Content-Type": "application/fhir+json"}, content=b"{}"
        )
        assert response.status_code == 401, (method, path)
        assert response.content == b""
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        # The browser app may see that it must (re)authorize, but nothing more.
        assert response.headers["access-control-allow-origin"] == ALLOWED


async def test_an_origin_that_is_not_configured_gets_no_cors_headers(fhir: FhirHarness) -> None:
    token = await fhir.token(SYSTEM)
    for origin in (
        "https://evil.test",
        "https://app.test.evil.test",
        "null",
        "https://app.test:8443",
        "http://app.test",
    ):
        response = await fhir.client.get(
            "/fhir/Patient", params={"_count": 1}, headers={"Authorization": f"Bearer {token}", "Origin": origin}
        )
        assert response.status_code == 200
        assert _cors_headers(response) == {}, origin
        assert "origin" in _list(response.headers["vary"])
        metadata = await fhir.client.get("/fhir/metadata", headers={"Origin": origin})
        assert _cors_headers(metadata) == {}, origin


# --- preflights ----------------------------------------------------------------------------------


async def test_a_preflight_from_an_allowed_origin_is_answered_with_204_without_a_token(fhir: FhirHarness) -> None:
    requested = "authorization, content-type, accept, if-match, if-none-exist, prefer, x-evil"
    for method, path in (
        ("GET", "/fhir/Patient"),
        ("PUT", "/fhir/Observation/abc"),
        ("POST", "/fhir"),
        ("DELETE", "/fhir/Observation/abc"),
        ("POST", "/fhir/Observation/_search"),
        ("GET", "/fhir/metadata"),
        ("GET", "/fhir/.well-known/smart-configuration"),
    ):
        response = await fhir.client.options(path, headers=_preflight_headers(ALLOWED, method, requested))
        assert response.status_code == 204, path
        assert response.content == b""
        assert response.headers["access-control-allow-origin"] == ALLOWED
        assert _list(response.headers["access-control-allow-methods"]) == {"get", "post", "put", "delete", "options"}
        assert _list(response.headers["access-control-allow-headers"]) == {
            "authorization",
            "content-type",
            "accept",
            "if-match",
            "if-none-exist",
            "prefer",
        }
        assert int(response.headers["access-control-max-age"]) > 0
        assert "origin" in _list(response.headers["vary"])
        assert "access-control-allow-credentials" not in response.headers
        assert "www-authenticate" not in response.headers


async def test_a_preflight_from_an_origin_that_is_not_configured_gets_no_cors_headers_and_no_401(
    fhir: FhirHarness,
) -> None:
    for origin in ("https://evil.test", "null", "https://app.test:8443"):
        for path in ("/fhir/Patient", "/fhir/metadata"):
            response = await fhir.client.options(path, headers=_preflight_headers(origin))
            assert _cors_headers(response) == {}, (origin, path)
            assert response.status_code not in (204, 401)
            assert "www-authenticate" not in response.headers


async def test_cors_never_applies_outside_fhir(fhir: FhirHarness) -> None:
    response = await fhir.client.get("/healthz", headers={"Origin": ALLOWED})
    assert _cors_headers(response) == {}
    preflight = await fhir.client.options("/healthz", headers=_preflight_headers(ALLOWED))
    assert _cors_headers(preflight) == {} and preflight.status_code != 204


# --- not configured ------------------------------------------------------------------------------


async def test_without_configured_origins_an_origin_of_no_registered_app_gets_no_cors(
    tmp_path: Path, database_url: str
) -> None:
    async with fhir_harness(tmp_path, database_url, patients=PATIENTS) as fhir:
        token = await fhir.token(SYSTEM)
        for path, headers in (
            ("/fhir/Patient", {"Authorization": f"Bearer {token}", "Origin": ALLOWED}),
            ("/fhir/metadata", {"Origin": ALLOWED}),
        ):
            response = await fhir.client.get(path, headers=headers)
            assert response.status_code == 200
            assert _cors_headers(response) == {}
            # Registered apps' origins would get CORS: the answer depends on Origin (Fetch standard).
            assert "origin" in _list(response.headers["vary"])
        preflight = await fhir.client.options("/fhir/Patient", headers=_preflight_headers(ALLOWED))
        assert _cors_headers(preflight) == {}
        assert preflight.status_code == 405
        unauthenticated = await fhir.client.get("/fhir/Patient", headers={"Origin": ALLOWED})
        assert unauthenticated.status_code == 401 and _cors_headers(unauthenticated) == {}


# --- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin", ["*", "https://app.test/", "https://app.test/path", "app.test", "https://u@app.test", "null"]
)
def test_a_cors_origin_setting_that_is_not_an_origin_is_refused(tmp_path: Path, origin: str) -> None:
    with pytest.raises(ValidationError):
        FhirSettings(data_dir=tmp_path, cors_origins=[origin])


def test_cors_origins_are_read_from_the_environment_as_a_json_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert FhirSettings(data_dir=tmp_path).cors_origins == []
    monkeypatch.setenv("MOCKEHR_FHIR_CORS_ORIGINS", f'["{ALLOWED}", "{OTHER_ALLOWED}"]')
    assert FhirSettings(data_dir=tmp_path).cors_origins == [ALLOWED, OTHER_ALLOWED]
