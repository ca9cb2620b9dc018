"""The SMART JavaScript client as app developers use it: npm `fhirclient` (version pinned by
tests/browser/jsapp/package-lock.json) with every setting at its default, in Debian's Chromium,
against the stack started as `make up` starts it and with no CORS variable set.

The app (tests/browser/jsapp/public) is plain HTML served with the library's browser bundle from
its own origin by a loopback HTTPS server (dev-CA certificate). It is registered as a public
smart-app client with the CLI, as docs/guides/smart-app.md tells a developer to. Chromium trusts the dev CA
through a fresh NSS database (`tests.browser.chromium.trusting_home`), nothing else. The app writes
what each call answered into its page; the tests read it, and watch the token requests the
browser sends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import pytest
from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tests.browser.chromium import ARTIFACTS, require_chromium
from tests.browser.ehr_stack import TIMEOUT, Stack, User, open_chart, signed_in
from tests.browser.fhirclient_js import PUBLIC, fhirclient_bundle
from tests.e2e.conftest import free_base_port, start_up
from tests.integration.probeharness import free_port, serve_tls

pytestmark = pytest.mark.e2e

APP = "js-app"
# The most the app may ever be granted; its pages ask for all of it, as docs/guides/smart-app.md's launch.html does.
APP_SCOPE = ["openid", "fhirUser", "launch", "launch/patient", "offline_access", "patient/*.rs"]


@dataclass
class AppStack(Stack):
    app: str = ""  # the test app's origin, https://localhost:<port>

    @property
    def auth(self) -> str:
        return f"https://localhost:{self.up.base_port + 1}"

    @property
    def fhir(self) -> str:
        return f"https://localhost:{self.up.base_port + 2}/fhir"


def static_app(bundle: Path) -> Starlette:
    """The app's pages and fhirclient's browser bundle, as any static host would serve them."""

    async def fhir_client_js(_: Any) -> FileResponse:
        return FileResponse(bundle, media_type="text/javascript")

    return Starlette(
        routes=[Route("/fhir-client.js", fhir_client_js), Mount("/", StaticFiles(directory=PUBLIC))],
    )


def mockehr(stack: AppStack, *args: str) -> str:
    """Run the `mockehr` CLI on the stack's data directory, as a developer would."""
    result = subprocess.run(
        [sys.executable, "-m", "mockehr", *args, "--data-dir", str(stack.up.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def register_app(stack: AppStack, client_id: str, origin: str) -> None:
    """`mockehr clients add`, exactly as docs/guides/smart-app.md shows."""
    scopes = [arg for scope in APP_SCOPE for arg in ("--scope", scope)]
    mockehr(
        stack,
        *("clients", "add", client_id, "--kind", "smart-app", "--auth-method", "none"),
        *("--redirect-uri", f"{origin}/app.html", "--launch-url", f"{origin}/launch.html", *scopes),
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppStack]:
    require_chromium()
    bundle = fhirclient_bundle()
    data_dir = tmp_path_factory.mktemp("fhirclient-js") / ".mockehr"
    with pytest.MonkeyPatch.context() as env:
        # The point of the test: registering the app is enough, no CORS origin is configured.
        for name in [n for n in os.environ if n.startswith("MOCKEHR_") and "CORS" in n]:
            env.delenv(name)
        port = free_port()
        up = start_up(data_dir, free_base_port(), "--patients", "6")
    try:
        up.wait_for("Ctrl-C stops every service.")
        found = AppStack(up, app=f"https://localhost:{port}")
        register_app(found, APP, found.app)
        with serve_tls(static_app(bundle), data_dir, port):
            yield found
    finally:
        up.stop()


@dataclass
class Traffic:
    """The bodies of the token requests the browser sent, and what its consoles said."""

    sent: list[dict[str, list[str]]] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def of(self, grant: str) -> list[dict[str, list[str]]]:
        return [body for body in self.sent if body.get("grant_type") == [grant]]


@contextmanager
def watching(context: Any, stack: AppStack) -> Iterator[Traffic]:
    """Record the browser's token requests; on a failure, say what the pages and consoles showed."""
    traffic = Traffic()

    def seen(request: Any) -> None:
        if request.method == "POST" and request.url == f"{stack.auth}/token":
            traffic.sent.append(parse_qs(request.post_data or ""))

    def page_opened(page: Any) -> None:
        page.on("console", lambda m: traffic.console.append(f"{page.url}: {m.type}: {m.text}"))

    context.on("request", seen)
    context.on("page", page_opened)
    for page in context.pages:
        page_opened(page)
    try:
        yield traffic
    except Exception as exc:
        pages = "\n".join(f"{p.url}: {p.locator('body').inner_text()[:500]!r}" for p in context.pages)
        consoles = "\n".join(traffic.console)
        raise AssertionError(f"{exc}\npages:\n{pages}\nconsole:\n{consoles}") from exc


def results_of(page: Any, name: str) -> dict[str, Any]:
    """What the app wrote into its page, once it finished or failed."""
    page.wait_for_selector("#done:not([hidden]), #error:not(:empty)")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"fhirclient-js-{name}.png"), full_page=True)
    fields = ("patient", "observations", "user", "refresh", "after-refresh", "error")
    texts = {f: page.locator(f"#{f}").inner_text() for f in fields}
    assert texts["error"] == "", f"the app stopped at {texts['error']} ({texts})"
    return {f: json.loads(t) for f, t in texts.items() if t}


def assert_the_app_read_everything(results: dict[str, Any], patient: str, user: User, tokens: Traffic) -> None:
    assert results["patient"] == {"context": patient, "resourceType": "Patient", "id": patient}
    # Two pages of two: the second one came through the first one's `next` link.
    pages = results["observations"]
    assert len(pages) == 2 and pages[0]["next"], pages
    ids = [i for p in pages for i in p["ids"]]
    assert len(pages[0]["ids"]) == 2 and pages[1]["ids"] and len(set(ids)) == len(ids), pages
    assert {s for p in pages for s in p["subjects"]} == {f"Patient/{patient}"}
    practitioner = user.fhir_user.removeprefix("Practitioner/")
    assert results["user"]["resourceType"] == "Practitioner" and results["user"]["id"] == practitioner
    assert results["user"]["fhirUser"].endswith(user.fhir_user)
    assert results["refresh"]["newAccessToken"] and results["refresh"]["newRefreshToken"], results["refresh"]
    assert results["after-refresh"] == {"resourceType": "Patient", "id": patient}
    # The library's default refresh (refreshTokenWithClientId: false) names no client at all.
    refreshes = tokens.of("refresh_token")
    assert len(refreshes) == 1 and "client_id" not in refreshes[0], refreshes
    (code,) = tokens.of("authorization_code")
    assert code["client_id"] == [APP] and code["code_verifier"], code  # PKCE, by the library's default


def test_an_app_written_with_fhirclient_js_defaults_completes_a_standalone_launch_through_login_and_the_picker(
    stack: AppStack, browser: Any
) -> None:
    user = stack.users[0]
    patient = user.patients[1]  # not the picker's preselected first patient
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT)
    try:
        with watching(context, stack) as tokens:
            page = context.new_page()
            page.goto(f"{stack.app}/standalone.html?iss={quote(stack.fhir, safe='')}")
            page.wait_for_url(f"{stack.auth}/login?**")
            page.fill("input[name=username]", user.login)
            page.fill("input[name=password]", user.password)
            page.click("button[type=submit]")
            page.wait_for_selector(f"input[name=patient][value='{patient}']").check()
            page.click("button[type=submit]:not([name=cancel])")
            page.wait_for_url(f"{stack.app}/app.html?**")
            results = results_of(page, "standalone")
        assert_the_app_read_everything(results, patient, user, tokens)
    finally:
        context.close()


