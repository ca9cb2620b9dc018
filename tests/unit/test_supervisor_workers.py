"""MOCKEHR_<SVC>_WORKERS: how many uvicorn worker processes the supervisor starts per service."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError
from mockehr import supervisor
from mockehr.stack import Stack


def test_a_service_runs_one_process_unless_its_workers_variable_asks_for_more() -> None:
    assert supervisor.workers("fhirserver", {}) == 1
    assert supervisor.workers("fhirserver", {"MOCKEHR_FHIR_WORKERS": "3"}) == 3
    # Another service's variable does not apply.
    assert supervisor.workers("authserver", {"MOCKEHR_FHIR_WORKERS": "3"}) == 1


@pytest.mark.parametrize("value", ["0", "33", "-1", "two", "1.5"])
def test_a_workers_value_outside_1_to_32_is_a_one_line_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="MOCKEHR_AUTH_WORKERS must be a number from 1 to 32"):
        supervisor.workers("authserver", {"MOCKEHR_AUTH_WORKERS": value})


def test_the_uvicorn_command_has_workers_only_when_more_than_one(tmp_path: Path) -> None:
    stack = Stack(data_dir=tmp_path)
    assert "--workers" not in supervisor._command(stack, "fhirserver")
    command = supervisor._command(stack, "fhirserver", 2)
    assert command[command.index("--workers") + 1] == "2"
