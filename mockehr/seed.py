"""Deterministic synthetic FHIR R4 data for the mock EHR.

`generate(patients, seed)` returns one transaction Bundle plus the facts other components need
(demo logins, panels, CareTeam access). Design choices:

- Determinism: every random draw comes from a `random.Random` seeded with `(seed, patient n)`, and
  every date is relative to the fixed `REFERENCE_DATE`, never "today", so the same arguments give
  byte-identical JSON on every machine and run. Patient n's clinical data does not depend on the
  other patients, which also keeps generation linear in `patients`.
- Idempotent loading: ids are uuid5 of a fixed namespace and a stable name such as "patient-7" (no
  seed in the name: re-seeding updates the same resources instead of piling up copies), every entry
  is `PUT Type/id`, and references are literal `Type/id`, so the Bundle can be re-applied as is.
- Stdlib only and no I/O: the caller decides where the Bundle goes.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final, NamedTuple

Resource = dict[str, Any]

SEED_SYSTEM: Final[str] = "https://mockehr.dev/fhir/identifier"
MIN_PATIENTS: Final[int] = 1
MAX_PATIENTS: Final[int] = 100_000
# All dates hang off this day, not the wall clock, so output never drifts with time.
REFERENCE_DATE: Final[date] = date(2026, 1, 1)

_NAMESPACE: Final[uuid.UUID] = uuid.uuid5(uuid.NAMESPACE_URL, SEED_SYSTEM)

SNOMED: Final[str] = "http://snomed.info/sct"
LOINC: Final[str] = "http://loinc.org"
RXNORM: Final[str] = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM: Final[str] = "http://unitsofmeasure.org"
NPI_SYSTEM: Final[str] = "http://hl7.org/fhir/sid/us-npi"
_HL7: Final[str] = "http://terminology.hl7.org/CodeSystem"

# SNOMED problem codes, named because lab values and medications depend on them.
DIABETES: Final[str] = "44054006"
HYPERTENSION: Final[str] = "38341003"
HYPERLIPIDEMIA: Final[str] = "55822004"
ASTHMA: Final[str] = "195967001"
ISCHEMIC_HEART_DISEASE: Final[str] = "414545008"

CONDITIONS: Final[dict[str, str]] = {
    DIABETES: "Diabetes mellitus type 2 (disorder)",
    HYPERTENSION: "Hypertensive disorder, systemic arterial (disorder)",
    HYPERLIPIDEMIA: "Hyperlipidemia (disorder)",
    ASTHMA: "Asthma (disorder)",
    ISCHEMIC_HEART_DISEASE: "Ischemic heart disease (disorder)",
}

VITAL_SIGNS: Final[dict[str, str]] = {
    "8867-4": "Heart rate",
    "29463-7": "Body weight",
    "8302-2": "Body height",
    "39156-5": "Body mass index (BMI) [Ratio]",
    "85354-9": "Blood pressure panel with all children optional",
}
SYSTOLIC: Final[tuple[str, str]] = ("8480-6", "Systolic blood pressure")
DIASTOLIC: Final[tuple[str, str]] = ("8462-4", "Diastolic blood pressure")


class _Medication(NamedTuple):
    rxnorm: str
    display: str
    dosage: str
    indications: frozenset[str]  # SNOMED problems this drug is prescribed for here


# Tables read better one record per line.
# fmt: off
MEDICATIONS: Final[tuple[_Medication, ...]] = (
    _Medication("860975", "metformin hydrochloride 500 MG Oral Tablet",
                "Take 1 tablet (500 mg) by mouth twice daily with meals", frozenset({DIABETES})),
    _Medication("314076", "lisinopril 10 MG Oral Tablet",
                "Take 1 tablet (10 mg) by mouth once daily", frozenset({HYPERTENSION})),
    _Medication("617312", "atorvastatin 40 MG Oral Tablet",
                "Take 1 tablet (40 mg) by mouth once daily at bedtime",
                frozenset({HYPERLIPIDEMIA, ISCHEMIC_HEART_DISEASE})),
    _Medication("197361", "amlodipine 5 MG Oral Tablet",
                "Take 1 tablet (5 mg) by mouth once daily", frozenset({HYPERTENSION})),
    _Medication("855332", "warfarin sodium 5 MG Oral Tablet",
                "Take 1 tablet (5 mg) by mouth once daily in the evening; dose adjusted to INR",
                frozenset({ISCHEMIC_HEART_DISEASE})),
)
# fmt: on


class _Lab(NamedTuple):
    loinc: str
    display: str
    unit: str  # UCUM code, also used as the human unit
    low: float | None  # reference range
    high: float | None
    normal: tuple[float, float]  # value range without a driving problem
    abnormal: tuple[float, float]  # value range when a driving problem is present
    drivers: frozenset[str]
    decimals: int


# Tables read better one record per line.
# fmt: off
LABS: Final[tuple[_Lab, ...]] = (
    _Lab("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 5.6,
         (4.6, 5.6), (6.6, 9.8), frozenset({DIABETES}), 1),
    _Lab("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99,
         (72, 99), (128, 240), frozenset({DIABETES}), 0),
    _Lab("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3,
         (0.6, 1.2), (0.9, 1.8), frozenset({HYPERTENSION, DIABETES}), 2),
    _Lab("18262-6", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay", "mg/dL", None, 100,
         (62, 128), (130, 195), frozenset({HYPERLIPIDEMIA, ISCHEMIC_HEART_DISEASE}), 0),
    _Lab("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1,
         (3.6, 5.0), (3.6, 5.0), frozenset(), 1),
)
# fmt: on


class _Allergen(NamedTuple):
    system: str
    code: str
    display: str
    category: str


ALLERGENS: Final[tuple[_Allergen, ...]] = (
    _Allergen(RXNORM, "7980", "penicillin G", "medication"),
    _Allergen(RXNORM, "1191", "aspirin", "medication"),
    _Allergen(RXNORM, "2670", "codeine", "medication"),
    _Allergen(SNOMED, "91935009", "Allergy to peanut (finding)", "food"),
)
_REACTIONS: Final[tuple[tuple[str, str, str], ...]] = (
    ("271807003", "Eruption of skin (disorder)", "mild"),
    ("247472004", "Wheal (finding)", "moderate"),
    ("39579001", "Anaphylaxis (disorder)", "severe"),
)

# Practitioners come from a fixed list (not the RNG) so "dr.alvarez" exists for every seed.
# fmt: off
_DOCTORS: Final[tuple[tuple[str, str, str], ...]] = (
    ("Maria", "Alvarez", "female"), ("James", "Okafor", "male"), ("Priya", "Raman", "female"),
    ("Daniel", "Kowalski", "male"), ("Aiko", "Tanaka", "female"), ("Samuel", "Brennan", "male"),
    ("Leila", "Haddad", "female"), ("Victor", "Lindqvist", "male"), ("Grace", "Mensah", "female"),
    ("Tomas", "Novak", "male"), ("Hannah", "Fischer", "female"), ("Omar", "Siddiqui", "male")
)
# fmt: on
# Tables read better several records per line.
# fmt: off
_MALE_NAMES: Final[tuple[str, ...]] = (
    "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas", "Carlos", "Luis",
    "Wei", "Ahmed", "Kevin", "Brian", "George", "Edward", "Anthony", "Mark", "Steven",
)
_FEMALE_NAMES: Final[tuple[str, ...]] = (
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah", "Karen",
    "Ana", "Mei", "Fatima", "Nancy", "Lisa", "Betty", "Sandra", "Ashley", "Emily", "Donna",
)
_FAMILY_NAMES: Final[tuple[str, ...]] = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
    "Hernandez", "Lopez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee",
    "Nguyen", "Patel", "Kim", "Chen", "Walker", "Hall", "Young", "Allen", "Wright", "Scott",
)
_STREETS: Final[tuple[str, ...]] = (
    "Maple Street", "Oak Avenue", "Cedar Lane", "Pine Road", "Elm Street", "Washington Avenue",
    "Lake Drive", "Hillside Terrace", "Park Place", "River Road"
)
# (city, state, ZIP prefix, area code)
_CITIES: Final[tuple[tuple[str, str, str, str], ...]] = (
    ("Springfield", "MA", "011", "413"), ("Worcester", "MA", "016", "508"), ("Lowell", "MA", "018", "978"),
    ("Cambridge", "MA", "021", "617"), ("Quincy", "MA", "021", "617"), ("Providence", "RI", "029", "401")
)
# fmt: on
_CLINIC_NAME: Final[str] = "MockEHR Family Medicine Clinic"


@dataclass(frozen=True)
class DemoPractitioner:
    """A seeded Practitioner who gets a demo login."""

    id: str  # FHIR id of the Practitioner
    username: str  # login name, e.g. "dr.alvarez" (lowercase ascii, unique)
    display: str  # "Dr. Maria Alvarez"
    patient_ids: tuple[str, ...]  # their panel: Patients whose generalPractitioner they are


@dataclass(frozen=True)
class SeedResult:
    """The Bundle to load and the facts about it that logins and access tests need."""

    bundle: dict[str, Any]  # one FHIR R4 transaction Bundle
    practitioners: tuple[DemoPractitioner, ...]
    patient_ids: tuple[str, ...]
    careteam_member_patients: dict[str, tuple[str, ...]]  # practitioner id -> patients reached via a CareTeam only


@dataclass(frozen=True)
class _Staff:
    index: int
    id: str
    username: str
    given: str
    family: str
    gender: str

    @property
    def display(self) -> str:
        return f"Dr. {self.given} {self.family}"

    @property
    def ref(self) -> Resource:
        return _ref("Practitioner", self.id, self.display)


@dataclass(frozen=True)
class _Visit:
    id: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class _Chart:
    """What the per-patient builders share: who, when, what they have."""

    n: int
    rng: random.Random
    patient_id: str
    gender: str
    birth_date: date
    gp: _Staff
    org_id: str
    visits: tuple[_Visit, ...]
    problems: dict[str, str]  # SNOMED code -> Condition id

    @property
    def subject(self) -> Resource:
        return _ref("Patient", self.patient_id)


# ---------------------------------------------------------------------------------------------
# small FHIR building blocks


def _rid(name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, name))


def _base(rtype: str, key: str, value: str | None = None) -> Resource:
    """A resource skeleton: id from the stable name `<type>-<key>` and the seed identifier."""
    system = f"{SEED_SYSTEM}/{rtype.lower()}"
    return {
        "resourceType": rtype,
        "id": _rid(f"{rtype.lower()}-{key}"),
        "identifier": [{"system": system, "value": value or key}],
    }


def _ref(rtype: str, rid: str, display: str | None = None) -> Resource:
    ref: Resource = {"reference": f"{rtype}/{rid}"}
    if display:
        ref["display"] = display
    return ref


def _coding(system: str, code: str, display: str) -> Resource:
    return {"system": system, "code": code, "display": display}


def _concept(system: str, code: str, display: str) -> Resource:
    return {"coding": [_coding(system, code, display)], "text": display}


def _hl7_concept(code_system: str, code: str, display: str) -> Resource:
    return {"coding": [_coding(f"{_HL7}/{code_system}", code, display)]}


def _quantity(value: float, unit: str, code: str | None = None) -> Resource:
    return {"value": value, "unit": unit, "system": UCUM, "code": code or unit}


def _entry(resource: Resource) -> Resource:
    rtype, rid = resource["resourceType"], resource["id"]
    return {"fullUrl": f"urn:uuid:{rid}", "resource": resource, "request": {"method": "PUT", "url": f"{rtype}/{rid}"}}


def _practitioner_count(patients: int) -> int:
    return max(3, math.ceil(patients / 10))


def _npi(index: int) -> str:
    """A 10-digit NPI whose check digit is valid (Luhn over the "80840" health-industry prefix)."""
    body = f"1{index + 1:08d}"
    total = 0
    # Digits are doubled from the right of the payload, as the check digit will sit after them.
    for pos, char in enumerate(reversed("80840" + body)):
        digit = int(char) * (2 if pos % 2 == 0 else 1)
        total += digit - 9 if digit > 9 else digit
    return f"{body}{(10 - total % 10) % 10}"


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _phone(rng: random.Random, area: str) -> str:
    # 555-0100..0199 is the block reserved for fiction, so no real number is ever generated.
    return f"({area}) 555-01{rng.randrange(100):02d}"


# ---------------------------------------------------------------------------------------------
# the clinic and its staff


def _organization() -> Resource:
    org = _base("Organization", "clinic")
    org.update(
        {
            "active": True,
            "type": [_hl7_concept("organization-type", "prov", "Healthcare Provider")],
            "name": _CLINIC_NAME,
            "telecom": [{"system": "phone", "value": "(617) 555-0100", "use": "work"}],
            "address": [
                {
                    "use": "work",
                    "line": ["1 Example Plaza"],
                    "city": "Cambridge",
                    "state": "MA",
                    "postalCode": "02139",
                    "country": "US",
                }
            ],
        }
    )
    return org


def _staff(count: int) -> list[_Staff]:
    staff = []
    for i in range(count):
        rnd, pos = divmod(i, len(_DOCTORS))
        # Past the named list, reuse family names with a numeric suffix to keep usernames unique,
        # and rotate the given name so displays do not repeat verbatim.
        given, _, gender = _DOCTORS[(pos + rnd) % len(_DOCTORS)]
        family = _DOCTORS[pos][1]
        username = f"dr.{family.lower()}" + (str(rnd + 1) if rnd else "")
        staff.append(_Staff(i, _rid(f"practitioner-{i}"), username, given, family, gender))
    return staff


def _practitioner(doc: _Staff) -> Resource:
    res = _base("Practitioner", str(doc.index))
    res["identifier"] += [
        {"system": NPI_SYSTEM, "value": _npi(doc.index)},
        {"system": f"{SEED_SYSTEM}/username", "value": doc.username},
    ]
    res.update(
        {
            "active": True,
            "name": [
                {"use": "official", "family": doc.family, "given": [doc.given], "prefix": ["Dr."], "text": doc.display}
            ],
            "telecom": [{"system": "email", "value": f"{doc.username}@example.org", "use": "work"}],
            "gender": doc.gender,
            "qualification": [{"code": {"text": "MD"}}],
        }
    )
    return res


# ---------------------------------------------------------------------------------------------
# one patient's chart


def _birth_date(rng: random.Random) -> date:
    """A birth date giving an age of 18..90 on REFERENCE_DATE."""
    age = rng.randint(18, 90)
    earliest = date(REFERENCE_DATE.year - age - 1, REFERENCE_DATE.month, REFERENCE_DATE.day) + timedelta(days=1)
    latest = date(REFERENCE_DATE.year - age, REFERENCE_DATE.month, REFERENCE_DATE.day)
    return earliest + timedelta(days=rng.randint(0, (latest - earliest).days))


def _patient(n: int, rng: random.Random, gp: _Staff, org_id: str) -> Resource:
    gender = "male" if rng.random() < 0.5 else "female"
    given = rng.choice(_MALE_NAMES if gender == "male" else _FEMALE_NAMES)
    family = rng.choice(_FAMILY_NAMES)
    city, state, zip_prefix, area = rng.choice(_CITIES)
    patient = _base("Patient", str(n), f"MRN-{n + 1:06d}")
    mrn = patient["identifier"][0]
    mrn.update(
        {
            "use": "usual",
            "type": _hl7_concept("v2-0203", "MR", "Medical record number"),
            "assigner": _ref("Organization", org_id, _CLINIC_NAME),
        }
    )
    patient.update(
        {
            "active": True,
            "name": [{"use": "official", "family": family, "given": [given], "text": f"{given} {family}"}],
            "telecom": [{"system": "phone", "value": _phone(rng, area), "use": "home"}],
            "gender": gender,
            "birthDate": _birth_date(rng).isoformat(),
            "address": [
                {
                    "use": "home",
                    "line": [f"{rng.randint(1, 999)} {rng.choice(_STREETS)}"],
                    "city": city,
                    "state": state,
                    "postalCode": f"{zip_prefix}{rng.randrange(100):02d}",
                    "country": "US",
                }
            ],
            "generalPractitioner": [gp.ref],
            "managingOrganization": _ref("Organization", org_id, _CLINIC_NAME),
        }
    )
    return patient


def _visits(n: int, rng: random.Random) -> tuple[_Visit, ...]:
    """1-3 check-ups in the three years before REFERENCE_DATE, oldest first."""
    days_back = sorted(rng.sample(range(1, 3 * 365), rng.randint(1, 3)), reverse=True)
    visits = []
    for k, back in enumerate(days_back):
        day = REFERENCE_DATE - timedelta(days=back)
        start = datetime.combine(day, time(rng.randint(8, 16), rng.choice((0, 15, 30, 45))), tzinfo=UTC)
        visits.append(_Visit(_rid(f"encounter-{n}-{k}"), start, start + timedelta(minutes=30)))
    return tuple(visits)


def _encounter(chart: _Chart, k: int, visit: _Visit) -> Resource:
    enc = _base("Encounter", f"{chart.n}-{k}")
    enc.update(
        {
            "status": "finished",
            "class": _coding(f"{_HL7}/v3-ActCode", "AMB", "ambulatory"),
            "type": [_concept(SNOMED, "185349003", "Encounter for check up (procedure)")],
            "subject": chart.subject,
            "participant": [
                {
                    "type": [_hl7_concept("v3-ParticipationType", "PPRF", "primary performer")],
                    "individual": chart.gp.ref,
                }
            ],
            "period": {"start": _iso(visit.start), "end": _iso(visit.end)},
            "serviceProvider": _ref("Organization", chart.org_id, _CLINIC_NAME),
        }
    )
    return enc


def _pick_problems(n: int, rng: random.Random) -> dict[str, str]:
    codes = rng.sample(sorted(CONDITIONS), rng.randint(1, 4))
    return {code: _rid(f"condition-{n}-{k}") for k, code in enumerate(codes)}


def _condition(chart: _Chart, k: int, code: str) -> Resource:
    first = chart.visits[0]
    # Onset some time before the first visit (up to ten years), but never before age one.
    earliest = max(chart.birth_date + timedelta(days=365), first.start.date() - timedelta(days=3650))
    span = max(0, (first.start.date() - earliest).days - 1)
    onset = datetime.combine(earliest + timedelta(days=chart.rng.randint(0, span)), time(), tzinfo=UTC)
    cond = _base("Condition", f"{chart.n}-{k}")
    cond.update(
        {
            "clinicalStatus": _hl7_concept("condition-clinical", "active", "Active"),
            "verificationStatus": _hl7_concept("condition-ver-status", "confirmed", "Confirmed"),
            "category": [_hl7_concept("condition-category", "problem-list-item", "Problem List Item")],
            "code": _concept(SNOMED, code, CONDITIONS[code]),
            "subject": chart.subject,
            "encounter": _ref("Encounter", first.id),
            "onsetDateTime": _iso(onset),
            "recordedDate": _iso(first.start),
            "recorder": chart.gp.ref,
        }
    )
    return cond


def _observation(
    chart: _Chart, key: str, visit: _Visit, category: tuple[str, str], loinc: str, display: str
) -> Resource:
    obs = _base("Observation", f"{chart.n}-{key}-{loinc}")
    obs.update(
        {
            "status": "final",
            "category": [_hl7_concept("observation-category", *category)],
            "code": _concept(LOINC, loinc, display),
            "subject": chart.subject,
            "encounter": _ref("Encounter", visit.id),
            "effectiveDateTime": _iso(visit.start),
        }
    )
    return obs


class _Body(NamedTuple):
    """Per-patient baselines that vitals wobble around, so one patient's numbers hang together."""

    height_cm: float
    weight_kg: float
    heart_rate: int
    systolic: int
    diastolic: int


