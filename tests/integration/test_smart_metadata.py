"""Discovery (RFC 8414, OpenID Connect Discovery, SMART configuration) and CORS limited to the
configured origins on the endpoints browser apps call — never on /authorize or /login."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from authserver.settings import AuthSettings
from fhirserver.capability import smart_configuration
from fhirserver.settings import FhirSettings
from tests.integration.authharness import AUTH, FHIR
from tests.integration.smartharness import Smart, pkce, running_smart

ALLOWED = "https://app.test"


@pytest.fixture
def smart_options() -> dict[str, Any]:
    return {"cors_origins": [ALLOWED, "http://localhost:8000"]}


async def test_the_oauth_metadata_announces_the_authorization_code_flow_with_s256_only(smart: Smart) -> None:
    meta = (await smart.browser.get("/.well-known/oauth-authorization-server")).json()
    assert meta["issuer"] == AUTH
    assert meta["authorization_endpoint"] == f"{AUTH}/authorize"
    assert meta["response_types_supported"] == ["code"]
    assert {"authorization_code", "refresh_token", "client_credentials"} <= set(meta["grant_types_supported"])
    assert not {"implicit", "password"} & set(meta["grant_types_supported"])
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True


async def test_the_openid_configuration_describes_the_id_tokens_really_issued(smart: Smart) -> None:
    conf = (await smart.browser.get("/.well-known/openid-configuration")).json()
    assert conf["issuer"] == AUTH
    assert (conf["authorization_endpoint"], conf["token_endpoint"], conf["jwks_uri"]) == (
        f"{AUTH}/authorize",
        f"{AUTH}/token",
        f"{AUTH}/jwks",
    )
    assert conf["response_types_supported"] == ["code"]
    assert conf["subject_types_supported"] == ["public"]
    assert conf["id_token_signing_alg_values_supported"] == ["ES384"]
    assert {"openid", "fhirUser", "launch", "launch/patient", "offline_access"} <= set(conf["scopes_supported"])
    assert {"fhirUser", "nonce", "sub", "aud"} <= set(conf["claims_supported"])


def test_the_smart_configuration_lists_the_authorize_endpoint_and_only_real_capabilities() -> None:
    conf = smart_configuration(FhirSettings(authserver_url=AUTH, fhir_base_url=FHIR))
    assert conf["authorization_endpoint"] == f"{AUTH}/authorize"
    assert conf["issuer"] == AUTH and conf["code_challenge_methods_supported"] == ["S256"]
    assert conf["response_types_supported"] == ["code"]
    assert {"authorization_code", "refresh_token"} <= set(conf["grant_types_supported"])
    assert set(conf["capabilities"]) == {
        "launch-ehr",
        "launch-standalone",
        "authorize-post",
        "client-public",
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "sso-openid-connect",
        "context-banner",
        "context-style",
        "context-ehr-patient",
        "context-ehr-encounter",
        "context-standalone-patient",
        "permission-offline",
        "permission-online",
        "permission-patient",
        "permission-user",
        "permission-v1",
        "permission-v2",
    }
    assert "context-standalone-encounter" not in conf["capabilities"]  # not implemented


async def test_the_smart_style_document_is_served_where_smart_style_url_points(smart: Smart) -> None:
    style = await smart.browser.get("/smart-style.json")
    assert style.status_code == 200 and "color_background" in style.json()


# --- CORS ----------------------------------------------------------------------------------------


async def test_cors_is_granted_to_configured_origins_on_token_jwks_metadata_and_style(smart: Smart) -> None:
    for path in (
        "/jwks",
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
        "/smart-style.json",
    ):
        response = await smart.browser.get(path, headers={"Origin": ALLOWED})
        assert response.headers["access-control-allow-origin"] == ALLOWED, path
        assert "Origin" in response.headers["vary"]
        assert "access-control-allow-credentials" not in response.headers
    token = await smart.browser.post("/token", data={"grant_type": "password"}, headers={"Origin": ALLOWED})
    assert token.status_code == 400 and token.headers["access-control-allow-origin"] == ALLOWED


async def test_a_preflight_from_a_configured_origin_is_answered_for_the_token_endpoint(smart: Smart) -> None:
    response = await smart.browser.options(
        "/token",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-evil",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert response.headers["access-control-allow-methods"] == "POST"
    assert response.headers["access-control-allow-headers"] == "content-type"


async def test_an_origin_that_is_not_configured_gets_no_cors_headers(smart: Smart) -> None:
    for origin in (
        "https://evil.test",
        "https://app.test.evil.test",
        "null",
        "https://app.test:8443",
        "http://app.test",
    ):
        response = await smart.browser.get("/jwks", headers={"Origin": origin})
        assert "access-control-allow-origin" not in response.headers, origin
        preflight = await smart.browser.options(
            "/token", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in preflight.headers
        assert preflight.status_code != 204


async def test_authorize_login_introspect_revoke_and_launch_never_send_cors_headers(smart: Smart) -> None:
    _, challenge = pkce()
    responses = [
        await smart.browser.get("/authorize", params=smart.authorize_params(challenge), headers={"Origin": ALLOWED}),
        await smart.browser.post("/authorize", data=smart.authorize_params(challenge), headers={"Origin": ALLOWED}),
        await smart.browser.get("/login", headers={"Origin": ALLOWED}),
        await smart.browser.post("/login", data={}, headers={"Origin": ALLOWED}),
        await smart.browser.post("/introspect", data={"token": "x"}, headers={"Origin": ALLOWED}),
        await smart.browser.post(
            "/revoke", data={"token": "x", "client_id": "app-public"}, headers={"Origin": ALLOWED}
        ),
        await smart.browser.post("/launch", json={}, headers={"Origin": ALLOWED}),
    ]
    for path in ("/authorize", "/login", "/introspect", "/launch"):
        responses.append(
            await smart.browser.options(path, headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"})
        )
    for response in responses:
        assert not any(h.startswith("access-control-") for h in response.headers), response.request.url


async def test_without_configured_origins_only_registered_apps_origins_get_cors(
    tmp_path: Path, database_url: str
) -> None:
    async with running_smart(tmp_path, database_url) as smart:
        # https://app.test is the origin of the registered app's redirect URI; the others are no app's.
        for origin, granted in (
            (ALLOWED, True),
            ("http://localhost:8000", False),
            ("https://unregistered.test", False),
        ):
            for path in ("/jwks", "/.well-known/openid-configuration"):
                response = await smart.browser.get(path, headers={"Origin": origin})
                assert response.headers.get("access-control-allow-origin") == (origin if granted else None), origin
            preflight = await smart.browser.options(
                "/token", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
            )
            assert preflight.headers.get("access-control-allow-origin") == (origin if granted else None), origin


@pytest.mark.parametrize(
    "origin", ["*", "https://app.test/", "https://app.test/path", "app.test", "https://u@app.test"]
)
def test_a_cors_origin_setting_that_is_not_an_origin_is_refused(tmp_path: Path, origin: str) -> None:
    with pytest.raises(ValidationError):
        AuthSettings(data_dir=tmp_path, cors_origins=[origin])
