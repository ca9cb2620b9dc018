"""The peer (`python -m bench --only peer`): a Python FHIR server from PyPI, measured in the same run,
on the same data and with the same uvicorn flags and TLS as mockehr's FHIR server and the floor.

The peer is sekmet-fhir (FastAPI + fhir.resources over SQLite, no authorization), pinned with its
dependencies in bench/peer-requirements.txt and installed once into a venv of its own under
`.venv-interop/` (its FastAPI, Starlette and pydantic differ from this project's pins). It runs as
`uvicorn --factory sekmet.main:app_factory` configured by a settings file (SEKMET_CONFIG), and gets
mockehr's own resources, exported through mockehr's FHIR API, as batch Bundles of PUTs.

Per process: mockehr's stack, the peer and the floor each run one worker, so the ratios compare what
one process of each does with a core; mockehr answers a token-exchange token (every request is
authorized and audited), the peer answers anonymous requests.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench import stack_bench, wrk
from bench.venvs import pinned_venv
from common.tls import client_ssl_context

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = Path(__file__).resolve().parent / "peer-requirements.txt"
FACTORY = "sekmet.main:app_factory"
PEER = "sekmet"
# Referenced types first: a batch entry whose reference does not resolve yet could be refused.
TYPES = ("Organization", "Practitioner", "Location", "Patient", "Encounter", "Observation")
BATCH = 200
CONCURRENCIES = (8, 32)
# Each figure is measured in rounds of mockehr, peer, floor back to back, and the median round
# kept: the load of a shared machine moves within seconds, so one round's ratio can be off by 3×.
ROUNDS = 3


def peer_python(requirements: Path = REQUIREMENTS) -> Path:
    """The peer venv's python (bench/venvs.py: created once per content of the pinned file)."""
    return pinned_venv(PEER, requirements)


def settings(data_dir: Path, port: int) -> dict[str, Any]:
    """The peer's settings: anonymous FHIR API, no simulator reacting to writes, no inbound
    validation of the loaded data (mockehr already validated it); its traffic log stays on, as
    mockehr's audit trail does."""
    return {
        "base_url": f"https://127.0.0.1:{port}/fhir",
        "host": "127.0.0.1",
        "port": port,
        "data_dir": str(data_dir),
        "server_auth": {"types": ["none"]},
        "simulator": {"enabled": False},
        "validation": {"inbound": "off"},
    }


def batches(resources: list[dict[str, Any]], size: int = BATCH) -> Iterator[dict[str, Any]]:
    """Batch Bundles of PUTs keeping each resource's id (FHIR R4 §3.1.0.11.2 update as create)."""
    for start in range(0, len(resources), size):
        chunk = resources[start : start + size]
        yield {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in chunk
            ],
        }


def ratios(mockehr: dict[str, Any], peer: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """One row of the comparison: each side's rate and latency, and mockehr ÷ peer, mockehr ÷ floor
    (None when a side served nothing: no ratio rather than a division by zero)."""

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if a > 0 and b > 0 else None

    row: dict[str, Any] = {}
    for side, figures in (("mockehr", mockehr), ("peer", peer), ("floor", floor)):
        row[f"{side}_req_per_s"] = figures.get("req_per_s", 0.0)
        row[f"{side}_p50_ms"] = figures.get("p50_ms")
        row[f"{side}_errors"] = figures.get("errors", 0)
    row["ratio_to_peer"] = ratio(row["mockehr_req_per_s"], row["peer_req_per_s"])
    row["ratio_to_floor"] = ratio(row["mockehr_req_per_s"], row["floor_req_per_s"])
    return row


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose mockehr ÷ peer ratio is the median (a real round, so its figures agree with
    each other), with the spread of that ratio over all rounds."""
    ranked = sorted(rows, key=lambda row: row["ratio_to_peer"] if row["ratio_to_peer"] is not None else -1.0)
    chosen = dict(ranked[len(ranked) // 2])
    ratios_seen = [row["ratio_to_peer"] for row in rows if row["ratio_to_peer"] is not None]
    chosen["rounds"] = len(rows)
    chosen["ratio_to_peer_min"] = min(ratios_seen, default=None)
    chosen["ratio_to_peer_max"] = max(ratios_seen, default=None)
    return chosen


def _export(client: httpx.Client, fhir: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Every resource of TYPES in mockehr, through its FHIR API (following `next` links)."""
    out: list[dict[str, Any]] = []
    for rtype in TYPES:
        url: str | None = f"{fhir}/{rtype}?_count=100"
        for _ in range(10_000):  # bounded: 1,000,000 resources at most
            if url is None:
                break
            response = client.get(url, headers=headers)
            if response.status_code in {400, 404}:
                break  # a type this server does not serve
            response.raise_for_status()
            bundle = response.json()
            out += [
                e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"
            ]
            url = next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)
    return out


