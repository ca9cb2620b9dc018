"""Who may see which patient: the Patient compartment restriction of every read and search.

A token sees resources in the Patient compartment (CompartmentDefinition-patient, derived into
fhirserver/data by data/derive.py; a Patient is in its own compartment) of the patients its
context, its user's panel or its scopes allow (`Restriction`, built per request by
`restriction_for` from the guard's decisions). The rule is applied in SQL
(`compartment_condition`, `own_condition`: fhirserver.search puts them in every statement it
builds), and as one indexed lookup (`in_compartment`). A practitioner's panel, which a user
token's compartment is, comes from the reference index (`patients_of_practitioner`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, and_, false, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from fhirserver import storage
from fhirserver.guard import Access, ForbiddenError, View
from fhirserver.models import SearchReferenceRow
from fhirserver.searchparams import SUPPORTED_TYPES, compartment_params

__all__ = [
    "COMPARTMENT_TYPES",
    "Filters",
    "Restriction",
    "compartment_condition",
    "in_compartment",
    "own_condition",
    "patients_of_practitioner",
    "restriction_for",
]

# The supported types in the Patient compartment besides Patient itself (Patient/$everything).
COMPARTMENT_TYPES: list[str] = sorted(t for t in SUPPORTED_TYPES if t != "Patient" and compartment_params(t))
Filters = list[list[tuple[str, str]]]
REF = SearchReferenceRow
Cond = ColumnElement[bool]


@dataclass(frozen=True)
class Restriction:
    """What the caller may see; applied inside SQL to matches, totals and included resources.

    - allowed_patient_ids: only resources in the Patient compartment of one of these patients
      (CompartmentDefinition-patient; a Patient is in its own compartment); types outside that
      compartment are invisible. None means no compartment restriction.
    - extra_filters: granular scope filters for the searched type, an OR of AND-groups of search
      parameters, e.g. [[("category", "laboratory")]]. Empty means no filter. A group with a
      parameter this server cannot evaluate matches nothing (fail closed).
    - types: the resource types that may be returned at all (None: any).
    - type_filters: like extra_filters, for other types (included resources, _has and chains).
    - own_practitioner, own_types: besides the compartment, in these types (Practitioner,
      PractitionerRole) the user's own Practitioner and the PractitionerRoles naming it are
      visible (`own_condition`); nothing else outside the compartment is.
    """

    allowed_patient_ids: frozenset[str] | None = None
    extra_filters: Filters = field(default_factory=list)
    types: frozenset[str] | None = None
    type_filters: dict[str, Filters] = field(default_factory=dict)
    own_practitioner: str | None = None
    own_types: frozenset[str] = frozenset()

    def shows_own(self, rtype: str) -> bool:
        return self.own_practitioner is not None and rtype in self.own_types


def restriction_for(access: Access, view: View | None) -> Restriction:
    """The searched type's own restriction, plus what included/chained types may show."""
    if view is None:  # the view is taken with the first access decision; refuse rather than widen
        raise ForbiddenError
    patients = access.patient_ids
    if view.patient_ids is not None:
        patients = view.patient_ids if patients is None else patients & view.patient_ids
    # The user's own Practitioner (and roles): in the searched type only if this interaction
    # reads it (a write never reaches them this way), in included types as the view says.
    own_types = view.own_types - {access.resource_type}
    if access.own_practitioner is not None:
        own_types |= {access.resource_type}
    return Restriction(
        allowed_patient_ids=patients,
        extra_filters=[list(group) for group in access.filters],
        types=view.types,
        type_filters={t: [list(g) for g in f] for t, f in view.type_filters.items()},
        own_practitioner=(access.own_practitioner or view.own_practitioner) if own_types else None,
        own_types=frozenset(own_types),
    )


def compartment_condition(rtype: str, id_col: ColumnElement[str], patient_ids: frozenset[str]) -> Cond:
    """`id_col` is in the Patient compartment of one of `patient_ids` (CompartmentDefinition-patient)."""
    codes = compartment_params(rtype)
    if codes is None or not patient_ids:
        return false()
    members = select(REF.resource_id).where(
        REF.target_id.in_(sorted(patient_ids)),
        REF.target_type == "Patient",
        REF.resource_type == rtype,
        REF.param.in_(codes),
    )
    cond = id_col.in_(members)
    return or_(id_col.in_(sorted(patient_ids)), cond) if rtype == "Patient" else cond


def own_condition(rtype: str, id_col: ColumnElement[str], practitioner_id: str) -> Cond:
    """`id_col` is the user's own Practitioner, or a PractitionerRole whose `practitioner` is them."""
    if rtype == "Practitioner":
        return id_col == practitioner_id
    if rtype == "PractitionerRole":
        return id_col.in_(
            select(REF.resource_id).where(
                REF.resource_type == "PractitionerRole",
                REF.param == "practitioner",
                REF.target_type == "Practitioner",
                REF.target_id == practitioner_id,
            )
        )
    return false()


async def in_compartment(session: AsyncSession, rtype: str, rid: str, patient_ids: frozenset[str] | None) -> bool:
    """Is `rtype/rid` in the Patient compartment of one of `patient_ids`? (one indexed lookup)"""
    if not patient_ids:
        return False
    if rtype == "Patient" and rid in patient_ids:
        return True
    codes = compartment_params(rtype)
    if codes is None:
        return False
    await storage.flush_index(session)
    stmt = (
        select(literal(1))
        .where(
            REF.resource_type == rtype,
            REF.resource_id == rid,
            REF.param.in_(codes),
            REF.target_type == "Patient",
            REF.target_id.in_(sorted(patient_ids)),
        )
        .limit(1)
    )
    return (await session.execute(stmt)).first() is not None


async def patients_of_practitioner(session: AsyncSession, practitioner_id: str) -> frozenset[str]:
    """A practitioner's patients: those whose Patient.generalPractitioner names them, and the
    subjects of every CareTeam with them as a participant member."""
    await storage.flush_index(session)
    named = and_(REF.target_id == practitioner_id, REF.target_type == "Practitioner")
    by_gp = select(REF.resource_id).where(named, REF.resource_type == "Patient", REF.param == "general-practitioner")
    teams = select(REF.resource_id).where(named, REF.resource_type == "CareTeam", REF.param == "participant")
    member = aliased(SearchReferenceRow)
    by_team = select(member.target_id).where(
        member.resource_type == "CareTeam",
        member.resource_id.in_(teams),
        member.param == "subject",
        member.target_type == "Patient",
    )
    rows = await session.execute(by_gp.union(by_team))
    return frozenset(r for (r,) in rows if r)
