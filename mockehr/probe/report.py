"""The probe's report: a terminal table with a score, JSON for machines, and one HTML file.

The HTML is self-contained (inline CSS, no script, no external asset; a CSP forbids loading any)
and escapes every value, since details and URLs come from the service under test.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mockehr.probe.checks import ALL_CHECKS
from mockehr.probe.judge import Verdict
from mockehr.probe.runner import Report, Result

_STYLE: dict[Verdict, str] = {"pass": "green", "fail": "bold red", "inconclusive": "yellow", "skipped": "dim"}


def score(report: Report) -> dict[str, int]:
    """run = pass + fail + inconclusive; total = run + skipped (the checks of endpoints not served)."""
    return {
        "pass": report.count("pass"),
        "fail": report.count("fail"),
        "inconclusive": report.count("inconclusive"),
        "run": report.run,
        "skipped": report.count("skipped"),
        "total": len(report.results),
    }


def summary_line(report: Report) -> str:
    s = score(report)
    return (
        f"{s['pass']}/{s['run']} checks passed, {s['fail']} failed, {s['inconclusive']} inconclusive, "
        f"{s['skipped']} skipped"
    )


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def as_json(report: Report) -> dict[str, Any]:
    used = {r.check.id for r in report.results}
    return {
        "target": report.target,
        "issuer": report.issuer,
        "jwks_url": report.jwks_url,
        "started_at": _iso(report.started_at),
        "finished_at": _iso(report.finished_at or report.started_at),
        "passed": report.passed,
        "score": score(report),
        "notes": list(report.notes),
        "not_served": report.not_served,
        "results": [
            {
                "endpoint": r.endpoint,
                "kind": r.kind,
                "url": r.url,
                "check": r.check.id,
                "title": r.check.title,
                "expect": r.check.expect,
                "verdict": r.verdict,
                "detail": r.detail,
                "reference": r.check.reference,
            }
            for r in report.results
        ],
        "checks": [
            {
                "id": c.id,
                "title": c.title,
                "expect": c.expect,
                "explanation": c.explanation,
                "reference": c.reference,
                "endpoints": sorted(c.kinds),
            }
            for c in ALL_CHECKS
            if c.id in used
        ],
    }


def _safe(value: str) -> Text:
    """Service-controlled text for the terminal: no markup, no escape sequences or control codes."""
    return Text("".join(ch if ch.isprintable() else "\N{REPLACEMENT CHARACTER}" for ch in value))


def _verdict(verdict: Verdict) -> Text:
    return Text(verdict, style=_STYLE[verdict])


def _worst(verdicts: list[Verdict]) -> Verdict:
    for verdict in ("fail", "inconclusive", "pass"):
        if verdict in verdicts:
            return verdict
    return "skipped"


def print_table(console: Console, report: Report, *, per_endpoint: bool = False) -> None:
    """The results: one row per check (all endpoints together), or one per endpoint and check."""
    console.print(Text.assemble("probe of ", _safe(report.target), f" as issuer {report.issuer}"))
    if per_endpoint:
        table = Table("endpoint", "check", "verdict", "detail")
        previous = ""
        for r in report.results:
            if previous and r.endpoint != previous:
                table.add_section()
            previous = r.endpoint
            table.add_row(_safe(r.endpoint), Text(r.check.title), _verdict(r.verdict), _safe(r.detail))
    else:
        table = Table("check", "what is sent", "verdict", "endpoints", "detail")
        by_check: dict[str, list[Result]] = {c.id: [] for c in ALL_CHECKS}
        for r in report.results:
            by_check.setdefault(r.check.id, []).append(r)
        for results in by_check.values():
            if not results:
                continue
            worst = _worst([r.verdict for r in results])
            passed = sum(1 for r in results if r.verdict == "pass")
            ran = sum(1 for r in results if r.verdict != "skipped")
            others = [r for r in results if r.verdict not in ("pass", "skipped")]
            detail = "; ".join(f"{r.endpoint}: {r.detail}" for r in others[:2])
            if len(others) > 2:
                detail += f" (and {len(others) - 2} more)"
            check = results[0].check
            table.add_row(check.id, check.title, _verdict(worst), f"{passed}/{ran}", _safe(detail))
    console.print(table)
    for note in report.notes:
        console.print(Text.assemble(("note: ", "yellow"), _safe(note)))
    failed = {r.check.id: r.check for r in report.results if r.verdict == "fail"}
    for check in failed.values():
        console.print(Text.assemble((check.id, "bold red"), f": {check.explanation} ({check.reference})"))
    console.print(Text(summary_line(report), style="bold green" if report.passed else "bold red"))


_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;color:#1b1b1b;background:#fff}
h1{font-size:1.5rem;margin-bottom:.25rem}h2{font-size:1.15rem;margin-top:2rem}
.meta{color:#444}.meta code{background:#f2f2f2;padding:0 .25rem}
.score{font-size:1.2rem;font-weight:600;padding:.6rem .9rem;border-radius:.4rem;display:inline-block}
.score.ok{background:#e3f4e6;color:#14532d}.score.bad{background:#fde8e8;color:#7f1d1d}
table{border-collapse:collapse;width:100%;margin-top:.5rem}
th,td{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.url{word-break:break-all}
.v{font-weight:700;text-transform:uppercase;font-size:.8rem;padding:.1rem .4rem;border-radius:.25rem}
.v.pass{background:#d1f0d8;color:#14532d}.v.fail{background:#fbd5d5;color:#7f1d1d}
.v.inconclusive{background:#fdf0c4;color:#6b4b00}.v.skipped{background:#eee;color:#444}
dt{font-weight:600;margin-top:.6rem}dd{margin-left:1rem}.ref{color:#555;font-size:.9rem}
"""


