"""Client authentication: only a correctly signed, fresh, single-use assertion of a registered key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from authserver.app import create_app
from authserver.models import IssuedTokenRow
from authserver.settings import AuthSettings
from common.jose import new_jti
from tests.integration.apps import serving
from tests.integration.authharness import (
    AUTH,
    FHIR,
    JWT_BEARER,
    Harness,
    b64,
    hs256,
    jwks_of,
    new_key,
    running_authserver,
)


def _form(assertion: str, scope: str = "system/Patient.rs") -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion,
    }


def _assert_invalid_client(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_client", "error_description": "client authentication failed"}
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["www-authenticate"].startswith("Bearer")


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."


async def test_a_correctly_signed_es384_assertion_gets_a_token(auth: Harness) -> None:
    response = await auth.token(_form(auth.assertion("backend-1")))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store" and response.headers["pragma"] == "no-cache"


async def test_an_rs384_assertion_with_the_clients_rsa_key_is_accepted(auth: Harness) -> None:
    response = await auth.token(_form(auth.assertion("backend-1", key=auth.keys["backend-1-rsa"])))
    assert response.status_code == 200, response.text


def _claims(auth: Harness, client_id: str = "backend-1", **overrides: Any) -> dict[str, Any]:
    now = int(auth.clock())
    claims = {"iss": client_id, "sub": client_id, "aud": f"{AUTH}/token", "iat": now, "exp": now + 60, "jti": new_jti()}
    claims.update(overrides)
    return claims


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda h: _unsigned({"alg": "none", "typ": "JWT", "kid": h.keys["backend-1"].kid}, _claims(h)),
            id="alg-none",
        ),
        pytest.param(
            lambda h: _unsigned({"alg": "None", "typ": "JWT", "kid": h.keys["backend-1"].kid}, _claims(h)),
            id="alg-None",
        ),
        pytest.param(
            lambda h: _unsigned({"alg": "nOnE", "typ": "JWT", "kid": h.keys["backend-1"].kid}, _claims(h)),
            id="alg-nOnE",
        ),
        pytest.param(
            lambda h: hs256(
                {"alg": "HS256", "typ": "JWT", "kid": h.keys["backend-1"].kid},
                _claims(h),
                json.dumps(jwks_of(h.keys["backend-1"])["keys"][0]).encode(),
            ),
            id="hs256-keyed-with-the-clients-public-key",
        ),
        pytest.param(lambda h: h.assertion("backend-1", key=h.keys["backend-2"]), id="signed-with-another-clients-key"),
        pytest.param(
            lambda h: h.assertion(
                "backend-1", key=type(h.keys["backend-1"])(h.keys["backend-1"].kid, "ES384", new_key().key)
            ),
            id="unknown-key-claiming-a-registered-kid",
        ),
        pytest.param(lambda h: h.assertion("backend-1", aud="https://elsewhere.test/token"), id="aud-of-another-url"),
        pytest.param(lambda h: h.assertion("backend-1", aud=AUTH), id="aud-of-the-issuer-not-the-token-url"),
        pytest.param(lambda h: h.assertion("backend-1", exp=int(h.clock()) + 3600), id="exp-an-hour-ahead"),
        pytest.param(lambda h: h.assertion("backend-1", exp=int(h.clock()) - 120), id="expired"),
        pytest.param(lambda h: h.assertion("backend-1", jti=None), id="jti-missing"),
        pytest.param(lambda h: h.assertion("backend-1", sub="backend-2"), id="sub-differs-from-iss"),
        pytest.param(
            lambda h: h.assertion("backend-1", header={"jku": "https://attacker.test/jwks"}), id="unregistered-jku"
        ),
        pytest.param(lambda h: h.assertion("nobody", key=h.keys["backend-1"]), id="unknown-client"),
        pytest.param(lambda h: "not.a.jwt", id="garbage"),
    ],
)
async def test_every_bad_assertion_is_invalid_client(auth: Harness, make: Any) -> None:
    _assert_invalid_client(await auth.token(_form(make(auth))))


@pytest.mark.parametrize(
    "aud",
    [[f"{AUTH}/token", "https://other.example/token"], ["https://other.example/token", f"{AUTH}/token"]],
    ids=["this-server-first", "this-server-second"],
)
async def test_an_assertion_also_addressed_to_another_server_gets_no_token(auth: Harness, aud: list[str]) -> None:
    # RFC 7523 §3: the other server received this assertion too and could replay it here.
    response = await auth.token(_form(auth.assertion("backend-1", aud=aud)))

    _assert_invalid_client(response)
    async with auth.app.state.runtime.sessions() as session:
        issued = (await session.execute(select(IssuedTokenRow.jti))).scalars().all()
    assert issued == []


async def test_an_assertion_cannot_be_replayed(auth: Harness) -> None:
    assertion = auth.assertion("backend-1")
    assert (await auth.token(_form(assertion))).status_code == 200
    _assert_invalid_client(await auth.token(_form(assertion)))


async def test_an_assertion_cannot_be_replayed_after_a_restart(tmp_path: Path, database_url: str) -> None:
    async with running_authserver(tmp_path, database_url) as first:
        assertion = first.assertion("backend-1")
        assert (await first.token(_form(assertion))).status_code == 200
        settings = AuthSettings(data_dir=tmp_path, database_url=database_url, public_url=AUTH, fhir_base_url=FHIR)
    # A new process over the same database: the used jti is still remembered.
    async with serving(create_app(settings, clock=first.clock), AUTH) as restarted:
        response = await restarted.post("/token", data=_form(assertion))
    _assert_invalid_client(response)


async def test_a_disabled_client_cannot_authenticate(auth: Harness) -> None:
    disabled = await auth.client.post(
        "/admin/clients/backend-1/disable", headers={"Authorization": f"Bearer {auth.admin_token}"}
    )
    assert disabled.status_code == 204
    _assert_invalid_client(await auth.token(_form(auth.assertion("backend-1"))))


async def test_client_id_in_the_form_must_match_the_assertion(auth: Harness) -> None:
    form = _form(auth.assertion("backend-1"))
    form["client_id"] = "backend-2"
    _assert_invalid_client(await auth.token(form))


async def test_an_unsupported_assertion_type_is_invalid_client(auth: Harness) -> None:
    form = _form(auth.assertion("backend-1"))
    form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"
    _assert_invalid_client(await auth.token(form))