def _load(client: httpx.Client, base: str, resources: list[dict[str, Any]]) -> int:
    """PUT every resource into the peer; the number it accepted."""
    accepted = 0
    for bundle in batches(resources):
        response = client.post(base, json=bundle, headers={"Content-Type": "application/fhir+json"}, timeout=300)
        response.raise_for_status()
        accepted += sum(1 for e in response.json().get("entry", []) if e["response"]["status"][:1] == "2")
    return accepted


@contextmanager
def peer_server(stack: Any, python: Path) -> Iterator[str]:
    """The peer on the stack's spare port, one worker, the services' uvicorn flags and TLS; yields
    its FHIR base URL. Its SQLite file and log live in a temporary folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="mockehr-peer-"))
    port = stack.base_port + 6
    config = folder / "settings.json"  # JSON is YAML: sekmet reads it with yaml.safe_load
    config.write_text(json.dumps(settings(folder / "data", port)))
    env = {**os.environ, "SEKMET_CONFIG": str(config)}
    base = f"https://{stack.public_host}:{port}/fhir"
    try:
        with stack_bench.uvicorn_server(
            stack, FACTORY, port, folder / "peer.log", f"{base}/metadata", env=env, python=str(python)
        ):
            yield base
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def compare(
    running: stack_bench.Running, who: stack_bench.Actors, seconds: float, rounds: int = ROUNDS
) -> dict[str, Any]:
    """Authorized read and compartment search `_count=10`: mockehr, the peer and the floor, one
    worker each, on the same data, at c=8 and c=32, in `rounds` interleaved rounds."""
    stack = running.stack
    python = peer_python()
    token_url = f"{stack.base_url('authserver')}/token"
    fhir = stack.url("fhirserver")
    system = stack_bench._token(running, who.backend_form(token_url, "system/*.rs"))
    token = stack_bench._token(running, who.exchange_form(token_url, fhir))
    headers = {"Authorization": f"Bearer {token}"}
    p = who.patient
    paths = {"read": f"Patient/{p}", "search": f"Observation?patient={p}&_count=10"}
    verify = client_ssl_context(running.ca)
    out: dict[str, Any] = {}
    with httpx.Client(verify=verify, trust_env=False, timeout=60) as client, peer_server(stack, python) as peer:
        resources = _export(client, fhir, {"Authorization": f"Bearer {system}"})
        out["data"] = {"resources": len(resources), "loaded_into_peer": _load(client, peer, resources)}
        bodies: dict[str, bytes] = {}
        for name, path in paths.items():
            ours = client.get(f"{fhir}/{path}", headers=headers)
            theirs = client.get(f"{peer}/{path}")
            ours.raise_for_status()
            theirs.raise_for_status()
            bodies[name] = ours.content
            out["data"][f"{name}_same_answer"] = _same(ours.json(), theirs.json())
        with stack_bench.floor_server(stack, bodies, 1) as floor:
            for name, path in paths.items():
                for c in CONCURRENCIES:
                    rows = []
                    for _ in range(rounds):
                        mine = wrk.run(f"{fhir}/{path}", connections=c, seconds=seconds, headers=headers, ca=running.ca)
                        others = wrk.run(f"{peer}/{path}", connections=c, seconds=seconds, ca=running.ca)
                        bare = wrk.run(f"{floor}/{name}", connections=c, seconds=seconds, ca=running.ca)
                        rows.append(ratios(mine, others, bare))
                    out[f"{name} c={c}"] = median_row(rows)
    return out


def _same(ours: dict[str, Any], theirs: dict[str, Any]) -> bool:
    """Both served the same resource, or search pages of as many entries (the servers' sort orders
    differ, so a page may hold other resources of the same compartment)."""
    if ours.get("resourceType") != "Bundle":
        return (ours.get("resourceType"), ours.get("id")) == (theirs.get("resourceType"), theirs.get("id"))
    return len(ours.get("entry", [])) == len(theirs.get("entry", []))
