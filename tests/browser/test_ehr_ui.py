"""The EHR UI in a real browser against the whole stack (`mockehr up`, real TLS): Debian's
Chromium through Playwright's `executable_path` (no browser is ever downloaded).

The browser trusts the stack's dev CA for real, through a fresh NSS database
(`tests.browser.chromium.trusting_home`); no certificate error is ignored. The example CDS Service is registered at the
EHR through the API with the admin token, as an administrator would. Screenshots go to
test-artifacts/.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from tests.browser.ehr_stack import TIMEOUT, Stack, open_chart, shot, signed_in
from tests.integration.probeharness import free_port, serve_tls

if TYPE_CHECKING:
    from playwright.sync_api import Dialog

pytestmark = pytest.mark.e2e


def test_a_clinician_signs_in_sees_cards_accepts_a_suggestion_and_the_chart_shows_the_order(
    stack: Stack, browser: Any
) -> None:
    user = stack.users[0]
    with signed_in(browser, stack, user) as page:
        listed = {a.get_attribute("data-patient") for a in page.locator("#patients a[data-patient]").all()}
        assert set(user.patients) <= listed
        patient = user.patients[0]
        page.click(f"a[data-patient='{patient}']")
        page.wait_for_url(f"{stack.ehr}/patients/{patient}")
        page.wait_for_selector(".hook-result[data-hook='patient-view'] .card")
        # Grouped by indicator, the most urgent group first.
        groups = [g.get_attribute("data-indicator") for g in page.locator(".indicator-group").all()]
        order = ["critical", "warning", "info"]
        assert groups == sorted(groups, key=order.index) and groups
        card = page.locator(".card", has=page.locator("button.accept")).first
        label = card.locator("button.accept").first.inner_text().removeprefix("Accept: Order: ")
        before = page.locator("#orders").inner_text()
        assert label not in before
        shot(page, "chart-cards")

        card.locator("button.accept").first.click()
        page.wait_for_selector(".card.accepted")
        assert "Accepted" in card.locator(".card-status").inner_text()
        page.wait_for_function(
            "label => document.querySelector('#orders').innerText.includes(label)", arg=label, timeout=TIMEOUT
        )
        shot(page, "chart-accepted")
        # It is really in the FHIR server: a fresh page load shows it too.
        page.reload()
        assert label in page.locator("#orders").inner_text()


def test_a_smart_link_on_a_card_launches_the_app_with_the_patient_and_the_app_context(
    stack: Stack, browser: Any
) -> None:
    user = stack.users[0]
    with signed_in(browser, stack, user) as page:
        patient = user.patients[0]
        open_chart(page, stack, patient)
        active = page.locator("#medications").inner_text()
        assert "metformin" in active  # the seed's diabetic patient: a duplicate draft gives a card
        page.select_option("#order-kind", "medication")
        page.select_option("#order-item", label="24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet")
        page.click("#order-select")  # order-select: the selection alone already gets a card
        page.locator(".hook-result[data-hook='order-select'] .card").first.wait_for()
        page.click("#order-sign")
        link = page.locator(".hook-result[data-hook='order-sign'] button.smart-link").first
        link.wait_for()
        shot(page, "order-sign")
        with page.context.expect_page() as opened:
            link.click()
        app = opened.value
        app.wait_for_selector("#patient-id, #error")
        assert app.url.startswith(stack.smart_app + "/callback?")
        assert app.locator("#patient-id").inner_text() == patient
        assert app.locator("#fhir-user").inner_text().endswith(user.fhir_user)
        app_context = json.loads(app.locator("#app-context").inner_text())
        assert app_context["patient"] == patient and app_context["issue"] == "duplicate-therapy"
        assert app_context["draftOrder"].startswith("MedicationRequest/draft-")
        shot(app, "smart-app")


def test_editing_the_url_to_another_users_patient_shows_nothing_of_that_patient(stack: Stack, browser: Any) -> None:
    me, other = stack.users[0], stack.users[1]
    # Not the first patient of the other panel: that one has a care team, with a third practitioner.
    foreign = other.patients[1]
    with signed_in(browser, stack, other) as theirs:
        theirs.goto(f"{stack.ehr}/patients/{foreign}")
        name = theirs.locator("#patient-name").inner_text()
        birth = theirs.locator("#patient-birth").inner_text()
    assert name and birth
    with signed_in(browser, stack, me) as page:
        assert foreign not in page.content() and name not in page.content()
        for path in (f"/patients/{foreign}", f"/patients/{foreign}/sections"):
            response = page.goto(stack.ehr + path)
            assert response is not None and response.status == 404
            html = page.content()
            assert name not in html and birth not in html
            assert page.locator("#chart, #sections, .card").count() == 0
        shot(page, "foreign-patient")
        # Nor can a launch be registered for that patient from this session.
        answer = page.evaluate(
            """async ([url, patientId]) => {
                const csrf = document.querySelector('meta[name=csrf-token]').content;
                const r = await fetch('/ui/launch', {method: 'POST', headers: {'Content-Type': 'application/json',
                    'X-CSRF-Token': csrf}, body: JSON.stringify({url, patientId})});
                return r.status; }""",
            [stack.smart_app + "/launch", foreign],
        )
        assert answer == 404


def evil_service() -> FastAPI:
    """A CDS Service double whose cards try every way of getting script into the EHR's page."""
    payload = "window.__pwned = (window.__pwned || 0) + 1; alert('pwned')"
    app = FastAPI()

    @app.get("/cds-services")
    async def discovery() -> JSONResponse:
        return JSONResponse({"services": [{"id": "evil", "hook": "patient-view", "description": "hostile cards"}]})

    @app.post("/cds-services/evil")
    async def call() -> JSONResponse:
        detail = "\n\n".join(
            [
                "Looks **harmless**.",
                f"<script>{payload}</script>",
                f'<img src="x" onerror="{payload}">',
                f'<svg onload="{payload}"></svg>',
                f'<iframe src="javascript:{payload}"></iframe>',
                f"[click me](javascript:{payload})",
                f'<a href="javascript:{payload}">raw link</a>',
                f'![img](https://localhost/x.png" onerror="{payload})',
            ]
        )
        card = {
            "uuid": "c0ffee00-0000-4000-8000-000000000001",
            "summary": f'<img src=x onerror="{payload}">evil',
            "detail": detail,
            "indicator": "warning",
            "source": {"label": f'<b onmouseover="{payload}">Evil Inc</b>'},
            "suggestions": [{"label": f"<script>{payload}</script>", "uuid": "c0ffee00-0000-4000-8000-000000000002"}],
            "selectionBehavior": "at-most-one",
            "overrideReasons": [{"code": "x", "display": f'<img src=x onerror="{payload}">'}],
        }
        # A card whose link is a javascript: URL (the EHR drops the link or the card; never runs it).
        link_card = {
            "uuid": "c0ffee00-0000-4000-8000-000000000003",
            "summary": "a link",
            "indicator": "info",
            "source": {"label": "Evil Inc"},
            "links": [{"label": "run", "url": f"javascript:{payload}", "type": "absolute"}],
        }
        return JSONResponse({"cards": [card, link_card]})

    @app.post("/cds-services/evil/feedback")
    async def feedback() -> JSONResponse:
        return JSONResponse({})

    return app


