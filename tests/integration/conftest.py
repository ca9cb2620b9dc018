"""The integration tests' running harnesses, one fixture each, on every database `database_url` names.

A module that needs another configuration overrides the small fixture the harness reads
(`smart_options`, `fhir_patients`, `cds`), or overrides the harness fixture itself while
requesting it (pytest hands it this one) to add a step such as registering a service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.authharness import Harness, running_authserver
from tests.integration.ehr_engine_harness import Doubles, EngineStack, engine_stack, serve
from tests.integration.ehrharness import CdsDouble, EhrHarness, ehr_harness
from tests.integration.fhirharness import PATIENTS, FhirHarness, fhir_harness
from tests.integration.smartharness import Smart, running_smart


@pytest.fixture
async def auth(tmp_path: Path, database_url: str) -> AsyncIterator[Harness]:
    """The authorization server with its clients and users registered."""
    async with running_authserver(tmp_path, database_url) as harness:
        yield harness


@pytest.fixture
def smart_options() -> dict[str, Any]:
    """AuthSettings fields `smart` sets beyond the harness's own; none unless a module says so."""
    return {}


@pytest.fixture
async def smart(tmp_path: Path, database_url: str, smart_options: dict[str, Any]) -> AsyncIterator[Smart]:
    """The authorization server with SMART apps, a signed-out browser and a frozen clock."""
    async with running_smart(tmp_path, database_url, **smart_options) as harness:
        yield harness


@pytest.fixture
def fhir_patients() -> int:
    """How many patients `fhir` seeds: the harness's default unless a module needs fewer."""
    return PATIENTS


@pytest.fixture
async def fhir(tmp_path: Path, database_url: str, fhir_patients: int) -> AsyncIterator[FhirHarness]:
    """The FHIR server and its authorization server, seeded with `fhir_patients` patients."""
    async with fhir_harness(tmp_path, database_url, patients=fhir_patients) as harness:
        yield harness


@pytest.fixture
def cds() -> CdsDouble:
    """The CDS Service double `h` runs: no services unless a module says which."""
    return CdsDouble()


@pytest.fixture
async def h(tmp_path: Path, database_url: str, cds: CdsDouble) -> AsyncIterator[EhrHarness]:
    """The EHR with its FHIR and authorization servers, and `cds` as its CDS Service."""
    async with ehr_harness(tmp_path, database_url, cds) as harness:
        yield harness


@pytest.fixture(scope="module")
def doubles_server() -> Iterator[tuple[Doubles, str]]:
    """The engine tests' CDS Service doubles in uvicorn, started once per module."""
    found = Doubles()
    with serve(found.app()) as port:
        yield found, f"http://127.0.0.1:{port}"


@pytest.fixture
def doubles(doubles_server: tuple[Doubles, str]) -> tuple[Doubles, str]:
    """The doubles and their base URL, with nothing received and no scripted answers yet."""
    found, _ = doubles_server
    found.received.clear()
    found.answers.clear()
    return doubles_server


@pytest.fixture
async def stack(tmp_path: Path, database_url: str) -> AsyncIterator[EngineStack]:
    """The EHR's CDS engine on the real FHIR and authorization servers (a module may share one)."""
    async with engine_stack(tmp_path, database_url) as built:
        yield built
