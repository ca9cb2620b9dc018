"""Hypothesis profiles and the in-process stacks the fuzz tests attack.

Profiles (HYPOTHESIS_PROFILE, default "ci"):
- "ci": derandomized (the same examples on every run, so CI is reproducible), no example
  database, sized so that tests/fuzz runs in about three minutes under `pytest -n 2`;
- "long": `make fuzz`; random, many more examples, failures saved in .hypothesis/ and replayed first.

Each stack is started once per module on its own SQLite database (seeding is the slow part);
every property holds whatever earlier examples wrote, so examples need no isolation.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from mockehr import migrate

_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=_SUPPRESSED
)
settings.register_profile("long", max_examples=2000, deadline=None, suppress_health_check=_SUPPRESSED)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def secrets_in(data_dir: Path) -> set[str]:
    """The dev secrets a service keeps in its data directory (admin token, KEK)."""
    return {(data_dir / name).read_text().strip() for name in ("admin-token", "kek") if (data_dir / name).is_file()}


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    directory = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{directory / 'test.db'}"
    migrate.upgrade(url)
    return directory, url


@pytest.fixture(scope="module")
def postgres_db(tmp_path_factory: pytest.TempPathFactory, pg_template: str) -> Iterator[tuple[Path, str]]:
    from tests.conftest import _pg_admin, _pg_url

    name = f"mockehr_fuzz_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield tmp_path_factory.mktemp("fuzz-pg"), _pg_url(name)
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def both_dbs(request: pytest.FixtureRequest) -> tuple[Path, str]:
    """The FHIR server is fuzzed on both backends: its search SQL differs between them."""
    found: tuple[Path, str] = request.getfixturevalue("sqlite_db" if request.param == "sqlite" else "postgres_db")
    return found
