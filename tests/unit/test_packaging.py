"""pyproject.toml lists the wheel's packages by hand (the migrations live outside mockehr/): every
package folder of the checkout must be on that list, or the installed tool misses it."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOTS = ("common", "authserver", "fhirserver", "ehr", "mockehr", "examples")


def _pyproject() -> dict[str, object]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def _folders_with_files(top: Path, package: str) -> set[str]:
    """Dotted names of `top` and every folder below it holding at least one file."""
    found: set[str] = set()
    for folder in [top, *(p for p in top.rglob("*") if p.is_dir())]:
        if folder.name == "__pycache__" or any(part.startswith(".") for part in folder.relative_to(top).parts):
            continue
        if any(f.is_file() for f in folder.iterdir()):
            relative = folder.relative_to(top).parts
            found.add(".".join((package, *relative)))
    return found


def test_every_package_folder_and_the_migrations_are_in_the_wheel() -> None:
    setuptools = _pyproject()["tool"]["setuptools"]  # type: ignore[index]
    listed = set(setuptools["packages"])
    expected = set().union(*(_folders_with_files(REPO_ROOT / root, root) for root in ROOTS))
    expected |= _folders_with_files(REPO_ROOT / "alembic", "mockehr.migrations")
    assert listed == expected
    assert setuptools["package-dir"] == {"mockehr.migrations": "alembic"}


def test_no_top_level_alembic_package_can_shadow_the_library() -> None:
    # An __init__.py would make the checkout's alembic/ a regular package that wins over the
    # Alembic library whenever the checkout is on sys.path.
    assert not (REPO_ROOT / "alembic" / "__init__.py").exists()
    assert "alembic" not in _pyproject()["tool"]["setuptools"]["packages"]  # type: ignore[index]
