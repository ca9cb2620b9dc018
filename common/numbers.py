"""Whole numbers taken from requests (query parameters, path segments, cursors), range-checked.

Every number a request carries ends up in SQL, where columns are 32- or 64-bit: an unchecked
`999999999999999999999` overflows in the driver (a 500), and Python's `int()` of a long digit
string costs time (and past 4300 digits raises). `bounded_int` takes ASCII digits only
(`str.isdigit()` also accepts `²` and other digits `int()` refuses), at most 19 of them, and
answers None for anything outside [low, high]; each protocol turns None into its own 400.
"""

from __future__ import annotations

import re

INT32_MAX = 2**31 - 1  # an SQL INTEGER column (both backends)
INT64_MAX = 2**63 - 1  # an SQL BIGINT column

_DIGITS = re.compile(r"[0-9]{1,19}")


def bounded_int(text: str, low: int, high: int) -> int | None:
    """`text` as an int in [low, high], or None when it is not plain decimal digits in range."""
    if not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if low <= value <= high else None
