"""The probe's HTML report renders in Chromium: readable, complete, and loading nothing.

Debian's Chromium through Playwright's `executable_path` (no browser is ever downloaded). A
screenshot is saved under test-artifacts/ for a human to look at.
"""

from __future__ import annotations

from pathlib import Path

from common.tls import ensure_ca
from mockehr.probe.report import as_html, summary_line
from mockehr.probe.runner import ProbeOptions, probe
from tests.browser.chromium import ARGS, ARTIFACTS, CHROMIUM, require_chromium
from tests.integration.probeharness import Weakness, create_double, free_port, serve_tls


async def test_the_html_report_of_a_weak_service_renders_every_result_in_chromium(tmp_path: Path) -> None:
    require_chromium()
    from playwright.async_api import async_playwright

    ensure_ca(tmp_path)
    jwks_port, port = free_port(), free_port()
    issuer = f"https://localhost:{jwks_port}"
    app = create_double(
        Weakness(check_aud=False, verbose_errors=True),
        issuer=issuer,
        jwks_url=f"{issuer}/.well-known/jwks.json",
        base_url=f"https://localhost:{port}",
        ca_file=tmp_path / "ca.pem",
    )
    with serve_tls(app, tmp_path, port) as base:
        report = await probe(ProbeOptions(f"{base}/cds-services", tmp_path, jwks_port))
    page_file = tmp_path / "report.html"
    page_file.write_text(as_html(report), encoding="utf-8")

    requested: list[str] = []
    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requested.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(page_file.as_uri())

            assert await page.title() == f"mockehr probe: {report.target}"
            assert (await page.inner_text("#score")).strip() == summary_line(report)
            rows = page.locator("tr[data-check]")
            assert await rows.count() == len(report.results)
            failed = page.locator('tr[data-verdict="fail"]')
            assert await failed.count() == report.count("fail") > 0
            aud_row = page.locator('tr[data-check="aud-base-url"][data-verdict="fail"]').first
            assert await aud_row.is_visible()
            assert "accepted" in await aud_row.inner_text()
            # The explanations are on the page, each check once.
            assert await page.locator("dt#aud-base-url").count() == 1
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "probe-report.png"), full_page=True)
        finally:
            await browser.close()

    assert requested == [page_file.as_uri()]  # self-contained: nothing else was loaded
    assert errors == []
