"""Token exchange for the EHR (RFC 8693): a token for one CDS Service, one user, one patient.

CDS Hooks 2.0 "Passing the Access Token to the CDS Service" and the Argonaut risk assessment
(R5, R7, R11, R15, R17) ask that the `fhirAuthorization` token be bound to the invoked service
and the current user, limited to what the user may see, and short-lived. The EHR asks here:

    POST /token
      grant_type=urn:ietf:params:oauth:grant-type:token-exchange
      client_assertion_type / client_assertion        the EHR, private_key_jwt
      subject_token, subject_token_type               the user (see below)
      cds_service=<client_id of the CDS Service>      who the token is for
      patient=<Patient id>                            the patient in context
      resource=<FHIR base URL>                        RFC 8707: where it will be used
      scope=<requested scopes>

Subject (RFC 8693 §2.1): either the user's own session access token issued by this server to the
EHR (`...:token-type:access_token`), or a user assertion the EHR signed
(`...:token-type:jwt`, header typ `user+jwt`, iss = the EHR's client_id, sub = the user's FHIR
reference, aud = the token URL, lifetime ≤ 60 s, single-use jti) — only first-party clients may
use the latter.

Granted scope = requested ∩ the service's approved scopes ∩ the user's role ceiling; a patient
outside the user's reach is refused with the same answer as a patient that does not exist.

Without `cds_service`, the first-party EHR asks for a token for itself, acting as the user for
one patient (RFC 8693 §2.1: the audience/resource and the requested scope say what the issued
token is for; omitting the party it is for means the requesting client). The EHR uses it to
apply what the user accepted (a card's suggestion, a service's systemActions) through the FHIR
server as that user: `patient/` scopes only (default `patient/*.cruds`), narrowed to the user's
role ceiling, bound to the patient, so the FHIR server keeps every write inside that patient's
compartment. The same actor rule applies: only the first-party EHR may ask.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from authserver.clients import Client
from authserver.errors import InvalidGrantError, InvalidRequestError, InvalidScopeError, UnauthorizedClientError
from authserver.tokens import Grant
from authserver.users import User
from common.discovery import TOKEN_EXCHANGE
from common.scopes import InvalidScopeError as ScopeSyntaxError
from common.scopes import ScopeSet, narrow, parse_scopes

GRANT_TYPE = TOKEN_EXCHANGE
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 - a URN, not a secret
USER_ASSERTION_TYP = "user+jwt"
USER_ASSERTION_MAX_LIFETIME = 60
# What the EHR asks for itself when it names no scope: the patient's compartment, read and write.
EHR_SELF_DEFAULT_SCOPE = "patient/*.cruds"


@dataclass(frozen=True)
class ExchangeRequest:
    actor: Client  # the authenticated EHR
    service: Client | None  # the CDS Service the token is for; None: the EHR itself, as the user
    user: User
    patient: str
    scope: str
    audience: str


def check_actor(actor: Client) -> None:
    if actor.kind != "ehr" or not actor.first_party or actor.auth_method != "private_key_jwt":
        raise UnauthorizedClientError(
            "only a first-party EHR client authenticating with private_key_jwt may exchange tokens for CDS Services"
        )


def check_service(service: Client | None) -> Client:
    if service is None or not service.active or service.kind != "cds-service":
        raise InvalidRequestError("cds_service does not name an active, registered CDS Service")
    return service


async def exchange_grant(
    request: ExchangeRequest, can_see: Callable[[User, str], Awaitable[bool]], lifetime: int
) -> Grant:
    if request.service is None:
        return await _self_grant(request, can_see, lifetime)
    try:
        requested = parse_scopes(request.scope or request.service.scope)
        approved = parse_scopes(request.service.scope)
    except ScopeSyntaxError as exc:
        raise InvalidScopeError(str(exc)) from None
    if any(r.context == "system" for r in requested.resources):
        raise InvalidScopeError("system/ scopes are never exchanged on behalf of a user")
    granted = narrow(narrow(requested, approved), request.user.ceiling())
    if not granted.resources:
        raise InvalidScopeError("no requested scope is approved for this CDS Service and allowed to this user")
    return await _patient_grant(
        request,
        can_see,
        granted,
        lifetime,
        client_id=request.service.client_id,
        grant=f"token-exchange:{request.actor.client_id}",
        actor_client_id=request.actor.client_id,
    )


async def _patient_grant(
    request: ExchangeRequest,
    can_see: Callable[[User, str], Awaitable[bool]],
    granted: ScopeSet,
    lifetime: int,
    *,
    client_id: str,
    grant: str,
    actor_client_id: str | None = None,
) -> Grant:
    """The user's token for one patient, once the patient is within the user's reach."""
    if not await can_see(request.user, request.patient):
        # Same words whether the patient is missing or out of reach: no existence oracle.
        raise InvalidGrantError("the patient is not available to this user")
    return Grant(
        client_id=client_id,
        sub=request.user.username,
        scope=str(granted),
        audience=request.audience,
        lifetime=lifetime,
        grant=grant,
        patient=request.patient,
        fhir_user=f"{request.audience}/{request.user.fhir_user}",
        actor_client_id=actor_client_id,
    )


async def _self_grant(
    request: ExchangeRequest, can_see: Callable[[User, str], Awaitable[bool]], lifetime: int
) -> Grant:
    """A token for the EHR itself acting as the user, for one patient's compartment only."""
    try:
        requested = parse_scopes(request.scope or EHR_SELF_DEFAULT_SCOPE)
    except ScopeSyntaxError as exc:
        raise InvalidScopeError(str(exc)) from None
    if any(r.context != "patient" for r in requested.resources) or requested.other:
        raise InvalidScopeError("the EHR's own token for a user and a patient carries patient/ scopes only")
    granted = narrow(requested, request.user.ceiling())
    if not granted.resources:
        raise InvalidScopeError("no requested scope is allowed to this user")
    return await _patient_grant(
        request,
        can_see,
        granted,
        lifetime,
        client_id=request.actor.client_id,
        grant=f"token-exchange-self:{request.actor.client_id}",
    )
