"""Third-party clients against the real stack (`mockehr up` in a subprocess, real TLS, only the
printed CA trusted): authlib's OAuth 2.0 client as a SMART backend service (client_credentials
with private_key_jwt ES384) and as a public SMART app (standalone launch with PKCE S256), and the
SMART Python client `fhirclient`, which finds the OAuth endpoints only through the
CapabilityStatement's oauth-uris extension. Nothing here uses mockehr code to speak the protocols:
the point is that off-the-shelf clients interoperate."""

from __future__ import annotations

import base64
import json
import re
import secrets
import subprocess
import sys
import warnings
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from fhirclient import client as fhir_client
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRNotFoundException
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from tests.e2e.conftest import UpProcess
from tests.e2e.forms import form
from tests.e2e.test_stack import _ca_only, _ehr_signer, _token_exchange

with warnings.catch_warnings():
    # authlib 1.9 deprecates its httpx (vs httpx2) integration; its module installs an "always"
    # filter on import, so ours goes in after it.
    from authlib.deprecate import AuthlibDeprecationWarning

    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import OAuth2Client, OAuthError

pytestmark = pytest.mark.e2e

APP = "my-app"
APP_REDIRECT = "https://app.test/callback"
APP_SCOPE = "launch/patient openid fhirUser patient/*.rs offline_access"
BACKEND = "bench-backend"
BACKEND_SCOPE = "system/Patient.rs system/Observation.rs"


# --- the stack's coordinates -----------------------------------------------------------------


def _auth(up: UpProcess) -> str:
    return f"https://localhost:{up.base_port + 1}"


def _fhir(up: UpProcess) -> str:
    return f"https://localhost:{up.base_port + 2}/fhir"


def _ca_path(up: UpProcess) -> str:
    """The CA certificate file `mockehr up` printed (the only thing any client here trusts)."""
    match = re.search(r"CA certificate\s+(\S+)", up.output)
    assert match, up.output
    return match.group(1)


def _demo_users(up: UpProcess) -> list[dict[str, Any]]:
    users = json.loads((up.data_dir / "demo-users.json").read_text())
    return [{"login": login, **user} for login, user in users.items()]


