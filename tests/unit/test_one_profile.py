"""One place for each rule of the access-token profile (issue 17, item 1).

These walk the repository's Python files outside tests/ and fail when a rule is restated:
the access-token typ outside common/access_token.py, the list of signing algorithms outside
common/keys.py, or a direct call of the verification primitive beside the one sequence.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

from common import access_token
from common.keys import ALGORITHMS

ROOT = Path(__file__).resolve().parents[2]
SKIPPED_DIRS = {"tests", "node_modules", "build", "dist"}
# The typ's one definition.
TYP_HOME = "common/access_token.py"
# The algorithm list's one definition.
ALGORITHMS_HOME = "common/keys.py"
# The primitive itself, the one sequence around it, and the benchmark that times the primitive.
VERIFY_JWT_CALLERS = {"common/jose.py", "common/jwt_verify.py", "bench/__main__.py"}


def source_files() -> Iterator[tuple[str, str]]:
    """(path relative to the repository, text) of every Python file outside tests/."""
    for directory, subdirs, files in os.walk(ROOT):
        # Pruned in place, so the virtualenv and caches are never walked.
        subdirs[:] = sorted(d for d in subdirs if not _skipped(d))
        for name in sorted(files):
            if name.endswith(".py"):
                path = Path(directory, name)
                yield path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")


def _skipped(directory: str) -> bool:
    return directory in SKIPPED_DIRS or directory.startswith(".") or directory.endswith(".egg-info")


def algorithm_lists(text: str) -> Iterator[int]:
    """Line numbers of tuples, lists, sets and Literal[...] naming every signing algorithm."""
    wanted = set(ALGORITHMS)
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            names = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            if wanted <= names:
                yield node.lineno


def verify_jwt_calls(text: str) -> Iterator[int]:
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name == "verify_jwt":
                yield node.lineno


def test_the_walk_sees_the_services_and_skips_the_tests() -> None:
    paths = {path for path, _ in source_files()}
    assert {TYP_HOME, ALGORITHMS_HOME, "fhirserver/guard.py", "authserver/tokens.py"} <= paths
    assert "examples/cds_service/auth.py" in paths
    assert not any(path.startswith(("tests/", ".venv/")) for path in paths)


def test_the_access_token_typ_is_written_only_in_the_profile() -> None:
    found = [path for path, text in source_files() if access_token.TYP in text.lower() and path != TYP_HOME]
    assert found == []
    assert access_token.TYP in (ROOT / TYP_HOME).read_text(encoding="utf-8")


def test_the_signing_algorithms_are_listed_only_in_common_keys() -> None:
    found = [
        f"{path}:{line}" for path, text in source_files() if path != ALGORITHMS_HOME for line in algorithm_lists(text)
    ]
    assert found == []
    assert list(algorithm_lists((ROOT / ALGORITHMS_HOME).read_text(encoding="utf-8")))


def test_the_verification_primitive_is_called_only_by_the_one_sequence() -> None:
    found = [
        f"{path}:{line}"
        for path, text in source_files()
        if path not in VERIFY_JWT_CALLERS
        for line in verify_jwt_calls(text)
    ]
    assert found == []


def test_the_detectors_find_what_they_look_for() -> None:
    # Guards that cannot fail are defects: each detector is shown a copy of what it refuses.
    assert list(algorithm_lists('A = ("ES256", "RS384", "ES384")\nB: Literal["ES384", "RS384", "ES256"]')) == [1, 2]
    assert list(verify_jwt_calls("jose.verify_jwt(t, k)\nverify_jwt(t, k)\nverify(t)")) == [1, 2]
