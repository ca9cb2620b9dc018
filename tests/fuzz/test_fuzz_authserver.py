"""Fuzzing the authorization server: /token for each grant (client assertions and subject tokens
valid, forged, truncated, with random claims and headers), /introspect, /revoke, /revocations,
/authorize, /login, /logout, /launch, the admin API and the metadata documents.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, reject
from hypothesis import strategies as st

from authserver import clients
from authserver.clients import Client
from tests.fuzz.conftest import secrets_in
from tests.fuzz.invariants import any_shape, bare_401_shape, oauth_shape, send
from tests.fuzz.strategies import forged_jwts, header_text, json_values, jwt_claims, numbers_text, text
from tests.integration.authharness import (
    EXCHANGE,
    FHIR,
    JWT_BEARER,
    TOKEN_URL,
    TT_ACCESS,
    TT_JWT,
    Harness,
    running_authserver,
)

APP_SECRET = "app-secret-value-that-must-never-be-echoed"
REDIRECT = "https://app.test/callback"
GRANTS = ["authorization_code", "refresh_token", "client_credentials", EXCHANGE, "password", "implicit", ""]


class Auth:
    def __init__(self, h: Harness, secrets: set[str], access_token: str) -> None:
        self.h = h
        self.secrets = secrets
        self.access_token = access_token

    def __repr__(self) -> str:
        return "Auth(...)"

    async def send(self, method: str, url: str, *, shape: Any = oauth_shape, **kwargs: Any) -> Any:
        if isinstance(kwargs.get("data"), list):  # repeated fields: httpx takes {name: [values]}
            kwargs["data"] = form_of(kwargs["data"])
        headers = {k: v.encode() for k, v in (kwargs.pop("headers", None) or {}).items()}
        return await send(self.h.client, method, url, shape=shape, secrets=self.secrets, headers=headers, **kwargs)


def form_of(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    return form


@pytest.fixture(scope="module")
async def auth(sqlite_db: tuple[Path, str]) -> AsyncIterator[Auth]:
    directory, url = sqlite_db
    async with running_authserver(directory, url) as h:
        async with h.app.state.runtime.sessions() as session, session.begin():
            app = Client(
                "app-1",
                "smart-app",
                "App",
                "client_secret_basic",
                "patient/*.rs openid fhirUser launch",
                False,
                True,
                redirect_uris=(REDIRECT,),
            )
            await clients.register(session, app, APP_SECRET)
        access = await h.backend_token()
        secrets = secrets_in(directory) | {h.admin_token, APP_SECRET, access}
        secrets |= {
            str(k.key.as_dict(private=True)["d"]) for k in h.keys.values() if "d" in k.key.as_dict(private=True)
        }
        signer = await h.app.state.runtime.signing_keys.signer()
        secrets.add(str(signer.key.as_dict(private=True)["d"]))
        yield Auth(h, secrets, access)


CLIENT_IDS = st.sampled_from(["ehr", "ehr-2", "cds-a", "backend-1", "backend-2", "app-1", "nobody"]) | text
HEADER_EXTRAS = st.fixed_dictionaries(
    {},
    optional={
        "kid": text,
        "jku": st.sampled_from(["https://evil.example/jwks", "file:///etc/passwd"]),
        "x5u": st.just("https://evil.example/x"),
        "cty": text,
    },
)


@st.composite
def signed_assertions(draw: st.DrawFn, h: Harness) -> str:
    """Assertions genuinely signed by a registered client's key, with odd claims and headers."""
    client_id = draw(st.sampled_from(["ehr", "cds-a", "backend-1", "backend-2"]))
    now = int(h.clock())
    defaults = {"iss": client_id, "sub": client_id, "aud": TOKEN_URL, "iat": now, "exp": now + 120, "jti": "x"}
    claims = draw(jwt_claims(defaults))
    overrides: dict[str, Any] = {name: None for name in defaults if name not in claims}
    overrides.update({k: v for k, v in claims.items() if k != "jti" or v != "x"})
    signer = draw(st.sampled_from([client_id, client_id, "backend-1-rsa", "ehr-2"]))
    try:
        return h.assertion(client_id, key=h.keys[signer], header=draw(HEADER_EXTRAS) or None, **overrides)
    except Exception:  # noqa: BLE001 - the test's own signer refused these claims: nothing was sent
        reject()


