"""Formats and preferences (FHIR R4 §3.1.0.1.10 content types, §3.1.0.1.9 Prefer).

JSON only: application/fhir+json, application/json and the legacy application/json+fhir, by
Accept or `_format`. XML is refused with 406 rather than answered in JSON.
"""

from __future__ import annotations

from starlette.requests import Request

from fhirserver.errors import FhirError, Issue

FHIR_JSON = "application/fhir+json"
_JSON_FORMATS = {"json", "application/json", FHIR_JSON, "application/json+fhir", "text/json"}
_XML_FORMATS = {"xml", "application/xml", "application/fhir+xml", "application/xml+fhir", "text/xml"}


def check_accept(request: Request) -> None:
    fmt = request.query_params.get("_format")
    if fmt is not None:
        base = fmt.split(";")[0].strip().lower()
        if base in _JSON_FORMATS:
            return
        raise FhirError([Issue(f"_format {fmt!r} is not supported: JSON only", code="not-supported")], status=406)
    accept = request.headers.get("accept", "")
    if not accept:
        return
    offered = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if any(o in _JSON_FORMATS or o in ("*/*", "application/*") for o in offered):
        return
    if any(o in _XML_FORMATS for o in offered):
        raise FhirError(
            [Issue("XML is not supported: ask for application/fhir+json", code="not-supported")], status=406
        )


def check_content_type(request: Request) -> None:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in (FHIR_JSON, "application/json", "application/json+fhir"):
        raise FhirError([Issue("Content-Type must be application/fhir+json", code="not-supported")], status=415)


def prefer_return(request: Request) -> str:
    """`Prefer: return=minimal|representation|OperationOutcome` (default representation)."""
    for part in request.headers.get("prefer", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "return" and value.strip().strip('"') in (
            "minimal",
            "representation",
            "OperationOutcome",
        ):
            return value.strip().strip('"')
    return "representation"


def strict_handling(request: Request) -> bool:
    for part in request.headers.get("prefer", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "handling":
            return value.strip().strip('"').lower() == "strict"
    return False
