"""The browser tests' running stack and Chromium, one of each per module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.chromium import require_chromium, trusted_chromium
from tests.browser.ehr_stack import Stack
from tests.e2e.conftest import free_base_port, start_up


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_chromium()
    data_dir = tmp_path_factory.mktemp("browser") / ".mockehr"
    up = start_up(data_dir, free_base_port(), "--patients", "6")
    try:
        up.wait_for("Ctrl-C stops every service.")
        found = Stack(up)
        with found.admin() as admin:  # `mockehr up` allow-lists the example CDS Service itself
            listed = {s["id"] for s in admin.get("/api/services").json()["services"]}
            assert {"abnormal-results", "medication-safety"} <= listed, listed
        yield found
    finally:
        up.stop()


@pytest.fixture(scope="module")
def browser(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with trusted_chromium(stack.up.data_dir / "ca.pem", tmp_path_factory.mktemp("chromium-home")) as chromium:
        yield chromium
