"""docker-compose's `register` one-shot allow-lists the example CDS Service the way `mockehr up`
does: after the EHR and the service are healthy, with init's scopes, keeping later changes."""

from __future__ import annotations

from pathlib import Path

import yaml

from mockehr.registry import CDS_EXAMPLE_CLIENT_ID, CDS_EXAMPLE_SCOPE

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def test_compose_registers_the_example_service_like_up() -> None:
    register = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["register"]
    command = register["command"]
    assert command[:4] == ["mockehr", "services", "add", "https://cds-example.localhost:9003/cds-services"]
    assert command[command.index("--client-id") + 1] == CDS_EXAMPLE_CLIENT_ID
    assert command[command.index("--scope") + 1].split() == CDS_EXAMPLE_SCOPE.split()
    assert {"--approve-all-prefetch", "--keep-existing", "--compose-names"} <= set(command)
    assert register["volumes"] == ["data:/data:ro"]
    assert register["restart"] == "no"
    assert register["depends_on"] == {
        "ehr": {"condition": "service_healthy"},
        "cds-example": {"condition": "service_healthy"},
    }