def test_a_card_with_malicious_markup_runs_no_script(stack: Stack, browser: Any) -> None:
    port = free_port()
    with serve_tls(evil_service(), stack.up.data_dir, port) as base, stack.admin() as admin:
        added = admin.post(
            "/api/services", json={"discoveryUrl": f"{base}/cds-services", "scope": ["patient/Patient.rs"]}
        )
        assert added.status_code == 201, added.text
        try:
            user = stack.users[0]
            with signed_in(browser, stack, user) as page:
                dialogs: list[str] = []

                def dismiss(dialog: Dialog) -> None:
                    dialogs.append(dialog.message)
                    dialog.dismiss()

                page.on("dialog", dismiss)
                open_chart(page, stack, user.patients[0])
                card = page.locator(".card[data-uuid='c0ffee00-0000-4000-8000-000000000001']")
                card.wait_for()
                card.hover()
                card.locator(".source").hover()
                card.locator("button.dismiss").click()  # the override reasons go into the dialog too
                page.locator("#dismiss-cancel").click()
                page.wait_for_timeout(500)  # give a planted handler every chance to run
                shot(page, "malicious-card")

                assert page.evaluate("window.__pwned") is None
                assert dialogs == []
                # The markup arrived as text where text belongs, and as no element anywhere.
                assert "<img src=x" in card.locator(".summary").inner_text()
                assert card.locator("script, img, svg, iframe, [onerror], [onload], [onmouseover]").count() == 0
                evil_cards = page.locator(".card[data-service='evil']")
                hrefs = [a.get_attribute("href") or "" for a in evil_cards.locator("a").all()]
                assert all(h.startswith("https://") for h in hrefs), hrefs

                # The exchange inspector shows the same hostile response as JSON text, never as markup.
                page.goto(stack.ehr + "/exchanges")
                page.locator(".exchange-row", has_text="evil").first.click()
                detail = page.locator("#exchange-detail")
                detail.wait_for()
                page.wait_for_timeout(500)
                shot(page, "malicious-exchange")
                assert "<script>window.__pwned" in detail.inner_text()
                assert detail.locator("script, img, svg, iframe, a, [onerror], [onload]").count() == 0
                assert page.evaluate("window.__pwned") is None and dialogs == []
        finally:
            for service in added.json().get("services", []):
                admin.post(f"/api/services/{service['id']}/disable")


