"""The authorization server's grant rules, as pure functions: no database, no HTTP.

client_credentials (SMART Backend Services), the authorization code's bindings (RFC 6749 §4.1.3,
RFC 7636 §4.6), the refresh token's rules (RFC 6749 §6, RFC 9700 §4.14.2) and token exchange
(RFC 8693, CDS Hooks fhirAuthorization), and the table /token dispatches through.
"""

from __future__ import annotations

from typing import Any

import pytest

from authserver import grants, refresh
from authserver.client_credentials import client_credentials_grant
from authserver.clients import AuthMethod, Client, Kind
from authserver.codes import binding_failure, s256
from authserver.errors import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    InvalidTargetError,
    UnauthorizedClientError,
)
from authserver.launch_options import LaunchOptions
from authserver.models import AuthorizationCodeRow, RefreshTokenRow
from authserver.settings import AuthSettings
from authserver.token_exchange import ExchangeRequest, check_actor, check_service, exchange_grant
from authserver.users import User
from common.discovery import GRANT_TYPES
from common.scopes import parse_scopes

FHIR = "https://fhir.test/fhir"
NOW = 1_800_000_000
VERIFIER = "v" * 43
DR_A = User(username="dr.a", fhir_user="Practitioner/dr-a", display="Dr A")
PAT = User(username="pat.a1", fhir_user="Patient/p-a1", display="Pat")


def client(
    client_id: str = "backend-1",
    kind: Kind = "backend",
    auth_method: AuthMethod = "private_key_jwt",
    scope: str = "system/Patient.rs system/Observation.rs",
    *,
    first_party: bool = False,
    active: bool = True,
) -> Client:
    return Client(
        client_id=client_id,
        kind=kind,
        name=client_id,
        auth_method=auth_method,
        scope=scope,
        first_party=first_party,
        active=active,
    )


# --- client_credentials ---------------------------------------------------------------------------


def test_a_backend_gets_the_requested_system_scope_it_was_pre_authorised_for() -> None:
    grant = client_credentials_grant(client(), "system/Patient.rs", FHIR, 300)
    assert (grant.client_id, grant.sub, grant.scope, grant.audience, grant.lifetime) == (
        "backend-1",
        "backend-1",
        "system/Patient.rs",
        FHIR,
        300,
    )
    assert grant.grant == "client_credentials:backend-1" and grant.patient is None


def test_a_backend_that_names_no_scope_gets_its_whole_pre_authorised_scope() -> None:
    grant = client_credentials_grant(client(), "", FHIR, 300)
    assert parse_scopes(grant.scope) == parse_scopes("system/Patient.rs system/Observation.rs")


@pytest.mark.parametrize(
    ("kind", "method"),
    [("smart-app", "private_key_jwt"), ("ehr", "private_key_jwt"), ("backend", "client_secret_basic")],
)
def test_client_credentials_is_refused_to_anything_but_a_backend_with_private_key_jwt(
    kind: Kind, method: AuthMethod
) -> None:
    with pytest.raises(UnauthorizedClientError):
        client_credentials_grant(client(kind=kind, auth_method=method), "system/Patient.rs", FHIR, 300)


@pytest.mark.parametrize("scope", ["user/Patient.rs", "patient/*.rs", "system/Patient.rs user/Observation.rs"])
def test_a_backend_asking_for_a_user_or_patient_scope_is_refused(scope: str) -> None:
    with pytest.raises(InvalidScopeError):
        client_credentials_grant(client(), scope, FHIR, 300)


def test_a_backend_asking_only_for_what_it_was_not_pre_authorised_for_is_refused() -> None:
    with pytest.raises(InvalidScopeError):
        client_credentials_grant(client(), "system/Encounter.rs", FHIR, 300)


def test_a_backend_asking_for_more_than_pre_authorised_is_narrowed() -> None:
    grant = client_credentials_grant(client(scope="system/Patient.rs"), "system/Patient.cruds", FHIR, 300)
    assert grant.scope == "system/Patient.rs"


def test_a_malformed_scope_is_invalid_scope() -> None:
    with pytest.raises(InvalidScopeError):
        client_credentials_grant(client(), "system/", FHIR, 300)


# --- authorization_code ----------------------------------------------------------------------------


def code_row(**overrides: Any) -> AuthorizationCodeRow:
    values: dict[str, Any] = {
        "code_hash": "h",
        "family": "smart:f",
        "client_id": "app",
        "redirect_uri": "https://app.test/cb",
        "code_challenge": s256(VERIFIER),
        "username": "dr.a",
        "scope": "openid patient/*.rs",
        "auth_time": NOW - 10,
        "created_at": NOW - 10,
        "expires_at": NOW + 50,
    }
    values.update(overrides)
    return AuthorizationCodeRow(**values)


