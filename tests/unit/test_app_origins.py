"""The origin of a registered SMART app's URL, as a browser would send it in `Origin` (RFC 6454 §6.2)."""

from __future__ import annotations

import pytest

from common.app_origins import origin_of


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://app.example/callback?x=1#f", "https://app.example"),
        ("https://App.Example:443/cb", "https://app.example"),
        ("HTTP://localhost:80/cb", "http://localhost"),
        ("http://127.0.0.1:8000/cb", "http://127.0.0.1:8000"),
        ("https://launch.example:8443/launch.html", "https://launch.example:8443"),
        ("https://[::1]:9000/cb", "https://[::1]:9000"),
    ],
)
def test_the_origin_is_serialized_as_a_browser_sends_it(url: str, origin: str) -> None:
    assert origin_of(url) == origin


@pytest.mark.parametrize(
    "url",
    [
        "null",
        "app.example",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "https://user@app.example/cb",
        "https://app.example:99999/cb",
        "https://äpp.example/cb",
        "https:///cb",
        "https://" + "a" * 300 + ".example",
    ],
)
def test_what_is_not_an_http_origin_has_none(url: str) -> None:
    assert origin_of(url) is None
