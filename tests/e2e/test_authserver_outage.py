"""Kill the authorization server: the FHIR server fails closed within ~1 s and recovers by itself
when the authorization server returns (issue 18, item 3).

The FHIR server keeps each process's view of revoked tokens fresh by polling the authorization
server's feed (fhirserver/revocations.py, every 0.25 s); once the view is older than 1 s
(MOCKEHR_FHIR_REVOCATION_MAX_STALENESS_SECONDS) its guard answers 503 rather than serve a token
that may have been revoked meanwhile.

Bounds are counted in polls, not asserted on the wall clock: a client sleeps POLL seconds between
two requests, so poll k starts at least (k - 1) x POLL after the kill. A busy machine makes each
request slower and so fits fewer polls into the same second; it can never make the count larger.
The recovery and revocation bounds are liveness limits (10 s), far above what the design needs.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from common.tls import client_ssl_context
from tests.e2e.crash_rig import Rig, rig

pytestmark = pytest.mark.e2e

POLL = 0.1  # seconds a client sleeps between two requests
MAX_STALENESS = 1.0  # the FHIR server's default (fhirserver/settings.py)
# Poll k starts ≥ (k - 1) x POLL after the kill, so poll 11 is past the staleness limit; 5 more
# absorb an event loop that records its last successful feed poll a little late under load.
FAIL_CLOSED_POLLS = math.ceil(MAX_STALENESS / POLL) + 6
LIVENESS_POLLS = 100  # 10 s at least: recovery and revocation, far above the design's ~0.3 s
MARKER = "urn:mockehr:outage"


def _poll_until(fetch: Callable[[], httpx.Response], done: Callable[[httpx.Response], bool]) -> list[httpx.Response]:
    """Every answer up to and including the first that is `done` (at most LIVENESS_POLLS)."""
    answers: list[httpx.Response] = []
    for _ in range(LIVENESS_POLLS):
        answers.append(fetch())
        if done(answers[-1]):
            return answers
        time.sleep(POLL)
    raise AssertionError(f"not done after {LIVENESS_POLLS} polls: {[a.status_code for a in answers]}")


def _is_fail_closed(response: httpx.Response) -> bool:
    """The guard's 503: an OperationOutcome saying the authorization state is unavailable."""
    if response.status_code != 503:
        return False
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert [i["code"] for i in outcome["issue"]] == ["transient"]
    assert "authorization state is temporarily unavailable" in outcome["issue"][0]["diagnostics"]
    return True


def test_the_fhir_server_fails_closed_within_a_second_of_the_authserver_dying_and_recovers_by_itself(
    tmp_path: Path,
) -> None:
    with rig(tmp_path / ".mockehr", None, ("authserver", "fhirserver")) as the_rig:
        _outage_and_recovery(the_rig)


def _outage_and_recovery(the_rig: Rig) -> None:
    token, other = the_rig.token("system/Patient.cruds"), the_rig.token("system/Patient.rs")
    fhir_process = the_rig.running["fhirserver"].process
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(verify=client_ssl_context(the_rig.ca), trust_env=False, timeout=30) as client:

        def read() -> httpx.Response:
            return client.get(f"{the_rig.fhir}/Patient", params={"_count": "1"}, headers=auth)

        _poll_until(read, lambda r: r.status_code == 200)  # a busy machine may starve the feed poll

        # 1. The authorization server dies: the same valid token is refused with 503 within ~1 s.
        the_rig.kill("authserver")
        killed_at = time.monotonic()
        answers = _poll_until(read, _is_fail_closed)
        failed_closed_after, closing_polls = time.monotonic() - killed_at, len(answers)
        assert closing_polls <= FAIL_CLOSED_POLLS, [a.status_code for a in answers]
        assert {a.status_code for a in answers[:-1]} <= {200}
        # It stays closed, for writes too (nothing is stored), and says so on /readyz, while /healthz
        # stays 200 (an orchestrator must not restart it for someone else's outage).
        marker = uuid.uuid4().hex
        body = {"resourceType": "Patient", "identifier": [{"system": MARKER, "value": marker}]}
        assert _is_fail_closed(client.post(f"{the_rig.fhir}/Patient", json=body, headers=auth))
        for _ in range(5):
            time.sleep(POLL)
            assert _is_fail_closed(read())
        assert client.get(f"{the_rig.stack.base_url('fhirserver')}/readyz").status_code == 503
        assert client.get(f"{the_rig.stack.base_url('fhirserver')}/healthz").status_code == 200

        # 2. It returns: the same token is accepted again, by the same FHIR server process.
        the_rig.start("authserver")
        back_at = time.monotonic()
        answers = _poll_until(read, lambda r: r.status_code == 200)
        recovered_after, recovery_polls = time.monotonic() - back_at, len(answers)
        assert {a.status_code for a in answers[:-1]} <= {503}
        assert fhir_process.poll() is None and the_rig.running["fhirserver"].process is fhir_process
        found = client.get(f"{the_rig.fhir}/Patient", params={"identifier": f"{MARKER}|{marker}"}, headers=auth)
        assert found.status_code == 200 and found.json().get("entry", []) == []

        # 3. The feed is honoured again, not just fresh: a token revoked now is never served
        # again past the 1 s window (answers are 401, or 503 if the view went stale meanwhile).
        def read_other() -> httpx.Response:
            return client.get(
                f"{the_rig.fhir}/Patient", params={"_count": "1"}, headers={"Authorization": f"Bearer {other}"}
            )

        _poll_until(read_other, lambda r: r.status_code == 200)
        the_rig.revoke(other)
        answers = _poll_until(read_other, lambda r: r.status_code == 401)
        assert 200 not in [a.status_code for a in answers[FAIL_CLOSED_POLLS - 1 :]]
        assert {a.status_code for a in answers} <= {200, 401, 503}
        assert _poll_until(read, lambda r: r.status_code != 503)[-1].status_code == 200  # the first is untouched

    # Figures of one run, for docs/security.md "Crash safety (tested)" (shown with pytest -s).
    print(
        f"\n[authserver outage] fail-closed 503 after {failed_closed_after:.2f} s ({closing_polls} polls); "
        f"200 again {recovered_after:.2f} s ({recovery_polls} polls) after the authserver was ready"
    )
