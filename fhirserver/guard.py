"""The FHIR server's guard (docs/security.md "The FHIR server's guard").

Every request but /metadata and /.well-known: a bearer token verified as an access token
(`common/access_token.py`, RFC 9068 §4: signature against the authorization server's JWKS —
cached, refetched on an unknown kid, rate-limited —, the access-token `typ`, so an id_token or a
CDS Hooks JWT is never one, `iss` the authorization server, `aud` this server's base URL exactly
(RFC 8707: a token for another resource server is refused), not expired) → not revoked
(revocations.py) → scopes (SMART v1 and v2, granular `?param=` filters) → compartment:
`patient/` scopes see only the token's patient's compartment, `user/` scopes only the user's
patients, `system/` scopes only tokens of backend clients.
Outside the compartment, a token whose `fhirUser` is a Practitioner may read and search (with a
patient/ or user/ scope for the type) that Practitioner and their PractitionerRoles, and nothing
else: SMART App Launch 2.2 "fhirUser" lets an app read the user, and a CDS prefetch
`Practitioner/{{userPractitionerId}}` names them.

Authentication failures are a bare 401 with `WWW-Authenticate: Bearer error="invalid_token"`
(RFC 6750 §3.1) and no detail.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from common.access_token import verify_access_token
from common.clock import Clock
from common.errors import TokenInvalidError
from common.jwks import JwksCache
from common.scopes import InvalidScopeError, ResourceScope, ScopeSet, parse_scopes
from fhirserver.revocations import RevocationWatcher

log = logging.getLogger(__name__)
Permission = Literal["c", "r", "u", "d", "s"]
# A practitioner's panel is re-read at most this often: care-team changes apply within 2 s.
PANEL_CACHE_SECONDS = 2.0
# The types in which a Practitioner user's own resources are visible outside the compartment.
OWN_TYPES = frozenset({"Practitioner", "PractitionerRole"})
VERIFIED_CACHE_SIZE = 10_000


def _raise_forbidden() -> Access:
    raise ForbiddenError


class UnauthorizedError(Exception):
    """Answered as a bare 401 (invalid_token)."""


class UnavailableError(Exception):
    """The guard cannot decide safely (revocation view stale): 503."""


class ForbiddenError(Exception):
    """The token has no scope at all for this type and interaction: 403 OperationOutcome."""


@dataclass(frozen=True)
class Principal:
    claims: dict[str, Any]
    client_id: str
    subject: str
    scopes: ScopeSet
    patient: str | None
    fhir_user: tuple[str, str] | None  # ("Practitioner", "123")
    # What the guard decided for this token that depends on nothing but the token (its scopes,
    # patient and client): shared by every request with the same verified token. Decisions that
    # read a practitioner's panel are never kept here (the panel has its own 2 s cache).
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def acting_for_cds_service(self) -> bool:
        """A token the EHR obtained for a CDS Service by token exchange (RFC 8693 `act`)."""
        return isinstance(self.claims.get("act"), dict)


@dataclass(frozen=True)
class Access:
    """What a principal may see of one type for one interaction.

    `patient_ids` None means unrestricted (system scopes); `filters` are granular scope filters
    (OR of AND-groups); empty means none. `own_practitioner`: for a read or search of one of
    OWN_TYPES by a Practitioner user, that Practitioner's id (their own resources are visible
    besides the compartment); None otherwise, and always for writes.
    """

    patient_ids: frozenset[str] | None
    filters: tuple[tuple[tuple[str, str], ...], ...]
    resource_type: str = ""
    own_practitioner: str | None = None


@dataclass(frozen=True)
class View:
    """Readable types, their granular filters, and the patients any of them may come from."""

    types: frozenset[str]
    type_filters: dict[str, tuple[tuple[tuple[str, str], ...], ...]]
    patient_ids: frozenset[str] | None
    # The readable OWN_TYPES in which the Practitioner user's own resources show (includes).
    own_types: frozenset[str] = frozenset()
    own_practitioner: str | None = None


def _fhir_user(claims: dict[str, Any], fhir_base: str) -> tuple[str, str] | None:
    value = claims.get("fhirUser")
    if not isinstance(value, str):
        return None
    relative = value.removeprefix(fhir_base.rstrip("/") + "/")
    parts = relative.split("/")
    if len(parts) != 2 or parts[0] not in ("Practitioner", "Patient", "RelatedPerson", "PractitionerRole"):
        return None
    return parts[0], parts[1]


class Guard:
    def __init__(
        self,
        *,
        jwks: JwksCache,
        revocations: RevocationWatcher,
        issuer: str,
        fhir_base: str,
        clock: Clock,
        leeway: int,
        patients_of: Callable[[str], Awaitable[frozenset[str]]],
    ) -> None:
        self._jwks = jwks
        self._revocations = revocations
        self._issuer = issuer.rstrip("/")
        self._fhir_base = fhir_base
        self._clock = clock
        self._leeway = leeway
        self._patients_of = patients_of
        self._panel_cache: dict[str, tuple[frozenset[str], float]] = {}
        # Tokens whose signature and claims were verified, with their parsed scopes: a P-384
        # verification costs ~1 ms, a dict lookup nothing. Expiry and revocation are still
        # checked on every request.
        self._verified: dict[str, tuple[dict[str, Any], ScopeSet, dict[Any, Any]]] = {}

    async def principal(self, authorization: str | None) -> Principal:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise UnauthorizedError
        cached = self._verified.get(token)
        if cached is not None:
            claims, scopes, memo = cached
            # Verified before: only expiry (and revocation, below) can have changed since.
            if claims["exp"] + self._leeway <= self._clock():
                del self._verified[token]
                raise UnauthorizedError
            await self._revocations.until_fresh()
            return self._principal(claims, scopes, memo)
        try:
            claims = await verify_access_token(
                token,
                self._jwks.key_set,
                issuer=self._issuer,
                audience=self._fhir_base,
                clock=self._clock,
                leeway=self._leeway,
            )
            scopes = parse_scopes(str(claims.get("scope", "")))
        except (TokenInvalidError, InvalidScopeError) as exc:
            log.info("refused access token: %s", getattr(exc, "reason", exc))
            raise UnauthorizedError from None
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        fresh: dict[Any, Any] = {}
        self._verified[token] = (claims, scopes, fresh)
        await self._revocations.until_fresh()
        return self._principal(claims, scopes, fresh)

    def _principal(self, claims: dict[str, Any], scopes: ScopeSet, memo: dict[Any, Any]) -> Principal:
        if not self._revocations.fresh():
            raise UnavailableError
        if self._revocations.is_revoked(str(claims["jti"])):
            log.info("refused access token: revoked")
            raise UnauthorizedError
        patient = claims.get("patient")
        return Principal(
            claims=claims,
            client_id=str(claims.get("client_id", "")),
            subject=str(claims.get("sub", "")),
            scopes=scopes,
            patient=patient if isinstance(patient, str) and patient else None,
            fhir_user=_fhir_user(claims, self._fhir_base),
            memo=memo,
        )

    async def access(self, principal: Principal, resource_type: str, permission: Permission) -> Access:
        """The restriction for `resource_type`; ForbiddenError if no scope grants the interaction."""
        key = ("access", resource_type, permission)
        known = principal.memo.get(key)
        if known is not None:
            return known if isinstance(known, Access) else _raise_forbidden()
        try:
            access, from_panel = await self._access(principal, resource_type, permission)
        except ForbiddenError:
            principal.memo[key] = False
            raise
        if not from_panel:
            principal.memo[key] = access
        return access

    async def _access(self, principal: Principal, resource_type: str, permission: Permission) -> tuple[Access, bool]:
        """(the access, whether it was read from a practitioner's panel, which may change)."""
        from_panel = False
        patient_ids: set[str] = set()
        unrestricted = False
        matched: list[ResourceScope] = []
        for context in ("patient", "user", "system"):
            scopes = principal.scopes.permits(context, resource_type, permission)
            if not scopes:
                continue
            if context == "patient":
                if principal.patient is None:
                    continue  # a patient/ scope without a patient in context grants nothing
                patient_ids.add(principal.patient)
            elif context == "user":
                patient_ids |= await self._user_patients(principal)
                from_panel = True
            elif principal.fhir_user is None and principal.patient is None:
                unrestricted = True  # system/ scopes: backend clients only, never user-bound tokens
            else:
                continue
            matched.extend(scopes)
        if not matched:
            raise ForbiddenError
        filters: tuple[tuple[tuple[str, str], ...], ...] = ()
        if all(s.params for s in matched):
            filters = tuple(s.params for s in matched)
        own = None
        if permission in ("r", "s") and resource_type in OWN_TYPES and not unrestricted:
            # Only patient/ or user/ scopes matched here (system/ ones never do for a user-bound
            # token): the user may read themself, never another Practitioner (SMART "fhirUser").
            own = principal.fhir_user[1] if principal.fhir_user and principal.fhir_user[0] == "Practitioner" else None
        access = Access(
            patient_ids=None if unrestricted else frozenset(patient_ids),
            filters=filters,
            resource_type=resource_type,
            own_practitioner=own,
        )
        return access, from_panel

    async def view(self, principal: Principal, types: list[str]) -> View:
        """What the principal may read across types: for includes, chains and _has.

        The patient set is the intersection of every readable type's set, so an included
        resource can never come from a patient the searched type's scopes would not cover.
        """
        key = ("view", tuple(types))
        known = principal.memo.get(key)
        if isinstance(known, View):
            return known
        from_panel = False
        readable: set[str] = set()
        type_filters: dict[str, tuple[tuple[tuple[str, str], ...], ...]] = {}
        patient_sets: list[frozenset[str]] = []
        own_types: set[str] = set()
        own: str | None = None
        for rtype in types:
            try:
                access, panel = await self._access(principal, rtype, "r")
            except ForbiddenError:
                continue
            from_panel = from_panel or panel
            readable.add(rtype)
            if access.own_practitioner is not None:
                own_types.add(rtype)
                own = access.own_practitioner
            if access.filters:
                type_filters[rtype] = access.filters
            if access.patient_ids is not None:
                patient_sets.append(access.patient_ids)
        patients = frozenset.intersection(*patient_sets) if patient_sets else None
        view = View(
            types=frozenset(readable),
            type_filters=type_filters,
            patient_ids=patients,
            own_types=frozenset(own_types),
            own_practitioner=own,
        )
        if not from_panel:
            principal.memo[key] = view
        return view

    async def _user_patients(self, principal: Principal) -> frozenset[str]:
        if principal.fhir_user is None:
            return frozenset()
        kind, rid = principal.fhir_user
        if kind == "Patient":
            return frozenset({rid})
        if kind == "Practitioner":
            now = self._clock()
            cached = self._panel_cache.get(rid)
            if cached is not None and now - cached[1] < PANEL_CACHE_SECONDS:
                return cached[0]
            patients = await self._patients_of(rid)
            if len(self._panel_cache) > 10_000:
                self._panel_cache.clear()
            self._panel_cache[rid] = (patients, now)
            return patients
        return frozenset()
