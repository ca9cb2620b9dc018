"""Every service: liveness, readiness (with the failing check named, nothing else), JWKS, metadata."""

from __future__ import annotations

from pathlib import Path

import httpx

from authserver.app import create_app as create_authserver
from authserver.settings import AuthSettings
from common.keys import PRIVATE_MEMBERS
from ehr.app import create_app as create_ehr
from ehr.settings import EhrSettings
from fhirserver.app import create_app as create_fhirserver
from fhirserver.settings import FhirSettings
from tests.integration.apps import serving

AUTH = "https://auth.test"
FHIR = "https://fhir.test"
EHR = "https://ehr.test"


def _auth(tmp_path: Path, db: str) -> AuthSettings:
    return AuthSettings(data_dir=tmp_path, database_url=db, public_url=AUTH, fhir_base_url=f"{FHIR}/fhir")


async def test_authserver_is_live_ready_and_publishes_public_keys_only(tmp_path: Path, database_url: str) -> None:
    async with serving(create_authserver(_auth(tmp_path, database_url)), AUTH) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ok", "checks": {"database": "ok", "keys": "ok"}})
        jwks = await client.get("/jwks")
        assert jwks.headers["content-type"] == "application/jwk-set+json"
        keys = jwks.json()["keys"]
        assert len(keys) == 1 and keys[0]["alg"] == "ES384" and keys[0]["use"] == "sig"
        assert not PRIVATE_MEMBERS & keys[0].keys()
        assert (await client.get("/.well-known/jwks.json")).json() == jwks.json()
        meta = (await client.get("/.well-known/oauth-authorization-server")).json()
        assert meta["issuer"] == AUTH and meta["jwks_uri"] == f"{AUTH}/jwks"
        assert meta["code_challenge_methods_supported"] == ["S256"]
        assert jwks.headers["x-content-type-options"] == "nosniff"
        assert jwks.headers["strict-transport-security"].startswith("max-age=")
        assert jwks.headers["referrer-policy"] == "no-referrer"
        # No interactive docs or schema dump in a service that holds keys.
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert (await client.get(path)).status_code == 404


async def test_ehr_publishes_its_own_public_key_distinct_from_the_authservers(
    tmp_path: Path, database_url: str
) -> None:
    async with (
        serving(create_authserver(_auth(tmp_path, database_url)), AUTH) as auth,
        serving(create_ehr(EhrSettings(data_dir=tmp_path, database_url=database_url, public_url=EHR)), EHR) as ehr,
    ):
        ehr_keys = (await ehr.get("/.well-known/jwks.json")).json()["keys"]
        auth_keys = (await auth.get("/jwks")).json()["keys"]
    assert len(ehr_keys) == 1 and not PRIVATE_MEMBERS & ehr_keys[0].keys()
    assert ehr_keys[0]["kid"] != auth_keys[0]["kid"]


async def test_fhirserver_serves_an_r4_capability_statement(tmp_path: Path, database_url: str) -> None:
    settings = FhirSettings(data_dir=tmp_path, database_url=database_url, public_url=FHIR, authserver_url=AUTH)
    async with serving(create_fhirserver(settings), FHIR) as client:
        response = await client.get("/fhir/metadata")
    assert response.headers["content-type"] == "application/fhir+json"
    body = response.json()
    assert (body["resourceType"], body["fhirVersion"], body["kind"]) == ("CapabilityStatement", "4.0.1", "instance")
    assert body["implementation"]["url"] == f"{FHIR}/fhir"
    assert body["rest"][0]["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"


async def test_fhirserver_is_not_ready_until_it_can_reach_the_authserver(tmp_path: Path, database_url: str) -> None:
    settings = FhirSettings(data_dir=tmp_path, database_url=database_url, public_url=FHIR, authserver_url=AUTH)
    # The real client cannot reach https://auth.test: not ready, and the body names only the checks.
    async with serving(create_fhirserver(settings), FHIR) as client:
        unready = await client.get("/readyz")
    assert unready.status_code == 503
    assert unready.json() == {
        "status": "unavailable",
        "checks": {"database": "ok", "authserver_jwks": "failed", "revocation_feed": "failed"},
    }
    auth_app = create_authserver(_auth(tmp_path, database_url))
    async with serving(auth_app, AUTH):
        transport = httpx.ASGITransport(app=auth_app)
        async with httpx.AsyncClient(transport=transport, base_url=AUTH) as to_auth:
            fhir_app = create_fhirserver(settings, authserver_client=to_auth)
            async with serving(fhir_app, FHIR) as client:
                ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "authserver_jwks": "ok", "revocation_feed": "ok"}


async def test_readiness_fails_without_detail_when_the_database_is_down(tmp_path: Path) -> None:
    down = "postgresql://postgres@127.0.0.1:1/nowhere"
    settings = FhirSettings(data_dir=tmp_path, database_url=down, public_url=FHIR, authserver_url=AUTH)
    async with serving(create_fhirserver(settings), FHIR) as client:
        response = await client.get("/readyz")
        live = await client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "failed"
    assert "127.0.0.1" not in response.text and "postgres" not in response.text
    assert live.status_code == 200