def _body(chart: _Chart) -> _Body:
    rng = chart.rng
    height = rng.gauss(176, 7) if chart.gender == "male" else rng.gauss(163, 6.5)
    bmi = rng.uniform(27, 38) if DIABETES in chart.problems else rng.uniform(19.5, 33)
    hypertensive = HYPERTENSION in chart.problems
    return _Body(
        height_cm=round(height, 1),
        weight_kg=bmi * (height / 100) ** 2,
        heart_rate=rng.randint(56, 92),
        systolic=rng.randint(132, 158) if hypertensive else rng.randint(104, 128),
        diastolic=rng.randint(84, 98) if hypertensive else rng.randint(64, 82),
    )


def _vitals(chart: _Chart, k: int, visit: _Visit, body: _Body) -> list[Resource]:
    rng = chart.rng
    weight = round(body.weight_kg + rng.uniform(-2, 2), 1)
    values = {
        "8867-4": _quantity(body.heart_rate + rng.randint(-6, 6), "beats/minute", "/min"),
        "29463-7": _quantity(weight, "kg"),
        "8302-2": _quantity(body.height_cm, "cm"),
        "39156-5": _quantity(round(weight / (body.height_cm / 100) ** 2, 1), "kg/m2"),
    }
    category = ("vital-signs", "Vital Signs")
    result = []
    for loinc, quantity in values.items():
        obs = _observation(chart, str(k), visit, category, loinc, VITAL_SIGNS[loinc])
        obs["valueQuantity"] = quantity
        result.append(obs)
    panel = _observation(chart, str(k), visit, category, "85354-9", VITAL_SIGNS["85354-9"])
    panel["component"] = [
        {
            "code": _concept(LOINC, *SYSTOLIC),
            "valueQuantity": _quantity(body.systolic + rng.randint(-8, 8), "mmHg", "mm[Hg]"),
        },
        {
            "code": _concept(LOINC, *DIASTOLIC),
            "valueQuantity": _quantity(body.diastolic + rng.randint(-5, 5), "mmHg", "mm[Hg]"),
        },
    ]
    result.append(panel)
    return result


