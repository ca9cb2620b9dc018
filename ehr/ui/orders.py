"""What the order form offers: a few medications (RxNorm) and lab tests (LOINC).

The browser builds the draft order (a MedicationRequest or ServiceRequest with status `draft`)
from these codes and sends it as `draftOrders` with order-select and order-sign (CDS Hooks 2.0
hooks "order-select" and "order-sign"). The draft is never stored: it exists only as the hooks'
context until the user confirms the signature, and then the EHR writes the order it builds
itself from the same code (ehr/ui/signing.py), never a resource the browser sent.
"""

from __future__ import annotations

from dataclasses import dataclass

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"


@dataclass(frozen=True)
class Orderable:
    system: str
    code: str
    display: str


MEDICATIONS: tuple[Orderable, ...] = (
    Orderable(RXNORM, "314076", "lisinopril 10 MG Oral Tablet"),
    Orderable(RXNORM, "860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    Orderable(RXNORM, "617314", "atorvastatin 10 MG Oral Tablet"),
    Orderable(RXNORM, "197361", "amlodipine 5 MG Oral Tablet"),
    Orderable(RXNORM, "855332", "warfarin sodium 5 MG Oral Tablet"),
    Orderable(RXNORM, "1049221", "acetaminophen 325 MG / oxycodone hydrochloride 5 MG Oral Tablet"),
)

LAB_TESTS: tuple[Orderable, ...] = (
    Orderable(LOINC, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood"),
    Orderable(LOINC, "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma"),
    Orderable(LOINC, "24323-8", "Comprehensive metabolic 2000 panel - Serum or Plasma"),
    Orderable(LOINC, "58410-2", "CBC panel - Blood by Automated count"),
    Orderable(LOINC, "6301-6", "INR in Platelet poor plasma by Coagulation assay"),
)


def orderable(kind: str, system: str, code: str) -> Orderable | None:
    """The offered item of this kind with this code, or None (nothing else can be ordered)."""
    offered = MEDICATIONS if kind == "medication" else LAB_TESTS if kind == "lab" else ()
    return next((o for o in offered if o.system == system and o.code == code), None)
