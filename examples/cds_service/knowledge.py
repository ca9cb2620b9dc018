"""The clinical knowledge the example services apply: result thresholds and drug classes.

Small, explicit tables, each row citing where its numbers come from. This is demonstration
content for a mock EHR, not validated clinical decision support.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


@dataclass(frozen=True)
class Test:
    """What a follow-up suggestion orders (ServiceRequest.code)."""

    system: str
    code: str
    display: str


@dataclass(frozen=True)
class ResultRule:
    """A latest result at or above `warning` (or `critical`) makes a card.

    For a panel (blood pressure) `components` names the component codes and their thresholds;
    either component crossing its threshold counts.
    """

    key: str
    name: str
    codes: frozenset[str]  # LOINC codes of the Observation
    units: frozenset[str]  # UCUM codes accepted; anything else is not compared
    warning: tuple[float, ...]  # one per component (or one for a single value)
    critical: tuple[float, ...]
    components: tuple[str, ...]  # LOINC codes of the components, empty for a single value
    basis: str  # why these thresholds (shown in the card detail)
    repeat_days: int  # a result older than this is overdue for a repeat
    follow_up: Test
    decimals: int = 0  # the precision the measure is reported to (values are rounded to it, then compared)


HBA1C = ResultRule(
    key="hba1c",
    name="HbA1c",
    codes=frozenset({"4548-4"}),
    units=frozenset({"%"}),
    warning=(6.5,),
    critical=(9.0,),
    components=(),
    basis="ADA Standards of Care: ≥ 6.5 % is in the diabetes range; > 9 % signals poor glycaemic control. "
    "Repeat at least every 3 months while not at goal.",
    repeat_days=90,
    follow_up=Test(LOINC, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood"),
    decimals=1,  # NGSP reports HbA1c to one decimal (e.g. 6.5 %)
)
LDL = ResultRule(
    key="ldl",
    name="LDL cholesterol",
    codes=frozenset({"18262-6", "13457-7", "2089-1"}),
    units=frozenset({"mg/dL"}),
    warning=(130.0,),
    critical=(190.0,),
    components=(),
    basis="NCEP ATP III: 130-159 mg/dL borderline high, 160-189 high, ≥ 190 very high "
    "(consider familial hypercholesterolaemia). Recheck at least yearly.",
    repeat_days=365,
    follow_up=Test(LOINC, "24331-1", "Lipid panel - Serum or Plasma"),
)
BLOOD_PRESSURE = ResultRule(
    key="blood-pressure",
    name="Blood pressure",
    codes=frozenset({"85354-9", "55284-4"}),
    units=frozenset({"mm[Hg]", "mmHg"}),
    warning=(140.0, 90.0),
    critical=(180.0, 120.0),
    components=("8480-6", "8462-4"),  # systolic, diastolic
    basis="ACC/AHA 2017: ≥ 140/90 mmHg is stage 2 hypertension (recheck within a month); "
    "> 180/120 mmHg is a hypertensive crisis.",
    repeat_days=30,
    follow_up=Test(SNOMED, "46973005", "Blood pressure taking (procedure)"),
)
RESULT_RULES: tuple[ResultRule, ...] = (HBA1C, LDL, BLOOD_PRESSURE)


@dataclass(frozen=True)
class DrugClass:
    """Drugs that cross-react for an allergy: RxNorm codes (ingredients and products) and names."""

    name: str
    rxnorm: frozenset[str]
    ingredients: tuple[str, ...]


DRUG_CLASSES: tuple[DrugClass, ...] = (
    DrugClass(
        "penicillins",
        frozenset({"7980", "7984", "723", "733", "562251"}),
        ("penicillin", "amoxicillin", "ampicillin", "piperacillin", "nafcillin", "oxacillin", "dicloxacillin"),
    ),
    DrugClass(
        "aspirin and NSAIDs",  # aspirin-exacerbated reactions cross to other COX-1 inhibitors
        frozenset({"1191", "5640", "7258"}),
        ("aspirin", "acetylsalicylic", "ibuprofen", "naproxen", "diclofenac", "ketorolac", "indomethacin"),
    ),
    DrugClass(
        "codeine and related opioids",
        frozenset({"2670", "7052", "5489"}),
        ("codeine", "dihydrocodeine", "morphine", "hydrocodone"),
    ),
)

_LEADING_NAME = re.compile(r"^\s*([A-Za-z][A-Za-z\- ]*?)\s*(?:\d|\[|\(|$)")


def items(value: object) -> list[Any]:
    """A FHIR array member, or nothing: data from elsewhere may have any shape, and must not crash us."""
    return value if isinstance(value, list) else []


def codings(concept: object, system: str | None = None) -> list[dict[str, Any]]:
    if not isinstance(concept, dict):
        return []
    found = [c for c in items(concept.get("coding")) if isinstance(c, dict) and isinstance(c.get("code"), str)]
    return [c for c in found if system is None or c.get("system") == system]


def texts(concept: object) -> list[str]:
    if not isinstance(concept, dict):
        return []
    found = [concept.get("text")] + [c.get("display") for c in codings(concept)]
    return [t for t in found if isinstance(t, str) and t.strip()]


def display(concept: object, default: str = "unnamed") -> str:
    found = texts(concept)
    return found[0] if found else default


def rxnorm_codes(concept: object) -> set[str]:
    return {str(c["code"]) for c in codings(concept, RXNORM)}


def ingredient_names(concept: object) -> set[str]:
    """Leading ingredient names of each component of a drug name ("a 250 MG / b 125 MG" → {a, b})."""
    names: set[str] = set()
    for text in texts(concept):
        for part in re.split(r"\s+/\s+", text):  # RxNorm separates ingredients with " / "
            match = _LEADING_NAME.match(part)
            if match and len(match.group(1)) >= 4:
                names.add(match.group(1).lower())
    return names


def classes_of(concept: object) -> set[str]:
    """The drug classes a coded medication or allergen belongs to, by RxNorm code or by name."""
    codes = rxnorm_codes(concept)
    words = " ".join(texts(concept)).lower()
    return {
        cls.name
        for cls in DRUG_CLASSES
        if codes & cls.rxnorm or any(re.search(rf"\b{name}", words) for name in cls.ingredients)
    }