def _interpretation(lab: _Lab, value: float) -> Resource:
    if lab.high is not None and value > lab.high:
        return _hl7_concept("v3-ObservationInterpretation", "H", "High")
    if lab.low is not None and value < lab.low:
        return _hl7_concept("v3-ObservationInterpretation", "L", "Low")
    return _hl7_concept("v3-ObservationInterpretation", "N", "Normal")


def _lab_observation(chart: _Chart, k: int, visit: _Visit, lab: _Lab) -> Resource:
    low, high = lab.abnormal if chart.problems.keys() & lab.drivers else lab.normal
    value: float = round(chart.rng.uniform(low, high), lab.decimals)
    if lab.decimals == 0:
        value = int(value)
    obs = _observation(chart, str(k), visit, ("laboratory", "Laboratory"), lab.loinc, lab.display)
    obs["valueQuantity"] = _quantity(value, lab.unit)
    obs["interpretation"] = [_interpretation(lab, value)]
    ref_range: Resource = {}
    if lab.low is not None:
        ref_range["low"] = _quantity(lab.low, lab.unit)
    if lab.high is not None:
        ref_range["high"] = _quantity(lab.high, lab.unit)
    obs["referenceRange"] = [ref_range]
    return obs


def _medication_requests(chart: _Chart) -> list[Resource]:
    """0-3 prescriptions, only for drugs one of the patient's problems indicates."""
    indicated = [med for med in MEDICATIONS if chart.problems.keys() & med.indications]
    chosen = chart.rng.sample(indicated, chart.rng.randint(0, min(3, len(indicated))))
    last = chart.visits[-1]
    result = []
    for k, med in enumerate(chosen):
        reason = next(code for code in chart.problems if code in med.indications)
        req = _base("MedicationRequest", f"{chart.n}-{k}")
        req.update(
            {
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": _concept(RXNORM, med.rxnorm, med.display),
                "subject": chart.subject,
                "encounter": _ref("Encounter", last.id),
                "authoredOn": _iso(last.end),
                "requester": chart.gp.ref,
                "reasonReference": [_ref("Condition", chart.problems[reason], CONDITIONS[reason])],
                "dosageInstruction": [{"text": med.dosage}],
            }
        )
        result.append(req)
    return result


