"""A refresh whose patient cannot be checked (the FHIR server does not answer) is refused with
an OAuth error, never a 5xx, and does not spend the refresh token (fail closed, retry later)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from authserver.reach import ReachUnavailableError
from authserver.users import User
from tests.integration.smartharness import Smart, running_smart


class FhirServerDown:
    def __init__(self) -> None:
        self.asked = 0

    async def can_see(self, user: User, patient_id: str) -> bool:
        self.asked += 1
        raise ReachUnavailableError("ConnectError")


@pytest.fixture
async def smart(tmp_path: Path, database_url: str) -> AsyncIterator[Smart]:
    async with running_smart(tmp_path, database_url) as harness:
        yield harness


async def test_a_refresh_while_the_patient_cannot_be_checked_is_refused_and_keeps_the_token(smart: Smart) -> None:
    body = await smart.tokens_for()
    down = FhirServerDown()
    smart.auth.app.state.auth.reach = down
    refused = await smart.refresh(body["refresh_token"])
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_request" and down.asked == 1
    assert refused.headers["cache-control"] == "no-store"
    # Once the FHIR server answers again, the same refresh token still works: nothing was spent.
    smart.auth.app.state.auth.reach = smart.auth.reach
    again = await smart.refresh(body["refresh_token"])
    assert again.status_code == 200, again.text
    assert again.json()["patient"] == "p-a1"