def test_an_admin_enters_the_admin_token_once_and_manages_services_clients_and_keys(stack: Stack, browser: Any) -> None:
    token = (stack.up.data_dir / "admin-token").read_text().strip()
    with signed_in(browser, stack, stack.users[2]) as page:
        page.goto(stack.ehr + "/admin/services")
        assert page.url == stack.ehr + "/admin"  # not an admin yet: the token form
        page.fill("#admin-token", "a guess")
        page.click("#elevate")
        assert "not the admin token" in page.locator("#error").inner_text()
        page.fill("#admin-token", token)
        page.click("#elevate")  # a real form post: CSRF token and the EHR's Origin
        page.wait_for_url(stack.ehr + "/admin/services")
        service = page.locator(".service[data-service='patient-greeting']")
        service.wait_for()
        assert "Status: enabled" in service.inner_text()
        service.locator("button.toggle").click()
        page.wait_for_function(
            "() => document.querySelector(\".service[data-service='patient-greeting']\").innerText"
            ".includes('Status: disabled')"
        )
        with stack.admin() as admin:
            listed = {s["id"]: s for s in admin.get("/api/services").json()["services"]}
            assert listed["patient-greeting"]["enabled"] is False
        page.locator(".service[data-service='patient-greeting'] button.toggle").click()
        page.wait_for_function(
            "() => document.querySelector(\".service[data-service='patient-greeting']\").innerText"
            ".includes('Status: enabled')"
        )
        shot(page, "admin-services")

        page.goto(stack.ehr + "/admin/clients")
        rows = page.locator("#clients tbody tr", has_text="smart-example")
        assert f"{stack.smart_app}/launch" in rows.inner_text()
        assert token not in page.content() and "secret_hash" not in page.content()  # never in the browser

        page.goto(stack.ehr + "/admin/keys")
        before = page.locator("#keys tbody tr").count()
        page.click("#rotate")
        page.wait_for_url(stack.ehr + "/admin/keys")
        statuses = [r.inner_text() for r in page.locator("#keys tbody tr").all()]
        assert len(statuses) == before + 1
        assert sum("active" in s for s in statuses) == 1 and any("retiring" in s for s in statuses)
        shot(page, "admin-keys")