APP = client("app", kind="smart-app", auth_method="none", scope="openid patient/*.rs")


def test_a_code_redeemed_by_its_client_with_its_redirect_uri_and_verifier_is_accepted() -> None:
    assert binding_failure(code_row(), APP, "https://app.test/cb", VERIFIER, NOW) == ""


@pytest.mark.parametrize(
    ("row", "who", "redirect_uri", "verifier", "reason"),
    [
        (code_row(expires_at=NOW), APP, "https://app.test/cb", VERIFIER, "expired"),
        (code_row(), client("other", kind="smart-app"), "https://app.test/cb", VERIFIER, "not issued to this client"),
        (code_row(), APP, "https://app.test/cb/", VERIFIER, "redirect_uri does not match"),
        (code_row(), APP, "https://app.test/cb", "", "missing or malformed"),
        (code_row(), APP, "https://app.test/cb", "short", "missing or malformed"),
        (code_row(), APP, "https://app.test/cb", "w" * 43, "does not match the code_challenge"),
        (code_row(code_challenge=VERIFIER), APP, "https://app.test/cb", VERIFIER, "does not match the code_challenge"),
    ],
)
def test_a_code_with_a_broken_binding_is_refused_with_the_reason(
    row: AuthorizationCodeRow, who: Client, redirect_uri: str, verifier: str, reason: str
) -> None:
    assert reason in binding_failure(row, who, redirect_uri, verifier, NOW)


def test_the_pkce_challenge_is_the_base64url_sha256_of_the_verifier() -> None:
    # RFC 7636 Appendix B.
    assert s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


# --- refresh_token -----------------------------------------------------------------------------------


def refresh_row(**overrides: Any) -> RefreshTokenRow:
    values: dict[str, Any] = {
        "token_hash": "h",
        "family": "smart:f",
        "client_id": "app",
        "username": "dr.a",
        "scope": "patient/*.rs offline_access",
        "access": "offline",
        "created_at": NOW - 100,
        "expires_at": NOW + 1000,
    }
    values.update(overrides)
    return RefreshTokenRow(**values)


def test_a_fresh_unexpired_refresh_token_of_the_client_may_be_rotated() -> None:
    assert refresh.refusal(refresh_row(), "app", True, NOW) is None


def test_a_refresh_token_presented_by_another_client_revokes_its_family() -> None:
    refused = refresh.refusal(refresh_row(), "intruder", True, NOW)
    assert refused is not None and refused.revoke_family and "not issued to this client" in refused.reason


def test_a_rotated_refresh_token_presented_again_revokes_its_family() -> None:
    refused = refresh.refusal(refresh_row(used_at=NOW - 5), "app", False, NOW)
    assert refused is not None and refused.revoke_family and "already used" in refused.reason


def test_a_revoked_or_expired_refresh_token_is_refused_without_more_revocation() -> None:
    revoked = refresh.refusal(refresh_row(revoked_at=NOW - 5), "app", False, NOW)
    expired = refresh.refusal(refresh_row(expires_at=NOW), "app", True, NOW)
    for refused in (revoked, expired):
        assert refused is not None and not refused.revoke_family and "revoked or expired" in refused.reason


def test_a_launch_that_asked_for_refresh_refused_is_refused() -> None:
    options = LaunchOptions(simulate_error="refresh_refused").column()
    refused = refresh.refusal(refresh_row(launch_options=options), "app", True, NOW)
    assert refused is not None and "simulated" in refused.reason and not refused.revoke_family


def test_a_refresh_without_scope_keeps_the_family_scope() -> None:
    assert refresh.requested_scope("  ", "patient/*.rs offline_access") == "patient/*.rs offline_access"


def test_a_refresh_may_narrow_the_scope() -> None:
    assert refresh.requested_scope("patient/Patient.r", "patient/*.rs offline_access") == "patient/Patient.r"


@pytest.mark.parametrize("asked", ["patient/*.cruds", "user/*.rs", "patient/*.rs launch", "patient/"])
def test_a_refresh_may_never_widen_the_scope(asked: str) -> None:
    with pytest.raises(InvalidScopeError):
        refresh.requested_scope(asked, "patient/*.rs offline_access")


def test_a_refresh_is_narrowed_to_the_app_registration_and_the_user_role_of_today() -> None:
    app = client("app", kind="smart-app", scope="patient/Observation.rs offline_access")
    assert refresh.current_scope("patient/*.rs offline_access", app, DR_A) == "patient/Observation.rs offline_access"
    patient_app = client("app", kind="smart-app", scope="patient/*.cruds")
    assert refresh.current_scope("patient/*.cruds", patient_app, PAT) == "patient/*.rs"


