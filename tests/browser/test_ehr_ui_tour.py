"""README "Demo: a two-minute tour", step by step, as a person would do it: `mockehr up` with its
default seed (30 patients), the printed demo user and admin token, Debian's Chromium.

Each step clicks what the README names (button and link texts included) and checks what the
README says happens. The browser also records every Content-Security-Policy violation: the tour
must not produce one (the pages work under the policy, nothing is blocked)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.browser.chromium import ARGS, CHROMIUM, require_chromium, trusting_home
from tests.browser.ehr_stack import TIMEOUT, shot
from tests.e2e.conftest import UpProcess, free_base_port, start_up

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Printed:
    """What `mockehr up` printed that the tour uses."""

    admin_token: str
    login: str
    password: str
    practitioner: str
    patients: tuple[str, ...]
    other_patient: str  # the first patient printed for another user


def printed(output: str) -> Printed:
    token = re.search(r"^admin token\s+(\S+)", output, re.MULTILINE)
    users = re.findall(r"^\s+(Practitioner/\S+)\s+login (\S+)\s+password (\S+)\s+patients (.+)$", output, re.MULTILINE)
    assert token and len(users) >= 2, output
    first, second = users[0], users[1]
    patients = tuple(p.removeprefix("Patient/") for p in first[3].split())
    return Printed(
        token.group(1), first[1], first[2], first[0], patients, second[3].split()[0].removeprefix("Patient/")
    )


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    require_chromium()
    process = start_up(tmp_path_factory.mktemp("tour") / ".mockehr", free_base_port())  # the default seed
    try:
        process.wait_for("Ctrl-C stops every service.", timeout=180)
        yield process
    finally:
        process.stop()


def test_the_readme_two_minute_tour_works_as_written(up: UpProcess, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    # Step 1: `mockehr up` printed a demo user line and the admin token; step 2: the example
    # CDS Service is already on the allow-list.
    output = up.output
    assert "mockehr is up" in output
    assert "example CDS Service registered: patient-greeting, abnormal-results, medication-safety" in output
    seen = printed(output)
    assert seen.login == "dr.alvarez"
    ehr = f"https://localhost:{up.base_port}"
    smart_app = f"https://localhost:{up.base_port + 4}"
    violations: list[str] = []

    with sync_playwright() as pw:
        env = trusting_home(up.data_dir / "ca.pem", tmp_path / "chromium-home")
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, env=env)
        context = chromium.new_context(viewport={"width": 1280, "height": 1000})
        context.set_default_timeout(TIMEOUT)

        def watch(page: Any) -> None:
            page.on(
                "console",
                lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
            )

        context.on("page", watch)
        page = context.new_page()

        # Step 3: open the EHR, click Sign in, sign in at the authorization server, land on My patients.
        page.goto(ehr)
        page.get_by_role("link", name="Sign in").click()
        assert page.url.startswith(f"https://localhost:{up.base_port + 1}/")
        page.fill("input[name=username]", seen.login)
        page.fill("input[name=password]", seen.password)
        page.click("button[type=submit]")
        page.wait_for_url(ehr + "/patients")
        assert page.get_by_role("heading", name="My patients").is_visible()
        listed = {a.get_attribute("data-patient") for a in page.locator("#patients a[data-patient]").all()}
        assert set(seen.patients) <= listed and seen.other_patient not in listed

        # Step 4: the first printed patient; the chart's sections; patient-view cards by indicator,
        # a critical HbA1c card first.
        patient = seen.patients[0]
        page.click(f"a[data-patient='{patient}']")
        page.wait_for_url(f"{ehr}/patients/{patient}")
        for heading in ("Problems", "Medications", "Allergies", "Latest labs", "Latest vitals", "Encounters"):
            assert page.get_by_role("heading", name=heading, exact=True).is_visible(), heading
        assert page.locator("#patient-birth").inner_text()
        page.wait_for_selector(".hook-result[data-hook='patient-view'] .card")
        groups = [g.get_attribute("data-indicator") for g in page.locator(".indicator-group").all()]
        assert groups[0] == "critical", groups
        critical = page.locator(".indicator-group.critical .card").first
        assert "HbA1c" in critical.inner_text() or "A1c" in critical.inner_text()
        shot(page, "tour-4-chart")

        # Step 5: Accept: Order: Hemoglobin A1c… → the order appears under Service requests.
        accept = page.get_by_role("button", name=re.compile(r"^Accept: Order: Hemoglobin A1c"))
        with page.expect_response(lambda r: r.url.endswith("/api/suggestions/accept")) as accepted:
            accept.first.click()
        applied = accepted.value.json()
        assert accepted.value.status == 200 and applied["outcome"] == "accepted"
        assert applied["transaction"][0]["status"].startswith("201")  # one FHIR transaction, as the user
        assert applied["feedback"]["status"] == 200, applied  # `accepted` feedback reached the service
        page.wait_for_function(
            "() => document.querySelector('#orders').innerText.includes('Hemoglobin A1c')", timeout=TIMEOUT
        )
        shot(page, "tour-5-accepted")

        # Step 6: New order → Medication → metformin → Sign (order-sign) → Duplicate therapy card →
        # Launch: Review medications in the example SMART app → the app shows patient and appContext.
        page.select_option("#order-kind", label="Medication")
        page.select_option("#order-item", label="24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet")
        page.get_by_role("button", name="Sign (order-sign)").click()
        duplicate = page.locator(".hook-result[data-hook='order-sign'] .card", has_text="Duplicate therapy").first
        duplicate.wait_for()
        launch = duplicate.get_by_role("button", name="Launch: Review medications in the example SMART app")
        with context.expect_page() as opened:
            launch.click()
        app = opened.value
        app.wait_for_selector("#patient-id, #error")
        assert app.url.startswith(smart_app + "/")
        assert app.locator("#patient-id").inner_text() == patient
        app_context = json.loads(app.locator("#app-context").inner_text())
        assert app_context["issue"] == "duplicate-therapy" and app_context["patient"] == patient
        shot(app, "tour-6-smart-app")
        app.close()
        # Then: Accept: Remove the draft order… → the draft is discarded, nothing is ordered.
        medications_before = page.locator("#medications tr").count()
        duplicate.get_by_role("button", name=re.compile(r"^Accept: Remove the draft order")).click()
        page.wait_for_function(
            "() => document.querySelector('#order-status').innerText.includes('nothing was ordered')"
        )
        assert page.locator("#signature").is_hidden()
        # A lab test instead: Sign (order-sign) → Confirm signature → under Service requests.
        page.select_option("#order-kind", label="Lab test")
        page.select_option("#order-item", label="CBC panel - Blood by Automated count")
        page.get_by_role("button", name="Sign (order-sign)").click()
        page.get_by_role("button", name="Confirm signature").click()
        page.wait_for_function("() => document.querySelector('#orders').innerText.includes('CBC panel')")
        assert page.locator("#order-status").inner_text().startswith("Signed: ServiceRequest/")
        page.reload()
        assert page.locator("#medications tr").count() == medications_before
        assert "CBC panel" in page.locator("#orders").inner_text()
        shot(page, "tour-6-signed")

        # Step 7: on another card, Dismiss with a reason → overridden feedback goes to the service.
        page.wait_for_selector(".hook-result[data-hook='patient-view'] .card")
        other = page.locator(".hook-result[data-hook='patient-view'] .card", has=page.locator("button.dismiss")).first
        with page.expect_response(lambda r: r.url.endswith("/api/feedback")) as sent:
            other.get_by_role("button", name="Dismiss").click()
            page.select_option("#dismiss-reason", index=1)
            page.get_by_role("button", name="Dismiss", exact=True).last.click()
        posted = sent.value.request.post_data
        assert sent.value.status == 200 and posted is not None and json.loads(posted)["outcome"] == "overridden"
        page.wait_for_selector(".card.dismissed")

        # Step 8: CDS exchanges → click one → per service the request (token redacted), response, timings.
        page.get_by_role("link", name="CDS exchanges").click()
        page.locator(".exchange-row").first.click()
        detail = page.locator("#exchange-detail")
        detail.wait_for()
        text = detail.inner_text()
        assert "Request sent" in text and "Response received" in text and "Timings (ms):" in text
        assert '"access_token": "[redacted]"' in text
        for phase in ("token", "prefetch", "call", "revoke"):
            assert phase in text, phase
        assert re.search(r"eyJ[A-Za-z0-9_-]{10,}\.", text) is None
        shot(page, "tour-8-exchanges")

        # Step 9: Admin → paste the admin token once → CDS Services, OAuth clients, Signing keys (rotate).
        page.get_by_role("link", name="Admin").click()
        page.fill("#admin-token", seen.admin_token)
        page.get_by_role("button", name="Continue").click()
        page.wait_for_url(ehr + "/admin/services")
        page.locator(".service[data-service='abnormal-results']").wait_for()
        assert page.get_by_role("button", name="Discover").is_visible()
        page.get_by_role("link", name="OAuth clients").click()
        assert "smart-example" in page.locator("#clients").inner_text()
        page.get_by_role("link", name="Signing keys").click()
        keys_before = page.locator("#keys tbody tr").count()
        page.get_by_role("button", name="Rotate the EHR's key").click()
        page.wait_for_url(ehr + "/admin/keys")
        assert page.locator("#keys tbody tr").count() == keys_before + 1
        shot(page, "tour-9-admin")

        # Step 10: another user's patient → "not in your list", nothing of it; Sign out.
        response = page.goto(f"{ehr}/patients/{seen.other_patient}")
        assert response is not None and response.status == 404
        assert "not in your list" in page.locator("#error").inner_text()
        assert page.locator("#chart").count() == 0
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(ehr + "/")
        assert page.get_by_role("link", name="Sign in").is_visible()
        # The old session is worthless: its tokens are revoked and its cookie is gone.
        assert page.evaluate("async () => (await fetch('/api/exchanges')).status") == 401
        # The authorization server's own sign-in (single sign-on) ends there, from the link shown.
        page.get_by_role("link", name="sign out of the authorization server").click()
        assert "You are signed in as" in page.content()
        page.get_by_role("button", name="Sign out").click()
        page.goto(f"{ehr}/patients")
        page.wait_for_selector("input[name=password]")  # signed out everywhere: the password again
        assert page.url.startswith(f"https://localhost:{up.base_port + 1}/")
        shot(page, "tour-10-signed-out")
        context.close()
        chromium.close()
    assert violations == []
