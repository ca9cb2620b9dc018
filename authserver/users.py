"""People who log in, and what each role may do at all (before the per-patient rule).

A practitioner may act on any patient in their reach (docs/security.md "The FHIR server's guard": the patients whose
Patient.generalPractitioner or a CareTeam.participant.member names them; the FHIR server decides
that, see reach.py). A patient may read their own record only.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from authserver.models import UserRow
from common.scopes import ScopeSet, parse_scopes

# The most each role could ever be granted; a grant is always narrowed to this.
ROLE_CEILING = {
    "Practitioner": (
        "patient/*.cruds user/*.cruds openid fhirUser profile launch launch/patient online_access offline_access"
    ),
    "Patient": "patient/*.rs openid fhirUser profile launch/patient online_access offline_access",
}


@dataclass(frozen=True)
class User:
    username: str
    fhir_user: str  # relative reference, e.g. "Practitioner/123"
    display: str

    @property
    def role(self) -> str:
        return self.fhir_user.split("/", 1)[0]

    @property
    def resource_id(self) -> str:
        return self.fhir_user.split("/", 1)[1]

    def ceiling(self) -> ScopeSet:
        return parse_scopes(ROLE_CEILING.get(self.role, ""))


def _user(row: UserRow | None) -> User | None:
    if row is None or not row.active:
        return None
    return User(username=row.username, fhir_user=row.fhir_user, display=row.display)


async def by_username(session: AsyncSession, username: str) -> User | None:
    return _user(await session.get(UserRow, username))


async def by_fhir_user(session: AsyncSession, reference: str) -> User | None:
    row = (await session.execute(select(UserRow).where(UserRow.fhir_user == reference))).scalars().first()
    return _user(row)
