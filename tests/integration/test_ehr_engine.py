"""The CDS engine against the real authorization and FHIR servers and CDS Service doubles.

What a service receives is asserted at the service: the JWT verifies against the EHR's JWKS with
aud = its exact URL, a fresh jti per call, exp − iat ≤ 300; fhirAuthorization names the service
and the patient; the token reads this patient, not another, and nothing once the exchange is over.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from authserver import clients
from authserver.clients import Client
from common.errors import TokenInvalidError
from common.jose import unverified_claims, verify_jwt
from common.tls import CertPaths, ensure_ca, issue_certificate
from ehr.client_jwt import MAX_LIFETIME_SECONDS
from ehr.hooks import HookContextError
from ehr.invoke import REDACTED
from fhirserver.state import fhir_state
from tests.integration.ehr_engine_harness import EHR, SCOPES, Doubles, EngineStack, serve, service


async def verify_client_jwt(stack: EngineStack, authorization: str, url: str) -> dict[str, Any]:
    scheme, _, token = authorization.partition(" ")
    assert scheme == "Bearer"
    verified = verify_jwt(
        token,
        await stack.jwks(),
        algorithms=["ES384"],
        typ="JWT",
        issuer=EHR,
        audience=url,
        clock=stack.clock,
        max_lifetime=MAX_LIFETIME_SECONDS,
        allowed_jku=[f"{EHR}/.well-known/jwks.json"],
    )
    assert verified.header["jku"] == f"{EHR}/.well-known/jwks.json"
    return verified.claims


async def test_the_service_receives_a_verifiable_jwt_and_a_token_bound_to_it_and_the_patient(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    fhir = stack.fhir
    user, mine, theirs = fhir.practitioner(0), fhir.patient_of(0), fhir.patient_of(1)
    config = service(base, "ok-a", prefetch={"patient": "Patient/{{context.patientId}}"})
    outcome = await stack.engine.run_hook(stack.call(user, mine), [config])

    [result] = outcome.results
    assert result.status == "ok", result.reason
    assert [c["uuid"] for c in result.cards] == ["card-ok-a"]
    [received] = found.to("ok-a")
    claims = await verify_client_jwt(stack, received.headers["authorization"], config.url)
    assert claims["exp"] - claims["iat"] <= 300
    with pytest.raises(TokenInvalidError):
        verify_jwt(
            received.headers["authorization"].split(" ", 1)[1], await stack.jwks(), algorithms=["ES384"], typ="JWT",
            issuer=EHR, audience=f"{base}/cds-services", clock=stack.clock,
        )  # fmt: skip

    body = received.body
    assert body["hook"] == "patient-view"
    assert body["hookInstance"] == outcome.call.hook_instance
    assert body["fhirServer"] == "https://fhir.test/fhir"
    assert body["context"] == {"userId": user, "patientId": mine}
    authorization = body["fhirAuthorization"]
    assert set(authorization) == {"access_token", "token_type", "expires_in", "scope", "subject", "patient"}
    assert authorization["subject"] == "cds-a"
    assert authorization["patient"] == mine == body["context"]["patientId"]
    assert authorization["token_type"] == "Bearer"
    assert 0 < authorization["expires_in"] <= 300
    token_claims = unverified_claims(authorization["access_token"])
    assert token_claims["client_id"] == "cds-a"
    assert token_claims["patient"] == mine
    assert token_claims["aud"] == "https://fhir.test/fhir"
    assert body["prefetch"]["patient"]["id"] == mine

    # The record keeps the request with the token redacted.
    assert result.request is not None
    assert result.request["fhirAuthorization"]["access_token"] == REDACTED
    assert result.token_scope == authorization["scope"]
    assert result.timings.token_ms is not None and result.timings.revoke_ms is not None

    # The token the service got was revoked when the exchange ended.
    token = authorization["access_token"]
    await fhir_state(fhir.fhir_app).revocations.poll_once()
    assert (await fhir.get(f"Patient/{mine}", token)).status_code == 401
    assert (await fhir.get(f"Patient/{theirs}", token)).status_code == 401


async def test_during_the_exchange_the_token_reads_this_patient_and_no_other(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    fhir = stack.fhir
    user, mine, theirs = fhir.practitioner(0), fhir.patient_of(0), fhir.patient_of(1)
    seen: dict[str, int] = {}

    async def probe_while_live(body: dict[str, Any]) -> None:
        token = body["fhirAuthorization"]["access_token"]
        seen["mine"] = (await fhir.get(f"Patient/{mine}", token)).status_code
        seen["theirs"] = (await fhir.get(f"Patient/{theirs}", token)).status_code
        seen["their_obs"] = (await fhir.get("Observation", token, patient=theirs)).json()["total"]

    # The double runs in another thread: hand the token to this loop by asking the test to probe
    # from inside the answer, via a synchronous bridge.
    import asyncio

    loop = asyncio.get_running_loop()

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        asyncio.run_coroutine_threadsafe(probe_while_live(body), loop).result(timeout=10)
        return {"cards": []}

    found.answers["ok-live"] = answer
    outcome = await stack.engine.run_hook(stack.call(user, mine), [service(base, "ok-live")])
    assert outcome.results[0].status == "ok", outcome.results[0].reason
    assert seen == {"mine": 200, "theirs": 404, "their_obs": 0}


async def test_every_call_gets_a_fresh_jwt_hook_instance_and_token(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    config = service(base, "ok-a")
    for _ in range(3):
        await stack.engine.run_hook(stack.call(user, mine), [config])
    received = found.to("ok-a")
    jtis = {unverified_claims(r.headers["authorization"].split(" ", 1)[1])["jti"] for r in received}
    tokens = {r.body["fhirAuthorization"]["access_token"] for r in received}
    instances = {r.body["hookInstance"] for r in received}
    assert len(received) == len(jtis) == len(tokens) == len(instances) == 3


async def test_two_services_on_one_hook_each_receive_only_their_own_approved_prefetch(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    a = service(base, "ok-a", prefetch={"patient": "Patient/{{context.patientId}}"})
    b = service(
        base,
        "ok-b",
        client_id="cds-b",
        prefetch={
            "labs": "Observation?patient={{context.patientId}}&_count=2",
            "nothing": "Condition?patient={{context.patientId}}&code=http://snomed.info/sct|000000",
        },
    )
    outcome = await stack.engine.run_hook(stack.call(user, mine), [a, b])
    assert [r.status for r in outcome.results] == ["ok", "ok"]
    [to_a], [to_b] = found.to("ok-a"), found.to("ok-b")
    assert set(to_a.body["prefetch"]) == {"patient"}
    assert set(to_b.body["prefetch"]) == {"labs", "nothing"}
    assert to_b.body["prefetch"]["labs"]["resourceType"] == "Bundle"
    assert all(
        e["resource"]["subject"]["reference"] == f"Patient/{mine}" for e in to_b.body["prefetch"]["labs"]["entry"]
    )
    # An empty search is sent as the empty searchset Bundle.
    assert to_b.body["prefetch"]["nothing"]["type"] == "searchset"
    assert to_b.body["prefetch"]["nothing"].get("entry", []) == []
    # Each got its own token, for its own client_id.
    assert to_a.body["fhirAuthorization"]["subject"] == "cds-a"
    assert to_b.body["fhirAuthorization"]["subject"] == "cds-b"
    assert unverified_claims(to_b.body["fhirAuthorization"]["access_token"])["client_id"] == "cds-b"


async def test_an_approved_user_prefetch_carries_the_users_practitioner_and_no_other(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    fhir = stack.fhir
    user, other, mine = fhir.practitioner(0), fhir.practitioner(1), fhir.patient_of(0)
    scope = f"{SCOPES} patient/Practitioner.rs"
    runtime = fhir.auth_app.state.runtime
    async with runtime.sessions() as session, session.begin():
        await clients.register(session, Client("cds-a", "cds-service", "cds-a", "none", scope, False, True))
    config = service(
        base,
        "ok-a",
        scope=scope,
        prefetch={"user": "Practitioner/{{userPractitionerId}}", "someone": f"Practitioner?_id={other.split('/')[1]}"},
    )
    outcome = await stack.engine.run_hook(stack.call(user, mine), [config])
    [result] = outcome.results
    assert result.status == "ok", result.reason
    [received] = found.to("ok-a")
    prefetch = received.body["prefetch"]
    assert (prefetch["user"]["resourceType"], prefetch["user"]["id"]) == ("Practitioner", user.split("/")[1])
    # Another Practitioner is as absent as before: the service's token reads only its user.
    assert prefetch["someone"]["type"] == "searchset" and prefetch["someone"].get("entry", []) == []


async def test_a_hostile_context_value_cannot_widen_a_prefetch_query(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    # encounterId is free text to the template; a hostile value must stay one encoded value.
    config = service(
        base, "ok-a", prefetch={"enc": "Observation?patient={{context.patientId}}&encounter={{context.encounterId}}"}
    )
    outcome = await stack.engine.run_hook(stack.call(user, mine, encounterId="x"), [config])
    assert outcome.results[0].status == "ok"
    with pytest.raises(HookContextError, match="encounterId"):
        await stack.engine.run_hook(stack.call(user, mine, encounterId="1&_id=2"), [config])
    with pytest.raises(HookContextError, match="encounterId"):
        await stack.engine.run_hook(stack.call(user, mine, encounterId="../x"), [config])
    assert len(found.to("ok-a")) == 1


async def test_a_patient_outside_the_users_reach_gets_no_token_and_no_call(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    fhir = stack.fhir
    member = fhir.data.practitioners[0]
    reach = set(member.patient_ids) | set(fhir.data.careteam_member_patients.get(member.id, []))
    outsider = next(p for p in fhir.data.practitioners[2].patient_ids if p not in reach)
    outcome = await stack.engine.run_hook(stack.call(f"Practitioner/{member.id}", outsider), [service(base, "ok-a")])
    [result] = outcome.results
    assert result.status == "error"
    assert result.reason == (
        "no FHIR token for this service: token exchange refused: "
        "invalid_grant: the patient is not available to this user"
    )
    assert found.to("ok-a") == []


async def test_a_service_not_registered_for_the_hook_or_disabled_is_never_called(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    other_hook = service(base, "ok-a", hook="order-sign")
    disabled = service(base, "ok-b", enabled=False)
    outcome = await stack.engine.run_hook(stack.call(user, mine), [other_hook, disabled])
    assert outcome.results == []
    assert found.received == []


async def test_plain_http_to_a_service_is_refused_without_the_loopback_opt_in(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    outcome = await stack.engine.run_hook(stack.call(user, mine), [service(base, "ok-a", allow_http_loopback=False)])
    assert outcome.results[0].status == "error"
    assert outcome.results[0].reason == "service URL refused: refusing non-https URL http://127.0.0.1"
    assert found.received == []


def _client_certificate(tmp_path: Path) -> CertPaths:
    out = CertPaths(cert=tmp_path / "ehr-client.pem", key=tmp_path / "ehr-client-key.pem")
    return issue_certificate(tmp_path, ["ehr.test"], out)


async def test_a_tls_service_requiring_a_client_certificate_gets_the_ehrs_certificate(
    stack: EngineStack, tmp_path: Path
) -> None:
    ca = ensure_ca(tmp_path)
    server = issue_certificate(
        tmp_path, ["localhost", "127.0.0.1"], CertPaths(tmp_path / "srv.pem", tmp_path / "srv-key.pem")
    )
    client = _client_certificate(tmp_path)
    found = Doubles()
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    with serve(found.app(), certfile=server.cert, keyfile=server.key, client_ca=ca.cert) as port:
        base = f"https://localhost:{port}"
        without = await stack.engine.run_hook(stack.call(user, mine), [service(base, "ok-a")])
        with_cert = service(base, "ok-a", client_cert_file=str(client.cert), client_key_file=str(client.key))
        outcome = await stack.engine.run_hook(stack.call(user, mine), [with_cert])
    assert without.results[0].status == "error"
    # TLS 1.3: the server refuses the handshake that offered no client certificate.
    assert without.results[0].reason == "service unreachable (ConnectError)"
    assert outcome.results[0].status == "ok", outcome.results[0].reason
    assert len(found.to("ok-a")) == 1
    await verify_client_jwt(stack, found.to("ok-a")[0].headers["authorization"], with_cert.url)


async def test_the_scope_sent_is_no_wider_than_approved(stack: EngineStack, doubles: tuple[Doubles, str]) -> None:
    found, base = doubles
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    narrow = service(base, "ok-a", scope="patient/Patient.rs")
    await stack.engine.run_hook(stack.call(user, mine), [narrow])
    [received] = found.to("ok-a")
    assert received.body["fhirAuthorization"]["scope"] == "patient/Patient.rs"
    assert SCOPES != "patient/Patient.rs"


async def test_a_services_client_for_its_old_certificate_is_closed_once_it_is_given_another(
    stack: EngineStack, tmp_path: Path
) -> None:
    ca = ensure_ca(tmp_path)
    server = issue_certificate(
        tmp_path, ["localhost", "127.0.0.1"], CertPaths(tmp_path / "srv.pem", tmp_path / "srv-key.pem")
    )
    first = _client_certificate(tmp_path)
    second = issue_certificate(tmp_path, ["ehr.test"], CertPaths(tmp_path / "ehr-2.pem", tmp_path / "ehr-2-key.pem"))
    found = Doubles()
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    with serve(found.app(), certfile=server.cert, keyfile=server.key, client_ca=ca.cert) as port:
        base = f"https://localhost:{port}"
        old_paths = (str(first.cert), str(first.key))
        new_paths = (str(second.cert), str(second.key))
        before = service(base, "ok-a", client_cert_file=old_paths[0], client_key_file=old_paths[1])
        assert (await stack.engine.run_hook(stack.call(user, mine), [before])).results[0].status == "ok"
        old = stack.engine.mtls.current(old_paths)
        assert old is not None and not old.is_closed

        after = replace(before, client_cert_file=new_paths[0], client_key_file=new_paths[1])
        outcome = await stack.engine.run_hook(stack.call(user, mine), [after])
        assert outcome.results[0].status == "ok", outcome.results[0].reason
        assert old.is_closed and stack.engine.mtls.current(old_paths) is None
        new = stack.engine.mtls.current(new_paths)
        assert new is not None and not new.is_closed

        await stack.engine.forget_service("ok-a")  # disabled by the administrator
        assert new.is_closed and stack.engine.mtls.current(new_paths) is None
    assert len(found.to("ok-a")) == 2
