"""The pure parts of the peer benchmark (bench/peer.py): the comparison row and the load bundles."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import peer, venvs


def test_the_row_holds_each_sides_figures_and_mockehr_over_peer_and_over_floor() -> None:
    row = peer.ratios(
        {"req_per_s": 800.0, "p50_ms": 7.8, "errors": 0},
        {"req_per_s": 320.0, "p50_ms": 20.0, "errors": 1},
        {"req_per_s": 6400.0, "p50_ms": 1.1, "errors": 0},
    )
    assert row["ratio_to_peer"] == 2.5
    assert row["ratio_to_floor"] == 0.125
    assert (row["mockehr_req_per_s"], row["peer_req_per_s"], row["floor_req_per_s"]) == (800.0, 320.0, 6400.0)
    assert (row["mockehr_p50_ms"], row["peer_p50_ms"], row["floor_p50_ms"]) == (7.8, 20.0, 1.1)
    assert row["peer_errors"] == 1


def test_a_side_that_served_nothing_gives_no_ratio_rather_than_a_division_by_zero() -> None:
    served: dict[str, Any] = {"req_per_s": 500.0, "p50_ms": 9.0, "errors": 0}
    assert peer.ratios(served, {"req_per_s": 0.0, "errors": 40}, served)["ratio_to_peer"] is None
    assert peer.ratios({}, served, served)["ratio_to_floor"] is None


def test_the_kept_round_is_the_median_ratio_to_the_peer_with_the_spread_of_all_rounds() -> None:
    rounds = [
        peer.ratios({"req_per_s": ours}, {"req_per_s": 100.0}, {"req_per_s": 5000.0}) for ours in (250.0, 70.0, 190.0)
    ]
    row = peer.median_row(rounds)
    assert (row["mockehr_req_per_s"], row["ratio_to_peer"]) == (190.0, 1.9)
    assert (row["ratio_to_peer_min"], row["ratio_to_peer_max"], row["rounds"]) == (0.7, 2.5, 3)


def test_the_peer_gets_every_resource_once_as_a_put_keeping_its_id() -> None:
    resources = [{"resourceType": "Observation", "id": f"o{i}"} for i in range(5)]
    bundles = list(peer.batches(resources, size=2))
    assert [len(b["entry"]) for b in bundles] == [2, 2, 1]
    assert all(b["type"] == "batch" for b in bundles)
    requests = [e["request"] for b in bundles for e in b["entry"]]
    assert requests == [{"method": "PUT", "url": f"Observation/o{i}"} for i in range(5)]


def test_a_search_page_answers_alike_when_it_holds_as_many_entries_and_a_read_when_it_is_the_same_resource() -> None:
    page = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Observation", "id": "a"}}]}
    other = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Observation", "id": "b"}}]}
    assert peer._same(page, other)
    assert not peer._same(page, {"resourceType": "Bundle", "entry": []})
    assert peer._same({"resourceType": "Patient", "id": "p"}, {"resourceType": "Patient", "id": "p"})
    assert not peer._same({"resourceType": "Patient", "id": "p"}, {"resourceType": "Patient", "id": "q"})


def test_the_peer_is_configured_anonymous_without_its_simulator_and_on_its_own_port(tmp_path: Path) -> None:
    config = peer.settings(tmp_path, 33006)
    assert config["server_auth"] == {"types": ["none"]}
    assert config["simulator"] == {"enabled": False}
    assert config["base_url"] == "https://127.0.0.1:33006/fhir"


PEER_SCRIPT = """
import json, sys
from fastapi.testclient import TestClient
from sekmet.main import app_factory

bundles = json.loads(sys.stdin.read())
with TestClient(app_factory(), base_url="https://127.0.0.1:33006") as client:
    loaded = [client.post("/fhir", json=b, headers={"Content-Type": "application/fhir+json"}) for b in bundles]
    read = client.get("/fhir/Patient/p1")
    search = client.get("/fhir/Observation", params={"patient": "p1", "_count": "10"})
print(json.dumps({"loaded": [r.json() for r in loaded], "read": read.json(), "search": search.json()}))
"""


def test_the_installed_peer_takes_the_batches_and_answers_the_benchmarked_read_and_search(tmp_path: Path) -> None:
    """Smoke test of the peer itself, in-process through its ASGI app (no server, no network).
    Skipped unless `python -m bench --only peer` has installed the peer's venv (it is never
    installed by the tests: `make test` skips this)."""
    if not venvs.installed(peer.PEER, peer.REQUIREMENTS):
        pytest.skip("the peer's venv is not installed (python -m bench --only peer installs it)")
    config = tmp_path / "settings.json"
    config.write_text(json.dumps(peer.settings(tmp_path / "data", 33006)))
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Peer"}]}
    observations = [
        {
            "resourceType": "Observation",
            "id": f"o{i}",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/p1"},
        }
        for i in range(12)
    ]
    bundles = list(peer.batches([patient, *observations], size=5))
    done = subprocess.run(
        [str(venvs.venv_home(peer.PEER, peer.REQUIREMENTS) / "bin" / "python"), "-c", PEER_SCRIPT],
        input=json.dumps(bundles),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=tmp_path,
        env={**os.environ, "SEKMET_CONFIG": str(config)},
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    statuses = [e["response"]["status"][:3] for b in answer["loaded"] for e in b["entry"]]
    assert statuses == ["201"] * 13
    assert peer._same(answer["read"], patient)
    assert len(answer["search"]["entry"]) == 10
    assert {e["resource"]["subject"]["reference"] for e in answer["search"]["entry"]} == {"Patient/p1"}
