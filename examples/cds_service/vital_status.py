"""Whether the patient is alive, and ages counted to the day of death for those who are not.

FHIR R4 Patient.deceased[x] is a boolean or a dateTime; either one marks the patient deceased
(R4 §8.1 Patient: "deceased[x] ... Indicates if the individual is deceased or not"). Loaded
records (Synthea) include patients who died decades ago: a service must neither greet them as
living nor suggest care for them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Deceased:
    on: dt.date | None  # None when only deceasedBoolean says so


def deceased(patient: dict[str, Any]) -> Deceased | None:
    """The patient's death (with its date when recorded), or None for a living patient."""
    when = patient.get("deceasedDateTime")
    if isinstance(when, str) and when:
        try:
            return Deceased(dt.date.fromisoformat(when[:10]))
        except ValueError:  # a bare year or year-month (FHIR dateTime allows both): deceased, day unknown
            return Deceased(None)
    return Deceased(None) if patient.get("deceasedBoolean") is True else None


def age(patient: dict[str, Any], today: dt.date) -> int | None:
    """Whole years from birthDate to today, or to the death date; None when either is unknown."""
    try:
        born = dt.date.fromisoformat(str(patient["birthDate"])[:10])
    except (KeyError, ValueError):
        return None
    death = deceased(patient)
    if death is not None:
        if death.on is None:
            return None
        today = death.on
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))
