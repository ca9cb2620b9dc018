"""Derive the package's search tables from the official FHIR R4 definitions.

    python -m fhirserver.data.derive ../shared/fixtures/fhir-r4-definitions

writes `search-parameters.json` (per supported resource type: code → [type, expression,
targets]) and `compartment-patient.json` (per type: the parameters that put a resource in a
Patient's compartment) next to this file. Only the resource types the server supports are kept,
and each expression keeps only the union branches rooted at that type, so the tables stay small.

Left out on purpose: composite and special parameters (not indexed), parameters without a
FHIRPath expression (_text, _content, _query, _filter), parameters defined by extensions (their
expressions call extension(), and they are not part of the core resource definitions), and the
specification's example parameters.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from fhirserver import searchparams
from fhirserver.indexing import split_union

HERE = Path(__file__).resolve().parent
SUPPORTED_TYPES = sorted(searchparams.SUPPORTED_TYPES)
INDEXED_TYPES = {"token", "string", "reference", "date", "quantity", "uri", "number"}
ANY_TYPE_THRESHOLD = 100  # a target list this long means "any resource type"


def _root(branch: str) -> str:
    name = branch.lstrip("(").strip()
    end = 0
    while end < len(name) and (name[end].isalnum() or name[end] == "_"):
        end += 1
    return name[:end]


def _keep(resource: dict[str, Any]) -> bool:
    return (
        resource.get("type") in INDEXED_TYPES
        and bool(resource.get("expression"))
        and "extension(" not in resource["expression"]
        and not str(resource.get("id", "")).startswith("example")
    )


def _entries_for(resource: dict[str, Any]) -> dict[str, list[Any]]:
    """type -> [param type, expression restricted to that type, targets] for one definition."""
    bases = resource.get("base") or []
    generic = any(b in ("Resource", "DomainResource") for b in bases)
    types = SUPPORTED_TYPES if generic else [b for b in bases if b in SUPPORTED_TYPES]
    targets = sorted(resource.get("target") or [])
    if len(targets) >= ANY_TYPE_THRESHOLD:
        targets = ["*"]
    out: dict[str, list[Any]] = {}
    for rtype in types:
        branches = [
            b.replace("Resource.", f"{rtype}.", 1) if _root(b) in ("Resource", "DomainResource") else b
            for b in split_union(resource["expression"])
            if _root(b) in (rtype, "Resource", "DomainResource")
        ]
        if branches:
            out[rtype] = [resource["type"], " | ".join(branches), targets]
    return out


def search_table(definitions: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    table: dict[str, dict[str, list[Any]]] = {t: {} for t in SUPPORTED_TYPES}
    for entry in definitions["entry"]:
        resource = entry["resource"]
        if not _keep(resource):
            continue
        for rtype, row in _entries_for(resource).items():
            if resource["code"] in table[rtype]:
                raise SystemExit(f"duplicate search parameter {rtype}.{resource['code']}")
            table[rtype][resource["code"]] = row
    return {t: dict(sorted(params.items())) for t, params in table.items()}


def compartment_table(definition: dict[str, Any]) -> dict[str, list[str]]:
    return {
        r["code"]: list(r["param"]) for r in definition["resource"] if r["code"] in SUPPORTED_TYPES and r.get("param")
    }


def _dump(table: dict[str, Any]) -> str:
    """One line per parameter (or per type): small diffs when the tables are regenerated."""
    blocks = []
    for rtype, value in table.items():
        if isinstance(value, dict):
            inner = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items())
            blocks.append(f"  {json.dumps(rtype)}: {{\n{inner}\n  }}")
        else:
            blocks.append(f"  {json.dumps(rtype)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(blocks) + "\n}\n"


def main(source: Path) -> None:
    definitions = json.loads((source / "search-parameters.json").read_text())
    compartment = json.loads((source / "CompartmentDefinition-patient.json").read_text())
    (HERE / "search-parameters.json").write_text(_dump(search_table(definitions)))
    (HERE / "compartment-patient.json").write_text(_dump(compartment_table(compartment)))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
