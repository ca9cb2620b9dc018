"""Rendering the UI's pages, with the headers every page carries.

Content-Security-Policy: scripts and styles only from the EHR itself (no inline script at all;
the nonce lets a page carry an inline script only if it is ever needed, none does), XHR only to
the EHR, no plugins, no <base>, forms only to the EHR, never framed. Card details are sanitized
HTML rendered by the API (`detailHtml`); the CSP is the second wall should a sanitizer ever fail.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import secrets
from pathlib import Path
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")
_NEXT = re.compile(r"/[A-Za-z0-9/_.\-]{0,200}")


def csp(nonce: str) -> str:
    return (
        "default-src 'self'; "
        f"script-src 'self' 'nonce-{nonce}'; "
        "style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


PAGE_HEADERS = {
    "X-Frame-Options": "DENY",
    # Not no-referrer: with it, Chromium sends `Origin: null` on form posts, and the EHR checks
    # the Origin of every unsafe request. same-origin still tells no other site (an app, a card's
    # link) which page, patient id included, the user came from.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin-allow-popups",
}


def _when(epoch: object) -> str:
    """Seconds since the epoch as UTC date and time, for the admin tables."""
    if isinstance(epoch, int | float) and not isinstance(epoch, bool):
        return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return ""


def _pretty_json(value: object) -> str:
    """JSON as the text a developer reads in the inspector: not HTML-safe JSON (Jinja's `tojson`
    writes `<` as `\\u003c`), since autoescaping already makes every character text."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


@functools.cache
def templates() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True), auto_reload=False)
    env.filters["when"] = _when
    env.filters["pretty_json"] = _pretty_json
    return env


def render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    html = templates().get_template(template).render(nonce=nonce, **context)
    return HTMLResponse(html, status_code=status, headers={**PAGE_HEADERS, "Content-Security-Policy": csp(nonce)})


def safe_next(value: object) -> str:
    """A local path to return to after sign-in (never another origin: no open redirect)."""
    if isinstance(value, str) and _NEXT.fullmatch(value) and not value.startswith("//"):
        return value
    return "/patients"