def test_a_card_dismissed_with_a_reason_sends_feedback_and_the_inspector_shows_the_exchange_redacted(
    stack: Stack, browser: Any
) -> None:
    user = stack.users[0]
    with signed_in(browser, stack, user) as page:
        card = page.locator(".hook-result[data-hook='patient-view'] .card.critical").first
        # Under CI load a CDS Service can miss its 5 s deadline (the chart then shows its error,
        # not its cards): a bounded number of fresh hook calls, each opening the chart again.
        for _ in range(3):
            open_chart(page, stack, user.patients[0])
            if card.count():
                break
        card.wait_for()
        feedback: list[Any] = []
        page.on("response", lambda r: feedback.append(r) if r.url.endswith("/api/feedback") else None)
        card.locator("button.dismiss").click()
        reasons = page.locator("#dismiss-reason option").all_inner_texts()
        assert len(reasons) > 1  # the card's overrideReasons, after "(no reason)"
        page.select_option("#dismiss-reason", index=1)
        page.fill("#dismiss-comment", "discussed with the patient")
        page.click("#dismiss-ok")
        page.wait_for_selector(".card.dismissed")
        assert "Dismissed (feedback sent)" in card.locator(".card-status").inner_text()
        sent = json.loads(feedback[0].request.post_data)
        assert sent["outcome"] == "overridden" and sent["overrideReason"]["display"] == reasons[1]
        assert sent["userComment"] == "discussed with the patient" and feedback[0].status == 200

        page.goto(stack.ehr + "/exchanges")
        row = page.locator(".exchange-row", has_text="abnormal-results").first
        row.click()
        detail = page.locator("#exchange-detail")
        detail.wait_for()
        text = detail.inner_text()
        assert '"access_token": "[redacted]"' in text
        assert "Timings (ms):" in text and "total_ms" in text
        assert re.search(r"eyJ[A-Za-z0-9_-]{10,}\.", text) is None  # no JWT anywhere on the page
        shot(page, "exchanges")


def _sign(page: Any, kind: str, label: str) -> dict[str, Any]:
    """Choose an item, press Sign: order-sign fires with the draft; its answer is returned."""
    page.select_option("#order-kind", kind)
    page.select_option("#order-item", label=label)
    with page.expect_response(lambda r: r.url.endswith("/api/hooks/order-sign")) as fired:
        page.click("#order-sign")
    page.locator("#signature:not([hidden])").wait_for()
    answer: dict[str, Any] = fired.value.json()
    return answer