def client_auth(h: Harness) -> st.SearchStrategy[tuple[dict[str, str], dict[str, str]]]:
    """(form fields, headers) for client authentication: genuine, forged or missing."""
    now = int(h.clock())
    forged = forged_jwts({"iss": "ehr", "sub": "ehr", "aud": TOKEN_URL, "iat": now, "exp": now + 60, "jti": "j"})
    assertion_type = st.sampled_from([JWT_BEARER, JWT_BEARER, "urn:x", ""]) | text
    basic = st.one_of(st.just(f"app-1:{APP_SECRET}"), st.builds(lambda c, s: f"{c}:{s}", CLIENT_IDS, text), text).map(
        lambda raw: "Basic " + base64.b64encode(raw.encode()).decode()
    )
    genuine = st.sampled_from(["ehr", "cds-a", "backend-1", "backend-2"]).map(h.client_auth)
    return st.one_of(
        st.tuples(genuine, st.just({})),
        st.tuples(
            st.fixed_dictionaries(
                {"client_assertion_type": st.just(JWT_BEARER), "client_assertion": signed_assertions(h)}
            ),
            st.just({}),
        ),
        st.tuples(
            st.fixed_dictionaries({"client_assertion_type": assertion_type, "client_assertion": forged}), st.just({})
        ),
        st.tuples(st.just({}), st.fixed_dictionaries({"Authorization": basic | header_text})),
        st.tuples(st.fixed_dictionaries({"client_id": CLIENT_IDS}), st.just({})),
        st.tuples(st.just({}), st.just({})),
    )


@st.composite
def subject_tokens(draw: st.DrawFn, auth: Auth) -> str:
    h = auth.h
    now = int(h.clock())
    kind = draw(st.integers(0, 3))
    if kind == 0:
        claims = draw(jwt_claims({"sub": "Practitioner/dr-a", "iat": now, "exp": now + 30}))
        overrides: dict[str, Any] = {k: claims.get(k) for k in ("sub", "iat", "exp")} | {
            k: v for k, v in claims.items() if k not in ("sub", "iat", "exp")
        }
        try:
            return h.user_assertion(
                str(overrides.pop("sub", "x")), typ=draw(st.sampled_from(["user+jwt", "JWT", "at+jwt"])), **overrides
            )
        except Exception:  # noqa: BLE001 - the test's own signer refused these claims: nothing was sent
            reject()
    if kind == 1:
        return auth.access_token
    return draw(forged_jwts({"iss": "ehr", "sub": "Practitioner/dr-a", "aud": TOKEN_URL, "exp": now + 30}))


@given(data=st.data())
async def test_the_token_endpoint_answers_every_form_with_an_oauth_error_or_a_token(
    auth: Auth, data: st.DataObject
) -> None:
    form, headers = data.draw(client_auth(auth.h))
    fields: list[tuple[str, str]] = list(form.items())
    fields.append(("grant_type", data.draw(st.sampled_from(GRANTS) | text)))
    optional = {
        "scope": st.sampled_from(["system/Patient.rs", "patient/*.rs", "openid launch", "system/*.*", ""]) | text,
        "resource": st.sampled_from([FHIR, FHIR + "/", "https://evil.example/fhir"]) | text,
        "subject_token": subject_tokens(auth),
        "subject_token_type": st.sampled_from([TT_JWT, TT_ACCESS, "urn:x"]) | text,
        "patient": st.sampled_from(["p-a1", "p-b1", ""]) | text,
        "cds_service": st.sampled_from(["cds-a", "backend-1", "ehr", ""]) | text,
        "code": text,
        "redirect_uri": st.just(REDIRECT) | text,
        "code_verifier": text,
        "refresh_token": text,
        "audience": text,
        "requested_token_type": text,
        "actor_token": text,
    }
    for name in data.draw(st.lists(st.sampled_from(sorted(optional)), max_size=6)):  # repeats allowed: duplicates
        fields.append((name, data.draw(optional[name])))
    response = await auth.send("POST", "/token", data=fields, headers=headers)
    if response.status_code == 200:
        assert response.json()["token_type"] == "Bearer"


@given(data=st.data())
async def test_introspection_and_revocation_answer_every_form(auth: Auth, data: st.DataObject) -> None:
    form, headers = data.draw(client_auth(auth.h))
    token = data.draw(st.one_of(st.just(auth.access_token), subject_tokens(auth), text))
    fields = [*form.items(), ("token", token)]
    for name in data.draw(st.lists(st.sampled_from(["token", "token_type_hint"]), max_size=2)):
        fields.append((name, data.draw(st.sampled_from(["access_token", "refresh_token"]) | text)))
    path = data.draw(st.sampled_from(["/introspect", "/revoke"]))
    response = await auth.send("POST", path, data=fields, headers=headers)
    if path == "/introspect" and response.status_code == 200 and response.json().get("active") is not True:
        assert response.json() == {"active": False}


_AFTER = numbers_text


@given(after=_AFTER, limit=_AFTER)
async def test_the_revocation_feed_answers_any_cursor(auth: Auth, after: str, limit: str) -> None:
    await auth.send("GET", "/revocations", params={"after": after, "limit": limit}, shape=any_shape)


AUTHORIZE_PARAMS = {
    "response_type": st.sampled_from(["code", "token", ""]) | text,
    "client_id": CLIENT_IDS,
    "redirect_uri": st.sampled_from([REDIRECT, REDIRECT + "/", "https://evil.example/cb"]) | text,
    "scope": st.sampled_from(["patient/*.rs openid fhirUser launch", "launch/patient", "system/*.*"]) | text,
    "state": text,
    "aud": st.sampled_from([FHIR, FHIR + "/"]) | text,
    "code_challenge": st.sampled_from(["E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"]) | text,
    "code_challenge_method": st.sampled_from(["S256", "plain"]) | text,
    "launch": text,
    "nonce": text,
    "prompt": st.sampled_from(["none", "login"]) | text,
}