def test_an_app_written_with_fhirclient_js_defaults_completes_an_ehr_launch_from_the_charts_apps_menu(
    stack: AppStack, browser: Any
) -> None:
    user = stack.users[0]
    patient = user.patients[0]
    with signed_in(browser, stack, user) as page:
        open_chart(page, stack, patient)
        with watching(page.context, stack) as tokens:
            page.click("#apps-menu summary")
            with page.context.expect_page() as opened:
                page.click(f"#apps-list button.app-launch[data-client='{APP}']")
            app = opened.value
            app.wait_for_url(f"{stack.app}/app.html?**")
            results = results_of(app, "ehr-launch")
        assert_the_app_read_everything(results, patient, user, tokens)


CORS_PROBE = """async (urls) => {
    const answers = [];
    for (const url of urls) {
        // no-store: the server's answer now, not the one the browser cached (discovery is
        // cacheable for 300 s, and a cached response keeps the CORS header it came with).
        try { answers.push((await fetch(url, {cache: "no-store"})).status); }
        catch (error) { answers.push(String(error)); }
    }
    return answers;
}"""


def test_disabling_an_app_withdraws_its_cors_origin_and_its_apps_menu_entry_at_once(
    stack: AppStack, browser: Any
) -> None:
    # An app of its own, on an origin of its own, so that the other tests' app keeps working.
    other = "js-app-disabled"
    bundle = fhirclient_bundle()
    with serve_tls(static_app(bundle), stack.up.data_dir) as origin:
        register_app(stack, other, origin)
        user = stack.users[0]
        with signed_in(browser, stack, user) as page:
            app = page.context.new_page()
            app.goto(f"{origin}/fhir-client.js")  # any document of the app's origin
            urls = [f"{stack.fhir}/.well-known/smart-configuration", f"{stack.auth}/.well-known/openid-configuration"]
            assert app.evaluate(CORS_PROBE, urls) == [200, 200]
            open_chart(page, stack, user.patients[0])
            entry = f"#apps-list button.app-launch[data-client='{other}']"
            assert page.locator(entry).count() == 1

            assert "disabled" in mockehr(stack, "clients", "disable", other)

            # No wait: the very next requests are refused. The browser's fetch fails on CORS.
            answers = app.evaluate(CORS_PROBE, urls)
            assert all(str(a).startswith("TypeError") for a in answers), answers
            open_chart(page, stack, user.patients[0])
            assert page.locator(entry).count() == 0
            # Nor does a launch of its URL go through the EHR by hand.
            refused = page.evaluate(
                """async ([url, patientId]) => {
                    const csrf = document.querySelector('meta[name=csrf-token]').content;
                    const r = await fetch('/ui/launch', {method: 'POST', headers: {'Content-Type': 'application/json',
                        'X-CSRF-Token': csrf}, body: JSON.stringify({url, patientId})});
                    return r.status; }""",
                [f"{origin}/launch.html", user.patients[0]],
            )
            assert refused == 403
            # The app that stays registered still gets its CORS answers.
            still = page.context.new_page()
            still.goto(f"{stack.app}/fhir-client.js")
            assert still.evaluate(CORS_PROBE, urls) == [200, 200]