def _allergies(chart: _Chart) -> list[Resource]:
    rng = chart.rng
    chosen = rng.sample(ALLERGENS, rng.choices((0, 1, 2), weights=(5, 3, 2))[0])
    first = chart.visits[0]
    result = []
    for k, allergen in enumerate(chosen):
        code, display, severity = rng.choice(_REACTIONS)
        allergy = _base("AllergyIntolerance", f"{chart.n}-{k}")
        allergy.update(
            {
                "clinicalStatus": _hl7_concept("allergyintolerance-clinical", "active", "Active"),
                "verificationStatus": _hl7_concept("allergyintolerance-verification", "confirmed", "Confirmed"),
                "type": "allergy",
                "category": [allergen.category],
                "criticality": "high" if severity == "severe" else "low",
                "code": _concept(allergen.system, allergen.code, allergen.display),
                "patient": chart.subject,
                "encounter": _ref("Encounter", first.id),
                "recordedDate": _iso(first.start),
                "recorder": chart.gp.ref,
                "reaction": [{"manifestation": [_concept(SNOMED, code, display)], "severity": severity}],
            }
        )
        result.append(allergy)
    return result


def _chart_resources(n: int, seed: int, gp: _Staff, org_id: str) -> tuple[Resource, list[Resource]]:
    """Patient n and everything recorded about them, in an order where targets precede referrers."""
    # A per-patient generator: patient n's data depends only on (seed, n).
    rng = random.Random(f"mockehr:{seed}:patient:{n}")  # noqa: S311 - synthetic data, not security
    patient = _patient(n, rng, gp, org_id)
    chart = _Chart(
        n,
        rng,
        patient["id"],
        patient["gender"],
        date.fromisoformat(patient["birthDate"]),
        gp,
        org_id,
        _visits(n, rng),
        _pick_problems(n, rng),
    )
    body = _body(chart)
    resources = [patient, *(_encounter(chart, k, v) for k, v in enumerate(chart.visits))]
    resources += [_condition(chart, k, code) for k, code in enumerate(chart.problems)]
    for k, visit in enumerate(chart.visits):
        resources += _vitals(chart, k, visit, body)
        resources += [_lab_observation(chart, k, visit, lab) for lab in LABS]
    resources += _medication_requests(chart)
    resources += _allergies(chart)
    return patient, resources


