"""Rendering what a CDS Service says, without letting it script the EHR (Argonaut R1, R2).

Card `detail` is GitHub-flavoured markdown (CDS Hooks 2.0 §Card). It is rendered with
markdown-it-py with raw HTML *disabled* (an HTML tag in the markdown stays literal text), images
disabled (no tracking pixels, no data: URLs), and links kept only when they are https to a host
on the configured allow-list — any other link is rendered as its plain text. The resulting HTML
then goes through nh3 (ammonia) with a small tag allow-list and the https scheme only, as
defence in depth should a markdown-it rule ever emit something unexpected.

Summaries and labels are plain text: `escape_text` HTML-escapes them.
"""

from __future__ import annotations

import html
from collections.abc import Collection
from urllib.parse import urlsplit

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token

ALLOWED_TAGS = frozenset(
    {
        "p", "br", "hr", "em", "strong", "s", "del", "code", "pre", "blockquote",
        "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
        "table", "thead", "tbody", "tr", "th", "td", "a",
    }
)  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "th": {"style"}, "td": {"style"}}


def escape_text(text: str) -> str:
    """Plain text for an HTML context (summary, labels): every markup character escaped."""
    return html.escape(text, quote=True)


def https_host(url: str) -> str | None:
    """The lower-cased host of an https URL with no credentials, else None."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme.lower() != "https" or not parts.hostname or parts.username or parts.password:
        return None
    return parts.hostname.lower()


class MarkdownRenderer:
    """Markdown → safe HTML; links only to https hosts in `allowed_link_hosts`."""

    def __init__(self, allowed_link_hosts: Collection[str] = ()) -> None:
        self._hosts = frozenset(h.lower() for h in allowed_link_hosts)
        # "commonmark" + GFM tables and strikethrough; html=False makes raw HTML literal text.
        self._md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
        self._md.enable(["table", "strikethrough"])
        self._md.disable(["image", "html_inline", "html_block"])

    def link_allowed(self, url: str, extra_hosts: Collection[str] = ()) -> bool:
        host = https_host(url)
        return host is not None and (host in self._hosts or host in extra_hosts)

    def _drop_links(self, tokens: list[Token], extra_hosts: Collection[str]) -> None:
        for token in tokens:
            if token.children:
                kept: list[Token] = []
                dropping: list[bool] = []
                for child in token.children:
                    if child.type == "link_open":
                        href = str(child.attrGet("href") or "")
                        allowed = self.link_allowed(href, extra_hosts)
                        dropping.append(not allowed)
                        if allowed:
                            kept.append(child)
                        continue
                    if child.type == "link_close":
                        if dropping and not dropping.pop():
                            kept.append(child)
                        continue
                    kept.append(child)
                token.children = kept

    def render(self, text: str, extra_hosts: Collection[str] = ()) -> str:
        """Safe HTML; `extra_hosts` (lower-case) are allowed link hosts for this call only."""
        tokens = self._md.parse(text)
        self._drop_links(tokens, frozenset(extra_hosts))
        rendered = self._md.renderer.render(tokens, self._md.options, {})
        return nh3.clean(
            rendered,
            tags=set(ALLOWED_TAGS),
            attributes={k: set(v) for k, v in ALLOWED_ATTRIBUTES.items()},
            url_schemes={"https"},
            link_rel="noopener noreferrer nofollow",
            filter_style_properties={"text-align"},
        )
