"""Every relative link in README.md and docs/**/*.md reaches a file that exists (and, for a
Markdown page, the heading or anchor it names), and no page sends a reader to DESIGN.md, a file
that is not in the repository."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").rglob("*.md")])

LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
ANCHOR = re.compile(r'<a id="([^"]+)">')


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    found: set[str] = set(ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            slug = _slug(line.lstrip("#"))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def _links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


def _broken(page: Path, root: Path = REPO_ROOT) -> list[str]:
    broken: list[str] = []
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        relative = dest.relative_to(root).as_posix() if dest.is_relative_to(root) else str(dest)
        if not dest.exists():
            broken.append(f"{target} (no file {relative})")
            continue
        if fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            broken.append(f"{target} (no heading #{fragment} in {relative})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_every_relative_link_reaches_an_existing_file_and_heading(page: Path) -> None:
    assert _broken(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_no_page_mentions_a_design_document_outside_the_repository(page: Path) -> None:
    assert "DESIGN.md" not in page.read_text()


def test_the_readme_is_read_in_five_minutes() -> None:
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= 300


def test_a_link_to_a_missing_file_or_heading_is_caught(tmp_path: Path) -> None:
    # The checker itself must be able to fail: a missing file, a missing heading.
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text("# Title\n\n[ok](#title) [gone](nowhere.md) [bad](#no-such-heading)\n")
    assert _broken(page, tmp_path.resolve()) == [
        "nowhere.md (no file docs/nowhere.md)",
        "#no-such-heading (no heading #no-such-heading in docs/page.md)",
    ]


# Documents that live outside the repository (the team's brief and notes): code and docs cite
# what a reader of the repository can open, never these.
OUTSIDE = ("DESIGN.md", "HELPERS.md", "SPEC-NOTES.md")
SOURCES = sorted(
    path
    for folder in ("common", "authserver", "fhirserver", "ehr", "mockehr", "examples", "bench", "tools", "alembic")
    for path in (REPO_ROOT / folder).rglob("*")
    if path.suffix in {".py", ".html", ".js", ".css"}
)


def test_no_source_file_cites_a_document_outside_the_repository() -> None:
    citing = [
        f"{path.relative_to(REPO_ROOT)}: {name}" for path in SOURCES for name in OUTSIDE if name in path.read_text()
    ]
    assert SOURCES, "no source files found: the walk itself is broken"
    assert citing == []


# `path/to/module.py:name` (and a following `:other`, the same module) names code a reader can
# open: after a refactoring moves or renames it, the page must follow (issue 17: facts drift).
CODE_REF = re.compile(r"`(?:((?:[a-z_]+/)*[a-z_0-9]+\.py))?:([A-Za-z_][A-Za-z_0-9.]*)")


def _defines(source: str, dotted: str) -> bool:
    return all(
        re.search(rf"(?:def|class)\s+{re.escape(part)}\b|^\s*{re.escape(part)}\s*[:=]", source, re.M)
        for part in dotted.split(".")
    )


def _stale_code_references(page: Path, root: Path = REPO_ROOT) -> list[str]:
    stale: list[str] = []
    for paragraph in FENCE.sub("", page.read_text()).split("\n\n"):
        module: str | None = None
        for match in CODE_REF.finditer(paragraph):
            named, name = match.groups()
            if named is not None:
                # A bare file name (`login.py:x`) is the reader's shorthand: not resolved here.
                module = named if "/" in named else None
            if module is None:
                continue
            path = root / module
            if not path.is_file():
                stale.append(f"{module}:{name} (no file {module})")
            elif not _defines(path.read_text(), name):
                stale.append(f"{module}:{name} (not defined there)")
    return stale


@pytest.mark.parametrize("page", [*PAGES, REPO_ROOT / "deploy" / "README.md"], ids=lambda p: p.name)
def test_every_code_reference_names_something_defined_in_that_module(page: Path) -> None:
    assert _stale_code_references(page) == []


def test_a_stale_code_reference_is_caught(tmp_path: Path) -> None:
    module = tmp_path / "pkg" / "mod.py"
    module.parent.mkdir()
    module.write_text("class Kept:\n    def method(self) -> None: ...\n\n\ndef kept() -> None: ...\n")
    page = tmp_path / "page.md"
    page.write_text("See `pkg/mod.py:kept`, `:Kept.method`, `:gone` and `pkg/old.py:x`; `other.py:y`, `:z`.\n")
    assert _stale_code_references(page, tmp_path) == [
        "pkg/mod.py:gone (not defined there)",
        "pkg/old.py:x (no file pkg/old.py)",
    ]