@pytest.mark.parametrize(
    ("scope", "session_hash", "access"),
    [
        ("openid offline_access", None, "offline"),
        ("openid offline_access online_access", "s", "offline"),
        ("openid online_access", "s", "online"),
        ("openid online_access", None, None),
        ("openid patient/*.rs", "s", None),
    ],
)
def test_the_kind_of_refresh_token_follows_the_granted_scope_and_the_login_session(
    scope: str, session_hash: str | None, access: str | None
) -> None:
    assert refresh.refresh_access(parse_scopes(scope), session_hash) == access


# --- token exchange ------------------------------------------------------------------------------------

EHR = client("ehr", kind="ehr", scope="", first_party=True)
SERVICE = client("cds-a", kind="cds-service", scope="patient/Patient.rs patient/Observation.rs")


async def sees_p_a1(user: User, patient: str) -> bool:
    return user.username == "dr.a" and patient == "p-a1"


def exchange(service: Client | None = SERVICE, patient: str = "p-a1", scope: str = "") -> ExchangeRequest:
    return ExchangeRequest(actor=EHR, service=service, user=DR_A, patient=patient, scope=scope, audience=FHIR)


@pytest.mark.parametrize(
    "actor",
    [
        client("ehr", kind="ehr", first_party=False),
        client("ehr", kind="ehr", auth_method="client_secret_basic", first_party=True),
        client("backend-1", kind="backend", first_party=True),
    ],
)
def test_only_the_first_party_ehr_with_private_key_jwt_may_exchange_tokens(actor: Client) -> None:
    with pytest.raises(UnauthorizedClientError):
        check_actor(actor)
    check_actor(EHR)


@pytest.mark.parametrize(
    "service", [None, client("cds-a", kind="cds-service", active=False), client("x", kind="backend")]
)
def test_a_token_is_exchanged_only_for_an_active_registered_cds_service(service: Client | None) -> None:
    with pytest.raises(InvalidRequestError):
        check_service(service)
    assert check_service(SERVICE) is SERVICE


async def test_an_exchanged_token_is_bound_to_the_service_the_user_and_the_patient() -> None:
    grant = await exchange_grant(exchange(), sees_p_a1, 300)
    assert (grant.client_id, grant.sub, grant.patient, grant.actor_client_id) == ("cds-a", "dr.a", "p-a1", "ehr")
    assert grant.fhir_user == f"{FHIR}/Practitioner/dr-a" and grant.grant == "token-exchange:ehr"
    assert parse_scopes(grant.scope) == parse_scopes(SERVICE.scope)


async def test_a_patient_out_of_the_users_reach_is_refused_like_a_missing_one() -> None:
    with pytest.raises(InvalidGrantError) as out_of_reach:
        await exchange_grant(exchange(patient="p-b1"), sees_p_a1, 300)
    with pytest.raises(InvalidGrantError) as missing:
        await exchange_grant(exchange(patient="nobody"), sees_p_a1, 300)
    assert out_of_reach.value.description == missing.value.description


@pytest.mark.parametrize("scope", ["system/Patient.rs", "patient/Encounter.rs"])
async def test_an_exchange_for_a_system_or_unapproved_scope_is_refused(scope: str) -> None:
    with pytest.raises(InvalidScopeError):
        await exchange_grant(exchange(scope=scope), sees_p_a1, 300)


async def test_the_ehr_token_for_itself_carries_patient_scopes_only_within_the_user_role() -> None:
    grant = await exchange_grant(exchange(service=None), sees_p_a1, 300)
    assert (grant.client_id, grant.grant, grant.actor_client_id) == ("ehr", "token-exchange-self:ehr", None)
    assert grant.scope == "patient/*.cruds"
    with pytest.raises(InvalidScopeError):
        await exchange_grant(exchange(service=None, scope="user/*.rs"), sees_p_a1, 300)


# --- the /token table ----------------------------------------------------------------------------------


def test_the_token_endpoint_dispatches_exactly_the_grant_types_the_metadata_announces() -> None:
    assert set(grants.GRANTS) == set(GRANT_TYPES)


@pytest.mark.parametrize("resource", ["", FHIR, FHIR + "/"])
def test_a_token_is_for_the_fhir_server_whatever_form_of_its_url_is_named(resource: str) -> None:
    settings = AuthSettings(fhir_base_url=FHIR)
    assert grants.audience(settings, resource) == FHIR


def test_a_resource_that_is_not_the_fhir_server_is_invalid_target() -> None:
    with pytest.raises(InvalidTargetError):
        grants.audience(AuthSettings(fhir_base_url=FHIR), "https://evil.test/fhir")