@given(data=st.data())
async def test_the_browser_endpoints_answer_any_parameters(auth: Auth, data: st.DataObject) -> None:
    fields = [
        (n, data.draw(AUTHORIZE_PARAMS[n]))
        for n in data.draw(st.lists(st.sampled_from(sorted(AUTHORIZE_PARAMS)), max_size=9))
    ]
    form = data.draw(
        st.dictionaries(
            st.sampled_from(["csrf", "username", "password", "next", "patient", "cancel"]), text, max_size=4
        )
    )
    cookies = data.draw(
        st.dictionaries(
            st.sampled_from(["__Host-mockehr-session", "__Host-mockehr-csrf", "x"]),
            header_text.filter(lambda v: ";" not in v and "," not in v and " " not in v),
            max_size=2,
        )
    )
    auth.h.client.cookies.clear()
    auth.h.client.cookies.update(cookies)
    route = data.draw(
        st.sampled_from(
            ["GET /authorize", "POST /authorize", "POST /authorize/select", "GET /login", "POST /login", "POST /logout"]
        )
    )
    method, path = route.split()
    if method == "GET":
        if path == "/login":
            fields = [
                (
                    "next",
                    data.draw(
                        st.sampled_from(["/authorize?client_id=app-1", "//evil.example", "/authorize?\\x"]) | text
                    ),
                )
            ]
        await auth.send(method, path, params=fields, shape=any_shape)
    else:
        await auth.send(
            method, path, data=[*fields, *form.items()] if path == "/authorize" else list(form.items()), shape=any_shape
        )
    auth.h.client.cookies.clear()


@given(data=st.data())
async def test_launch_registration_answers_any_body(auth: Auth, data: st.DataObject) -> None:
    form, _headers = data.draw(client_auth(auth.h))
    fields = {
        "patient": st.sampled_from(["p-a1", "p-b1"]) | text,
        "encounter": text,
        "client_id": st.sampled_from(["app-1", "backend-1"]) | text,
        "user": st.sampled_from(["Practitioner/dr-a", "dr.a"]) | json_values,
        "appContext": json_values,
        "fhirContext": json_values,
        "need_patient_banner": json_values,
    }
    body: dict[str, Any] = dict(form)
    for name in data.draw(st.lists(st.sampled_from(sorted(fields)), max_size=6, unique=True)):
        body[name] = data.draw(fields[name])
    payload = data.draw(st.sampled_from(["json", "json", "raw"]))
    if payload == "json":
        await auth.send("POST", "/launch", json=body if data.draw(st.integers(0, 5)) else data.draw(json_values))
    else:
        await auth.send("POST", "/launch", content=data.draw(st.binary(max_size=64)))


@given(data=st.data())
async def test_the_admin_api_refuses_strangers_with_a_bare_401_and_answers_admins(
    auth: Auth, data: st.DataObject
) -> None:
    admin = data.draw(st.booleans())
    credential = (
        f"Bearer {auth.h.admin_token}"
        if admin
        else data.draw(
            st.sampled_from([f"Bearer {auth.h.admin_token[:-1]}", f"bearer {auth.h.admin_token}x", "Bearer", ""])
            | header_text
        )
    )
    client_id = data.draw(
        st.sampled_from(["app-1", "new-client", "ehr"])
        | text.filter(lambda t: "/" not in t and t not in ("", ".", ".."))
    )
    route = data.draw(st.sampled_from(["GET /clients", "PUT /clients/{id}", "POST /clients/{id}/disable"]))
    method, path = route.split()
    path = "/admin" + path.replace("{id}", __import__("urllib.parse").parse.quote(client_id, safe=""))
    body = data.draw(
        st.one_of(
            json_values,
            st.fixed_dictionaries(
                {"kind": st.sampled_from(["smart-app", "backend", "ehr", "x"]), "name": text},
                optional={
                    "auth_method": st.sampled_from(["none", "private_key_jwt", "client_secret_basic"]) | text,
                    "scope": text,
                    "redirect_uris": json_values,
                    "jwks": json_values,
                    "jwks_uri": text,
                    "secret": text,
                    "first_party": json_values,
                    "launch_url": text,
                },
            ),
        )
    )
    response = await auth.send(method, path, json=body, headers={"Authorization": credential}, shape=bare_401_shape)
    if not admin:
        assert response.status_code == 401, response.text
    if admin and response.status_code == 400:
        oauth_shape(response)


@given(
    path=st.sampled_from(
        [
            "/jwks",
            "/.well-known/jwks.json",
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
            "/smart-style.json",
            "/healthz",
            "/readyz",
        ]
    ),
    params=st.dictionaries(text, text, max_size=3),
)
async def test_the_metadata_documents_answer_any_query(auth: Auth, path: str, params: dict[str, str]) -> None:
    response = await auth.send("GET", path, params=params, shape=any_shape)
    assert response.status_code == 200, response.text