# ---------------------------------------------------------------------------------------------
# care teams and the whole bundle


def _careteams(
    staff: Sequence[_Staff], panels: Sequence[Sequence[str]], names: Sequence[str], org_id: str
) -> tuple[list[Resource], dict[str, tuple[str, ...]]]:
    """One CareTeam per non-empty panel: its first patient, co-managed by the next practitioner.

    The member is never that patient's GP (there are at least 3 practitioners), so they reach the
    patient only through the CareTeam, which is what access-control tests need.
    """
    teams: list[Resource] = []
    reach: dict[str, list[str]] = {}
    for gp in staff:
        if not panels[gp.index]:
            continue
        patient_id = panels[gp.index][0]
        member = staff[(gp.index + 1) % len(staff)]
        team = _base("CareTeam", str(gp.index))
        team.update(
            {
                "status": "active",
                "name": f"Shared care for {names[gp.index]}",
                "subject": _ref("Patient", patient_id, names[gp.index]),
                "period": {"start": (REFERENCE_DATE - timedelta(days=180)).isoformat()},
                "participant": [
                    {"role": [_concept(SNOMED, "309343006", "Physician (occupation)")], "member": member.ref}
                ],
                "managingOrganization": [_ref("Organization", org_id, _CLINIC_NAME)],
            }
        )
        teams.append(team)
        reach.setdefault(member.id, []).append(patient_id)
    return teams, {key: tuple(ids) for key, ids in reach.items()}


