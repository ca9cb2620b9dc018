"""What a test needs from the machine (PostgreSQL, reference data, Chromium, npm, Docker, …).

One rule for all of it: with CI=true a missing need is a failure, since .ci/run installs or starts
every one of them; on a developer's machine the test is skipped with the reason.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this is a failure, not a skip)")
    pytest.skip(reason)
