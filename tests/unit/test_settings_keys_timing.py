"""Settings that would let a rotated key sign before verifiers can have seen it are refused."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from common.settings import load_settings
from ehr.settings import EhrSettings


def test_publish_ahead_shorter_than_refresh_plus_refetch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOCKEHR_EHR_KEY_REFRESH_SECONDS", "5")
    monkeypatch.setenv("MOCKEHR_EHR_KEY_PUBLISH_AHEAD_SECONDS", "5")
    with pytest.raises(ConfigError) as caught:
        load_settings(EhrSettings)
    assert "key_publish_ahead_seconds must be 0 or ≥ key_refresh_seconds + 2" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_defaults_keep_publish_ahead_above_refresh_plus_refetch() -> None:
    settings = EhrSettings()
    assert settings.key_publish_ahead_seconds >= settings.key_refresh_seconds + 2