def generate(patients: int = 30, seed: int = 1) -> SeedResult:
    """The demo data set: one transaction Bundle of `patients` charts and their clinic."""
    if not MIN_PATIENTS <= patients <= MAX_PATIENTS:
        raise ValueError(f"patients must be between {MIN_PATIENTS} and {MAX_PATIENTS}, got {patients}")
    org = _organization()
    staff = _staff(_practitioner_count(patients))
    entries = [_entry(org), *(_entry(_practitioner(doc)) for doc in staff)]
    panels: list[list[str]] = [[] for _ in staff]
    patient_ids: list[str] = []
    # Display names of each panel's first patient, who becomes that panel's CareTeam subject.
    first_names: list[str] = ["" for _ in staff]
    for n in range(patients):
        gp = staff[n % len(staff)]  # round robin: panels are disjoint and cover everyone
        patient, resources = _chart_resources(n, seed, gp, org["id"])
        if not panels[gp.index]:
            first_names[gp.index] = patient["name"][0]["text"]
        panels[gp.index].append(patient["id"])
        patient_ids.append(patient["id"])
        entries += [_entry(res) for res in resources]
    teams, reach = _careteams(staff, panels, first_names, org["id"])
    entries += [_entry(team) for team in teams]
    return SeedResult(
        bundle={"resourceType": "Bundle", "type": "transaction", "entry": entries},
        practitioners=tuple(DemoPractitioner(d.id, d.username, d.display, tuple(panels[d.index])) for d in staff),
        patient_ids=tuple(patient_ids),
        careteam_member_patients=reach,
    )
