"""A real third-party OAuth client — authlib's AsyncOAuth2Client with PKCE S256 — performs a SMART
standalone launch against the in-process authorization server: discovery, authorize, login by
posting the form with the CSRF token parsed from the page, the patient picker, the code exchange,
the id_token check with the server's JWKS, and a refresh with rotation."""

from __future__ import annotations

import secrets
import warnings
from typing import Any
from urllib.parse import urljoin

import httpx

from common.jose import import_public_jwks, verify_jwt
from tests.integration.authharness import AUTH, FHIR, claims_of
from tests.integration.smartharness import APP, APP_REDIRECT, PASSWORD, Smart, hidden_fields

with warnings.catch_warnings():
    # authlib 1.9 deprecates its httpx (vs httpx2) integration; its module installs an "always"
    # filter on import, so ours goes in after it.
    from authlib.deprecate import AuthlibDeprecationWarning

    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client


async def _browse(browser: httpx.AsyncClient, url: str) -> httpx.Response:
    """Follow redirects like a browser would, stopping at the first page or at the app's callback."""
    response = await browser.get(url)
    while response.status_code in (302, 303) and not response.headers["location"].startswith(APP_REDIRECT):
        response = await browser.get(urljoin(str(response.url), response.headers["location"]))
    return response


async def test_authlib_completes_a_standalone_launch_with_pkce_s256(smart: Smart) -> None:
    transport = httpx.ASGITransport(app=smart.auth.app)
    async with AsyncOAuth2Client(
        client_id=APP,
        redirect_uri=APP_REDIRECT,
        scope="launch/patient patient/Observation.rs openid fhirUser offline_access",
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
        transport=transport,
        base_url=AUTH,
    ) as app:
        discovery = (await app.request("GET", f"{AUTH}/.well-known/openid-configuration", withhold_token=True)).json()
        verifier = secrets.token_urlsafe(64)
        nonce = secrets.token_urlsafe(16)
        url, state = app.create_authorization_url(
            discovery["authorization_endpoint"], code_verifier=verifier, aud=FHIR, nonce=nonce
        )
        assert "code_challenge_method=S256" in url and "code_challenge=" in url

        # The user's browser: login page (CSRF token parsed from the form), then the picker.
        browser = smart.browser
        login_page = await _browse(browser, url)
        assert login_page.url.path == "/login"
        form = hidden_fields(login_page.text)
        signed_in = await browser.post(
            "/login", data={"username": "dr.a", "password": PASSWORD, "csrf": form["csrf"], "next": form["next"]}
        )
        picker = await _browse(browser, signed_in.headers["location"])
        assert picker.status_code == 200 and 'value="p-a1"' in picker.text
        choice = hidden_fields(picker.text)
        callback = await browser.post("/authorize/select", data={**choice, "patient": "p-a1"})
        assert callback.status_code == 303
        redirect = callback.headers["location"]
        assert redirect.startswith(APP_REDIRECT + "?")

        token: dict[str, Any] = await app.fetch_token(
            discovery["token_endpoint"], authorization_response=redirect, state=state, code_verifier=verifier
        )
        assert token["token_type"] == "Bearer" and token["patient"] == "p-a1"
        claims = claims_of(token["access_token"])
        assert (claims["aud"], claims["client_id"], claims["patient"]) == (FHIR, APP, "p-a1")

        keys = import_public_jwks((await app.request("GET", discovery["jwks_uri"], withhold_token=True)).json())
        identity = verify_jwt(
            token["id_token"],
            keys,
            algorithms=discovery["id_token_signing_alg_values_supported"],
            typ="JWT",
            issuer=discovery["issuer"],
            audience=APP,
            clock=smart.clock,
        ).claims
        assert identity["nonce"] == nonce and identity["fhirUser"] == f"{FHIR}/Practitioner/dr-a"

        first_refresh = token["refresh_token"]
        refreshed = await app.refresh_token(discovery["token_endpoint"], refresh_token=first_refresh)
        assert refreshed["refresh_token"] != first_refresh
        assert claims_of(refreshed["access_token"])["patient"] == "p-a1"