def test_accepting_remove_the_draft_on_a_duplicate_therapy_card_discards_it_and_writes_nothing(
    stack: Stack, browser: Any
) -> None:
    user = stack.users[0]
    with signed_in(browser, stack, user) as page:
        patient = user.patients[0]
        open_chart(page, stack, patient)
        before = page.locator("#medications tr").count()
        answer = _sign(page, "medication", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet")
        card = page.locator(".hook-result[data-hook='order-sign'] .card", has_text="Duplicate therapy").first
        card.wait_for()
        remove = card.locator("button.accept", has_text="Remove the draft")
        assert remove.count() == 1
        shot(page, "order-sign-review")
        # Confirming before the warning card is decided is refused.
        page.click("#order-confirm")
        page.wait_for_function("() => document.querySelector('#signature-text').innerText.startsWith('Not signed')")
        assert "decide every critical and warning card" in page.locator("#signature-text").inner_text()

        remove.click()
        page.wait_for_selector(".hook-result[data-hook='order-sign'] .card.accepted")
        assert page.locator("#signature").is_hidden()
        assert page.locator("#order-status").inner_text() == "The draft was removed; nothing was ordered."
        shot(page, "order-sign-removed")
        # Signing that draft now is refused by the EHR itself, whatever the browser does.
        draft = answer_draft(answer)
        status = page.evaluate(
            """async (body) => {
                const csrf = document.querySelector('meta[name=csrf-token]').content;
                const r = await fetch('/ui/orders', {method: 'POST', headers: {'Content-Type': 'application/json',
                    'X-CSRF-Token': csrf}, body: JSON.stringify(body)});
                return [r.status, await r.json()]; }""",
            {
                "patientId": patient,
                "hookInstance": answer["hookInstance"],
                "draftId": draft,
                "kind": "medication",
                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                "code": "860975",
            },
        )
        assert status[0] == 409 and "removed this draft" in status[1]["message"]
        page.reload()
        assert page.locator("#medications tr").count() == before
        assert draft not in page.content()


def answer_draft(answer: dict[str, Any]) -> str:
    """The draft's id, from the card's remove suggestion (`MedicationRequest/<draft id>`)."""
    for service in answer["services"]:
        for card in service["cards"]:
            for suggestion in card.get("suggestions", []):
                for action in suggestion.get("actions", []):
                    if action.get("type") == "delete":
                        return str(action["resourceId"]).removeprefix("MedicationRequest/")
    raise AssertionError(f"no remove suggestion in {answer}")


def test_signing_a_harmless_order_writes_it_as_the_user_and_cancelling_writes_nothing(
    stack: Stack, browser: Any
) -> None:
    user = stack.users[1]
    with signed_in(browser, stack, user) as page:
        patient = user.patients[1]
        open_chart(page, stack, patient)
        assert "INR in Platelet" not in page.locator("#orders").inner_text()

        _sign(page, "lab", "INR in Platelet poor plasma by Coagulation assay")
        page.click("#order-cancel")
        assert page.locator("#order-status").inner_text() == "Cancelled; nothing was ordered."
        page.reload()
        assert "INR in Platelet" not in page.locator("#orders").inner_text()

        _sign(page, "lab", "CBC panel - Blood by Automated count")
        assert "No CDS concerns" in page.locator("#signature-text").inner_text()
        with page.expect_response(lambda r: r.url.endswith("/ui/orders")) as signed:
            page.click("#order-confirm")
        written = signed.value.json()
        assert signed.value.status == 201 and written["resourceType"] == "ServiceRequest"
        assert written["status"] == "active"
        page.wait_for_function("() => document.querySelector('#orders').innerText.includes('CBC panel')")
        assert page.locator("#order-status").inner_text().startswith(f"Signed: ServiceRequest/{written['id']}")
        shot(page, "order-signed")
        page.reload()
        row = page.locator(f"#orders tr[data-id='{written['id']}']")
        assert "CBC panel" in row.inner_text() and "active" in row.inner_text()
        assert "INR in Platelet" not in page.locator("#orders").inner_text()
        # Confirming the same signature again (a double click, a lost answer) orders nothing more.
        again = page.evaluate(
            """async (body) => {
                const csrf = document.querySelector('meta[name=csrf-token]').content;
                const r = await fetch('/ui/orders', {method: 'POST', headers: {'Content-Type': 'application/json',
                    'X-CSRF-Token': csrf}, body});
                return [r.status, await r.json()]; }""",
            signed.value.request.post_data,
        )
        assert again[0] == 200 and again[1]["id"] == written["id"] and again[1]["created"] is False
        page.reload()
        assert page.locator("#orders tr", has_text="CBC panel").count() == 1


def test_another_users_cards_exchanges_and_order_sign_calls_look_missing_to_a_session(
    stack: Stack, browser: Any
) -> None:
    owner, intruder = stack.users[0], stack.users[1]
    with signed_in(browser, stack, owner) as page:
        page.goto(f"{stack.ehr}/patients/{owner.patients[0]}")
        with page.expect_response(lambda r: r.url.endswith("/api/hooks/patient-view")) as fired:
            page.wait_for_selector(".hook-result[data-hook='patient-view'] .card")
        answer = fired.value.json()
    service = next(s for s in answer["services"] if any(c.get("suggestions") for c in s["cards"]))
    card = next(c for c in service["cards"] if c.get("suggestions"))
    with signed_in(browser, stack, intruder) as page:
        calls = page.evaluate(
            """async ([hookInstance, serviceId, card, patientId]) => {
                const csrf = document.querySelector('meta[name=csrf-token]').content;
                const post = (path, body) => fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json',
                    'X-CSRF-Token': csrf}, body: JSON.stringify(body)}).then((r) => r.status);
                return {
                    inspector: (await fetch(`/api/exchanges/${hookInstance}`)).status,
                    accept: await post('/api/suggestions/accept', {hookInstance, serviceId, cardUuid: card.uuid,
                        suggestionUuid: card.suggestions[0].uuid}),
                    feedback: await post('/api/feedback', {hookInstance, serviceId, cardUuid: card.uuid,
                        outcome: 'overridden'}),
                    chart: (await fetch(`/patients/${patientId}`)).status,
                    listed: (await (await fetch('/api/exchanges')).json()).exchanges
                        .some((e) => e.hookInstance === hookInstance),
                };
            }""",
            [answer["hookInstance"], service["serviceId"], card, owner.patients[1]],
        )
        assert calls == {"inspector": 404, "accept": 404, "feedback": 404, "chart": 404, "listed": False}
    # The owner's card is still undecided: the intruder's attempts changed nothing.
    with signed_in(browser, stack, owner) as page:
        status = page.evaluate(
            """async ([hookInstance, serviceId, cardUuid]) => {
                const csrf = document.querySelector('meta[name=csrf-token]').content;
                const r = await fetch('/api/feedback', {method: 'POST', headers: {'Content-Type': 'application/json',
                    'X-CSRF-Token': csrf}, body: JSON.stringify({hookInstance, serviceId, cardUuid,
                    outcome: 'overridden'})});
                return r.status; }""",
            [answer["hookInstance"], service["serviceId"], card["uuid"]],
        )
        assert status == 200


def test_removing_the_draft_from_an_order_select_card_discards_it_before_any_signature(
    stack: Stack, browser: Any
) -> None:
    user = stack.users[0]
    with signed_in(browser, stack, user) as page:
        open_chart(page, stack, user.patients[0])
        before = page.locator("#medications tr").count()
        page.select_option("#order-kind", "medication")
        page.select_option("#order-item", label="24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet")
        page.click("#order-select")
        card = page.locator(".hook-result[data-hook='order-select'] .card", has_text="Duplicate therapy").first
        card.locator("button.accept", has_text="Remove the draft").click()
        page.wait_for_function(
            "() => document.querySelector('#order-status').innerText === 'The draft was removed; nothing was ordered.'"
        )
        assert page.locator("#signature").is_hidden()
        page.reload()
        assert page.locator("#medications tr").count() == before


def test_the_apps_menu_launches_the_example_app_which_shows_the_patient_and_their_medications(
    stack: Stack, browser: Any
) -> None:
    user = stack.users[0]
    with signed_in(browser, stack, user) as page:
        patient = user.patients[0]
        open_chart(page, stack, patient)
        page.click("#apps-menu summary")
        button = page.locator("#apps-list button.app-launch", has_text="smart-example").or_(
            page.locator(f"#apps-list button.app-launch[data-url='{stack.smart_app}/launch']")
        )
        page.select_option("#launch-lifetime", "60")
        shot(page, "apps-menu")
        with page.context.expect_page() as opened:
            button.first.click()
        app = opened.value
        app.wait_for_selector("#patient-id, #error")
        assert app.url.startswith(stack.smart_app + "/callback?")
        assert app.locator("#patient-id").inner_text() == patient
        assert "metformin" in app.locator("#medication-list").inner_text().lower()  # the seed's diabetic patient
        # The EHR's look: the EHR's stylesheet applied (its header colour), served by the app.
        color = app.evaluate("getComputedStyle(document.querySelector('header.top')).backgroundColor")
        assert color == "rgb(18, 50, 79)"
        shot(app, "smart-app-medications")
        # The launch and its options are on record.
        page.goto(stack.ehr + "/launches")
        row = page.locator("#launches tbody tr.launch-row").first
        assert patient in row.inner_text() and "token lifetime 60 s" in row.inner_text()


def test_an_admin_registers_a_smart_app_in_the_form_and_sees_its_secret_once(stack: Stack, browser: Any) -> None:
    token = (stack.up.data_dir / "admin-token").read_text().strip()
    with signed_in(browser, stack, stack.users[1]) as page:
        page.goto(stack.ehr + "/admin")
        page.fill("#admin-token", token)
        page.click("#elevate")
        page.wait_for_url(stack.ehr + "/admin/services")
        page.goto(stack.ehr + "/admin/clients")
        page.click("#register-app")
        page.fill("#reg-client-id", "browser-app")
        page.fill("#reg-name", "Browser app")
        page.fill("#reg-redirect-uris", "http://app.example/callback")  # not https: the admin API refuses
        page.fill("#reg-launch-url", "https://app.example/launch")
        page.check("#reg-type-confidential-symmetric")
        page.click("#reg-submit")
        assert "https" in page.locator("#register-error").inner_text()
        assert page.input_value("#reg-client-id") == "browser-app"  # the form keeps what was typed
        page.fill("#reg-redirect-uris", "https://app.example/callback")
        page.click("#reg-submit")
        page.wait_for_selector("#registered")
        secret = page.locator("#client-secret").inner_text()
        assert len(secret) >= 40
        shot(page, "admin-register")
        page.goto(stack.ehr + "/admin/clients")
        assert "browser-app" in page.locator("#clients").inner_text()
        assert secret not in page.content()
