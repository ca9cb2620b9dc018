"""Search-index extraction at write time.

Today: identifiers (token `identifier`, every resource type that has one) and every literal
reference with its element path. References are found by walking the JSON, which is exact for
literal references and far cheaper than evaluating FHIRPath per search parameter.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

_LITERAL_REF = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")


def identifier_tokens(resource: dict[str, Any]) -> Iterator[tuple[str | None, str]]:
    idents = resource.get("identifier")
    if isinstance(idents, dict):
        idents = [idents]
    for ident in idents or []:
        if isinstance(ident, dict) and isinstance(ident.get("value"), str):
            system = ident.get("system")
            yield (system if isinstance(system, str) else None, ident["value"])


def literal_references(node: Any, path: str = "") -> Iterator[tuple[str, str, str]]:
    """(element path, target type, target id) for every relative literal reference."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                match = _LITERAL_REF.match(value)
                if match:
                    yield path, match.group(1), match.group(2)
            elif key not in ("contained", "text"):
                yield from literal_references(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for item in node:
            yield from literal_references(item, path)


def split_reference(reference: str) -> tuple[str, str] | None:
    match = _LITERAL_REF.match(reference)
    return (match.group(1), match.group(2)) if match else None