def as_html(report: Report) -> str:
    e = html.escape
    s = score(report)
    ok = report.passed
    parts: list[str] = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>mockehr probe: {e(report.target)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>CDS Service security probe</h1>",
        f'<p class="meta">Target <code>{e(report.target)}</code> · issuer <code>{e(report.issuer)}</code> · '
        f"JWKS <code>{e(report.jwks_url)}</code> · {e(_iso(report.started_at))}</p>",
        f'<p class="score {"ok" if ok else "bad"}" id="score">{e(summary_line(report))}</p>',
    ]
    parts.extend(f'<p class="note">{e(note)}</p>' for note in report.notes)
    not_passed = [r for r in report.results if r.verdict not in ("pass", "skipped")]
    if not_passed:
        parts.append('<h2>Not passed</h2><ul id="not-passed">')
        parts.extend(
            f'<li><span class="v {e(r.verdict)}">{e(r.verdict)}</span> {e(r.endpoint)} · '
            f'<a href="#{e(r.check.id)}">{e(r.check.title)}</a>: {e(r.detail)}</li>'
            for r in not_passed
        )
        parts.append("</ul>")
    endpoints: dict[str, list[Any]] = {}
    for r in report.results:
        endpoints.setdefault(r.endpoint, []).append(r)
    for name, results in endpoints.items():
        parts.append(f"<h2>{e(name)}</h2>")
        served = "" if name not in report.not_served else ' · <strong class="not-served">not served</strong>'
        parts.append(f'<p class="meta url">{e(results[0].kind)} · <code>{e(results[0].url)}</code>{served}</p>')
        parts.append("<table><thead><tr><th>check</th><th>verdict</th><th>detail</th></tr></thead><tbody>")
        for r in results:
            parts.append(
                f'<tr data-check="{e(r.check.id)}" data-verdict="{e(r.verdict)}"><td>{e(r.check.title)}'
                f'<div class="ref">{e(r.check.id)}</div></td><td><span class="v {e(r.verdict)}">{e(r.verdict)}</span>'
                f"</td><td>{e(r.detail)}</td></tr>"
            )
        parts.append("</tbody></table>")
    parts.append("<h2>The checks</h2><dl>")
    used = {r.check.id for r in report.results}
    for check in ALL_CHECKS:
        if check.id in used:
            expect = "must be accepted" if check.expect == "accept" else "must be refused (bare 401/403, no card)"
            parts.append(
                f'<dt id="{e(check.id)}">{e(check.title)} <span class="ref">({e(check.id)}, {e(expect)})</span></dt>'
                f'<dd>{e(check.explanation)}<div class="ref">{e(check.reference)}</div></dd>'
            )
    parts.append("</dl>")
    parts.append(
        f'<p class="meta">{s["run"]} checks run, {s["skipped"]} skipped · generated by mockehr probe</p></body></html>'
    )
    return "\n".join(parts)