def _add_client(up: UpProcess, client_id: str, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mockehr", "clients", "add", client_id, *args, "--data-dir", str(up.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"registered {client_id}" in result.stdout


def _discovery(up: UpProcess) -> dict[str, Any]:
    """SMART App Launch 2.2 discovery, as any SMART client does it: from the FHIR base."""
    response = httpx.get(f"{_fhir(up)}/.well-known/smart-configuration", verify=_ca_only(up))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _claims_of(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified (only to look at what the server put in)."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def _oauth_client(up: UpProcess, **kwargs: Any) -> OAuth2Client:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AuthlibDeprecationWarning)
        return OAuth2Client(verify=_ca_only(up), timeout=30, **kwargs)


# --- a browser, as far as HTML forms go ------------------------------------------------------


def _browse(browser: httpx.Client, url: str) -> httpx.Response:
    """GET and follow redirects like a browser, stopping at a page or at the app's callback
    (which is never requested: app.test does not exist, only its URL matters)."""
    response = browser.get(url)
    while response.is_redirect and not response.headers["location"].startswith(APP_REDIRECT):
        response = browser.get(urljoin(str(response.url), response.headers["location"]))
    return response


# --- authlib's private_key_jwt, SMART-sized ---------------------------------------------------


class FiveMinutePrivateKeyJWT(PrivateKeyJWT):  # type: ignore[misc]  # authlib ships no types
    """authlib's PrivateKeyJWT signs assertions that expire after an hour (its default
    `expires_in`, which the class does not expose); SMART Backend Services caps a client
    assertion's `exp` at five minutes ahead. Same signing function, a shorter lifetime."""

    def sign(self, auth: Any, token_endpoint: str) -> str:
        assertion: str = private_key_jwt_sign(
            auth.client_secret,
            client_id=auth.client_id,
            token_endpoint=token_endpoint,
            alg=self.alg,
            header=dict(self.headers or {}),
            expires_in=300,
        )
        return assertion


@pytest.fixture(scope="module")
def backend_key(stack: UpProcess, tmp_path_factory: pytest.TempPathFactory) -> ECKey:
    """An ES384 key pair; its public half registered for `bench-backend` with the CLI."""
    key = ECKey.generate_key("P-384", parameters={"kid": "bench-backend-1", "alg": "ES384", "use": "sig"})
    jwks = {"keys": [key.as_dict(private=False)]}
    assert "d" not in jwks["keys"][0]
    jwks_file = tmp_path_factory.mktemp("backend") / "jwks.json"
    jwks_file.write_text(json.dumps(jwks))
    scopes = [arg for s in BACKEND_SCOPE.split() for arg in ("--scope", s)]
    _add_client(stack, BACKEND, "--kind", "backend", *scopes, "--jwks-file", str(jwks_file))
    return key


def _backend_client(up: UpProcess, key: ECKey) -> OAuth2Client:
    auth = FiveMinutePrivateKeyJWT(alg="ES384", headers={"kid": "bench-backend-1", "typ": "JWT"})
    return _oauth_client(up, client_id=BACKEND, client_secret=key, token_endpoint_auth_method=auth)


# --- 1. backend services ------------------------------------------------------------------------


def test_authlib_as_a_backend_service_gets_a_system_token_with_private_key_jwt_es384_and_reads_patients(
    stack: UpProcess, backend_key: ECKey
) -> None:
    discovery = _discovery(stack)
    assert discovery["token_endpoint"] == f"{_auth(stack)}/token"
    assert "private_key_jwt" in discovery["token_endpoint_auth_methods_supported"]
    assert "ES384" in discovery["token_endpoint_auth_signing_alg_values_supported"]
    assert "client_credentials" in discovery["grant_types_supported"]

    # authlib's stock PrivateKeyJWT: a one-hour assertion, refused (SMART: exp at most 5 min ahead).
    stock = PrivateKeyJWT(discovery["token_endpoint"], alg="ES384", headers={"kid": "bench-backend-1", "typ": "JWT"})
    with (
        _oauth_client(
            stack, client_id=BACKEND, client_secret=backend_key, token_endpoint_auth_method=stock
        ) as refused_client,
        pytest.raises(OAuthError) as refused,
    ):
        refused_client.fetch_token(discovery["token_endpoint"], grant_type="client_credentials", scope=BACKEND_SCOPE)
    assert refused.value.error == "invalid_client"

    with _backend_client(stack, backend_key) as client:
        token: dict[str, Any] = client.fetch_token(
            discovery["token_endpoint"], grant_type="client_credentials", scope=BACKEND_SCOPE
        )
        assert token["token_type"] == "Bearer"
        assert set(token["scope"].split()) == set(BACKEND_SCOPE.split())
        assert "refresh_token" not in token
        assert 0 < token["expires_in"] <= 300
        claims = _claims_of(token["access_token"])
        assert (claims["client_id"], claims["aud"], claims["iss"]) == (BACKEND, _fhir(stack), _auth(stack))

        # The client now sends the token itself (authlib's OAuth2Auth).
        patients = client.get(f"{_fhir(stack)}/Patient", params={"_count": "50"})
        assert patients.status_code == 200, patients.text
        bundle = patients.json()
        assert bundle["resourceType"] == "Bundle"
        ids = {e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"}
        every_demo_patient = {p for user in _demo_users(stack) for p in user["patients"]}
        assert every_demo_patient <= ids  # a system/ token is not confined to any compartment
        one = sorted(ids)[0]
        read = client.get(f"{_fhir(stack)}/Patient/{one}")
        assert (read.status_code, read.json()["id"]) == (200, one)
        observations = client.get(f"{_fhir(stack)}/Observation", params={"patient": one})
        assert observations.status_code == 200, observations.text

        denied = client.get(f"{_fhir(stack)}/Condition")
        assert denied.status_code == 403, denied.text

        # Each assertion carries a new jti: a second token request is not mistaken for a replay.
        again = client.fetch_token(discovery["token_endpoint"], grant_type="client_credentials", scope=BACKEND_SCOPE)
        assert again["access_token"] != token["access_token"]


# --- 2. SMART standalone launch ------------------------------------------------------------------


def test_authlib_as_a_public_smart_app_completes_a_standalone_launch_with_pkce_s256_and_refreshes(
    stack: UpProcess,
) -> None:
    _add_client(
        stack,
        APP,
        "--kind",
        "smart-app",
        "--auth-method",
        "none",
        "--scope",
        APP_SCOPE,
        "--redirect-uri",
        APP_REDIRECT,
    )
    doctor = _demo_users(stack)[0]
    mine = doctor["patients"][0]
    fhir = _fhir(stack)
    discovery = _discovery(stack)
    assert discovery["authorization_endpoint"] == f"{_auth(stack)}/authorize"
    assert "S256" in discovery["code_challenge_methods_supported"]
    assert "launch-standalone" in discovery["capabilities"]

    with _oauth_client(
        stack,
        client_id=APP,
        redirect_uri=APP_REDIRECT,
        scope=APP_SCOPE,
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    ) as app:
        verifier = secrets.token_urlsafe(64)
        nonce = secrets.token_urlsafe(16)
        url, state = app.create_authorization_url(
            discovery["authorization_endpoint"], code_verifier=verifier, aud=fhir, nonce=nonce
        )
        query = parse_qs(urlsplit(url).query)
        assert query["code_challenge_method"] == ["S256"] and query["aud"] == [fhir]
        assert len(query["code_challenge"][0]) == 43

        # The user's browser: the login page (CSRF token from the form), then the patient picker.
        with httpx.Client(verify=_ca_only(stack), timeout=30) as browser:
            login_page = _browse(browser, url)
            assert (login_page.status_code, login_page.url.path) == (200, "/login")
            login = form(login_page, "/login")
            assert login.hidden["csrf"] and login.hidden["next"].startswith("/authorize?")
            signed_in = browser.post(
                urljoin(str(login_page.url), login.action),
                data={**login.hidden, "username": doctor["login"], "password": doctor["password"]},
            )
            assert signed_in.status_code == 303, signed_in.text
            picker = _browse(browser, urljoin(str(signed_in.url), signed_in.headers["location"]))
            assert picker.status_code == 200, picker.text
            choice = form(picker, "/authorize/select")
            assert mine in choice.radios["patient"]
            callback = browser.post(urljoin(str(picker.url), choice.action), data={**choice.hidden, "patient": mine})
        assert callback.status_code == 303, callback.text
        redirect = callback.headers["location"]
        assert redirect.startswith(APP_REDIRECT + "?")
        answer = {k: v[0] for k, v in parse_qs(urlsplit(redirect).query).items()}
        assert answer["state"] == state and answer["iss"] == discovery["issuer"]  # RFC 9207

        token: dict[str, Any] = app.fetch_token(
            discovery["token_endpoint"], authorization_response=redirect, state=state, code_verifier=verifier
        )
        assert token["token_type"] == "Bearer" and token["patient"] == mine
        assert set(token["scope"].split()) == set(APP_SCOPE.split())
        assert token["refresh_token"]  # offline_access
        claims = _claims_of(token["access_token"])
        assert (claims["aud"], claims["client_id"], claims["patient"]) == (fhir, APP, mine)

        # The id_token, checked with the server's published keys, says who the user is.
        jwks = app.request("GET", discovery["jwks_uri"], withhold_token=True).json()
        identity = jwt.decode(token["id_token"], KeySet.import_key_set(jwks), algorithms=["ES384", "RS384"])
        jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": discovery["issuer"]},
            aud={"essential": True, "value": APP},
            nonce={"essential": True, "value": nonce},
            sub={"essential": True},
            exp={"essential": True},
        ).validate(identity.claims)
        assert identity.claims["fhirUser"] == f"{fhir}/{doctor['fhirUser']}"

        read = app.get(f"{fhir}/Patient/{mine}")
        assert (read.status_code, read.json()["id"]) == (200, mine), read.text

        first_refresh = token["refresh_token"]
        refreshed = app.refresh_token(discovery["token_endpoint"], refresh_token=first_refresh)
        assert refreshed["refresh_token"] and refreshed["refresh_token"] != first_refresh
        assert refreshed["access_token"] != token["access_token"]
        assert refreshed["patient"] == mine
        assert _claims_of(refreshed["access_token"])["patient"] == mine
        again = app.get(f"{fhir}/Patient/{mine}")  # the client now sends the refreshed token
        assert again.request.headers["authorization"] == f"Bearer {refreshed['access_token']}"
        assert (again.status_code, again.json()["id"]) == (200, mine)


# --- 3. fhirclient -------------------------------------------------------------------------------


def _observation_ids_by_hand(up: UpProcess, token: str, patient: str) -> set[str]:
    """The same search with plain httpx, following every `next` link: the expected answer."""
    found: set[str] = set()
    url: str | None = f"{_fhir(up)}/Observation?patient={patient}"
    with httpx.Client(verify=_ca_only(up), headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        while url:
            page = http.get(url)
            assert page.status_code == 200, page.text
            bundle = page.json()
            found |= {e["resource"]["id"] for e in bundle.get("entry", [])}
            url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
    return found


def test_fhirclient_finds_the_oauth_endpoints_in_the_capability_statement_then_reads_and_searches(
    stack: UpProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests (under fhirclient) reads REQUESTS_CA_BUNDLE on every request: trust only our CA.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", _ca_path(stack))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    fhir = _fhir(stack)
    smart = fhir_client.FHIRClient(
        settings={"app_id": "fhirclient-app", "api_base": fhir, "redirect_uri": APP_REDIRECT, "scope": APP_SCOPE}
    )
    assert smart.prepare() is False  # metadata fetched and parsed, but no token yet
    server = smart.server
    assert server.capabilityStatement.fhirVersion == "4.0.1"
    assert server.auth.auth_type == "oauth2"
    assert server.auth.state["authorize_uri"] == f"{_auth(stack)}/authorize"
    assert server.auth.state["token_uri"] == f"{_auth(stack)}/token"
    # The authorize URL it would send a user to: the discovered endpoint, PKCE S256, aud = the base.
    authorize = urlsplit(smart.authorize_url)
    params = parse_qs(authorize.query)
    assert f"{authorize.scheme}://{authorize.netloc}{authorize.path}" == f"{_auth(stack)}/authorize"
    assert params["code_challenge_method"] == ["S256"] and params["aud"] == [fhir]

    users = _demo_users(stack)
    doctor, other = users[0], users[1]
    mine, theirs = doctor["patients"][0], other["patients"][0]
    assert theirs not in doctor["patients"]
    exchanged = _token_exchange(stack, _ehr_signer(stack), doctor["fhirUser"], mine)
    assert exchanged.status_code == 200, exchanged.text
    access_token = exchanged.json()["access_token"]

    # fhirclient signs requests with FHIROAuth2Auth.access_token (auth.py, signed_headers).
    server.auth.access_token = access_token
    assert smart.ready

    patient = Patient.read(mine, server)
    assert (patient.id, patient.resource_type) == (mine, "Patient")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # perform_resources → perform_resources_iter
        observations = Observation.where(struct={"patient": mine}).perform_resources(server)
        # Small pages: fhirclient follows the server's signed `next` links, sending the same token.
        paged = Observation.where(struct={"patient": mine, "_count": "3"}).perform_resources(server)
    assert observations and all(isinstance(o, Observation) for o in observations)
    assert {o.subject.reference for o in observations} == {f"Patient/{mine}"}
    ids = [o.id for o in observations]
    assert len(ids) == len(set(ids))
    assert set(ids) == _observation_ids_by_hand(stack, access_token, mine)
    assert len(ids) > 3 and sorted(o.id for o in paged) == sorted(ids)

    # Forbidden looks like missing, to fhirclient as to anyone.
    with pytest.raises(FHIRNotFoundException):
        Patient.read(theirs, server)
