"""A browser, as far as HTML forms go: the forms of a page, with what a browser would post back
(hidden inputs) and the choices it offers (radio buttons)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

import httpx


@dataclass
class Form:
    action: str
    hidden: dict[str, str] = field(default_factory=dict)
    radios: dict[str, list[str]] = field(default_factory=dict)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append(Form(action=attr.get("action", "")))
        elif tag == "input" and self.forms and attr.get("name"):
            if attr.get("type") == "hidden":
                self.forms[-1].hidden[attr["name"]] = attr.get("value", "")
            elif attr.get("type") == "radio":
                self.forms[-1].radios.setdefault(attr["name"], []).append(attr.get("value", ""))


def form(page: httpx.Response, action: str) -> Form:
    """The one form of `page` posting to `action`."""
    parser = _FormParser()
    parser.feed(page.text)
    found = [f for f in parser.forms if f.action == action]
    assert len(found) == 1, f"no single form posting to {action} in:\n{page.text}"
    return found[0]
