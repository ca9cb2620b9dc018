"""May this user see this patient? Asked of the FHIR server, which owns the rule.

Who may see whom is data-driven (Patient.generalPractitioner, CareTeam membership) and
lives in the FHIR server's guard. Rather than copy the rule, the authorization server asks the
FHIR server with a short-lived token for the user (`user/Patient.rs`, audience the FHIR base,
never recorded, never handed out): `GET {fhir}/Patient?_id=<id>&_summary=count` counts 1 only if
the patient exists *and* is in the user's reach, so a refusal never reveals which of the two
failed. Answers are cached briefly per (user, patient).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import httpx

from authserver.users import User
from common import access_token
from common.clock import Clock
from common.keys import KeyStore

REACH_CLIENT_ID = "mockehr-authserver"
REACH_SCOPE = "user/Patient.rs"
TOKEN_LIFETIME = 60
log = logging.getLogger(__name__)


class ReachUnavailableError(Exception):
    """The FHIR server could not answer: the caller must refuse (fail closed)."""


@dataclass
class FhirReach:
    http: httpx.AsyncClient
    keys: KeyStore
    issuer: str
    fhir_base: str
    clock: Clock
    # ≤ the 1 s revocation guarantee: a practitioner taken off a panel or care team loses the
    # patient at every authserver replica within a second, like a revoked token (issue 18).
    cache_seconds: float = 1.0
    _tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    _answers: dict[tuple[str, str], tuple[bool, float]] = field(default_factory=dict)

    async def _token(self, user: User) -> str:
        now = self.clock()
        cached = self._tokens.get(user.username)
        if cached and cached[1] - now > 10:
            return cached[0]
        iat = int(now)
        claims = access_token.claims(
            issuer=self.issuer,
            subject=user.username,
            audience=self.fhir_base,
            client_id=REACH_CLIENT_ID,
            scope=REACH_SCOPE,
            now=iat,
            lifetime=TOKEN_LIFETIME,
            fhir_user=f"{self.fhir_base}/{user.fhir_user}",
        )
        token = access_token.sign(claims, await self.keys.signer())
        self._tokens[user.username] = (token, iat + TOKEN_LIFETIME)
        return token

    async def can_see(self, user: User, patient_id: str) -> bool:
        if user.role == "Patient":
            return user.resource_id == patient_id
        if user.role != "Practitioner":
            return False
        now = self.clock()
        cached = self._answers.get((user.username, patient_id))
        if cached and now - cached[1] < self.cache_seconds:
            return cached[0]
        try:
            response = await self.http.get(
                f"{self.fhir_base}/Patient",
                params={"_id": patient_id, "_summary": "count"},
                headers={"Authorization": f"Bearer {await self._token(user)}", "Accept": "application/fhir+json"},
            )
        except httpx.HTTPError as exc:
            raise ReachUnavailableError(type(exc).__name__) from None
        if response.status_code != 200:
            raise ReachUnavailableError(f"FHIR server answered {response.status_code}")
        answer = bool(response.json().get("total") == 1)
        if len(self._answers) > 10_000:
            self._answers.clear()
        self._answers[(user.username, patient_id)] = (answer, now)
        return answer
