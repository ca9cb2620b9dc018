"""Prefetch (CDS Hooks 2.0 §Prefetch, §Prefetch tokens; 3.0 ballot: `today()`).

Three steps, each its own function:

- `check_template` — is a template one of the allowed query forms (2.0 §"Prefetch query
  restrictions")? An instance read `Type/{{token}}` (or a literal id), or a type search
  `Type?param=value&...` whose parameters are reference, token (optionally `:in`) or date
  (prefix eq/lt/gt/ge/le) searches plus `_count` and `_sort`, and — as Da Vinci CRD writes its
  prefetch (CRD STU 2.0.1 §"Additional prefetch capabilities", which presumes `_include`) —
  `_include` / `_revinclude` (optionally `:iterate`) of a named reference parameter
  (`Type:param[:Target]`). Anything else (absolute URLs, operations, wildcard includes,
  chaining, `_has`, other modifiers, compartment paths, unknown tokens) is refused with a
  reason; the administrator approves only templates that pass (R13). Included resources are
  still read with the per-call token, so the FHIR server's scope and compartment rules bound
  them exactly as they bound the matches.
- `render` — substitute the tokens for one invocation: `{{context.<field>}}`,
  `{{context.<field>.<Type>.id}}` (CRD: the ids of the resources of that type in a context
  field holding resources or references — `draftOrders`, `selections`, `appointments`,
  `dispatchedOrders` — comma-separated), `{{userPractitionerId}}`, `{{userPractitionerRoleId}}`,
  `{{userPatientId}}`, `{{userRelatedPersonId}}` (from the type in `context.userId`) and
  `{{today()}}` ± N days.
  Every value is percent-encoded (RFC 3986, nothing left "safe"), so a context value such as
  `1&_id=2` or `../x` stays one value and cannot add a parameter or change the path. A token
  that cannot be resolved makes the whole template unresolvable (its key is then omitted).
- `fetch` — run the rendered queries in parallel against the FHIR server with the per-call
  token (so prefetch never exceeds what the service could read itself), and map the outcomes
  as §"Prefetch" prescribes: read finds nothing → `null`; search finds nothing → the empty
  searchset Bundle; unresolvable or failed without detail → key omitted; failed with an
  OperationOutcome → that OperationOutcome.

Prefetch is computed per invocation and never cached across hook invocations (Argonaut R3).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

TOKEN = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_PARAM = re.compile(r"[a-z][a-z0-9-]{0,63}")
_CONTEXT_TOKEN = re.compile(r"context\.([A-Za-z][A-Za-z0-9]{0,63})")
# CRD STU 2.0.1 §"Additional prefetch capabilities": `context.<context property>.<FHIR resource
# name>.id` evaluates to "a comma-separated list of the identifiers of all resources of the
# specified type within that context key".
_CONTEXT_IDS = re.compile(r"context\.([A-Za-z][A-Za-z0-9]{0,63})\.([A-Z][A-Za-z]{1,63})\.id")
# `_include=Source:param[:Target]` (R4 search.html#include); the wildcard `*` is refused: an
# approved template names what it pulls in (minimum necessary, R13).
_INCLUDE_VALUE = re.compile(r"[A-Z][A-Za-z]{1,63}:[a-z][a-z0-9-]{0,63}(:[A-Z][A-Za-z]{1,63})?")
_INCLUDES = ("_include", "_revinclude")
_TODAY = re.compile(r"today\(\)(?:\s*([+-])\s*(\d{1,5})\s*days?)?")
_DATE = re.compile(r"\d{4}(-\d{2}(-\d{2}(T[0-9:.]+(Z|[+-]\d{2}:\d{2})?)?)?)?")
_DATE_PREFIXES = ("eq", "lt", "gt", "ge", "le")
# A literal token value: [system|]code, or a reference Type/id; no spaces, no wildcards.
_LITERAL = re.compile(r"[A-Za-z0-9\-._:/|%]{1,256}")
_SORT = re.compile(r"-?[a-z_][a-z0-9_-]{0,63}(,-?[a-z_][a-z0-9_-]{0,63})*")
USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}
MAX_COUNT = 1000


def _token_refusal(expression: str) -> str | None:
    if expression in USER_TOKENS or _TODAY.fullmatch(expression):
        return None
    if _CONTEXT_TOKEN.fullmatch(expression) or _CONTEXT_IDS.fullmatch(expression):
        return None
    return f"unsupported prefetch token {{{{{expression}}}}}"


def _tokens_only(value: str) -> str:
    """The value with every token replaced by a neutral placeholder (for shape checks)."""
    return TOKEN.sub("x", value)


def _check_value(name: str, modifier: str | None, value: str) -> str | None:
    for expression in TOKEN.findall(value):
        if (refusal := _token_refusal(expression)) is not None:
            return refusal
    if name in _INCLUDES:
        if modifier not in (None, "iterate"):
            return f"{name}:{modifier} is not an allowed prefetch query form (only :iterate)"
        if not _INCLUDE_VALUE.fullmatch(value):
            return f"{name} names one reference parameter: Type:parameter[:TargetType] (no wildcard or token)"
        return None
    if name == "_count":
        if not value.isdigit() or not 0 < int(value) <= MAX_COUNT:
            return f"_count must be an integer 1..{MAX_COUNT}"
        return None
    if name == "_sort":
        return None if _SORT.fullmatch(value) else "_sort must name search parameters"
    if modifier not in (None, "in"):
        return f"modifier :{modifier} is not an allowed prefetch query form (only :in)"
    if modifier == "in":
        return None if re.fullmatch(r"https://[^\s{}]+|\{\{[^{}]+\}\}", value) else ":in takes a value set URL"
    # A date search: prefix then a date or today().
    if value[:2] in _DATE_PREFIXES and (_DATE.fullmatch(value[2:]) or re.fullmatch(r"\{\{[^{}]+\}\}", value[2:])):
        return None
    shape = _tokens_only(value)
    if all(_LITERAL.fullmatch(part) for part in shape.split(",")):
        return None
    return f"value of {name} is not a reference, token or date"


def _shape_refusal(template: str) -> str | None:
    """What is wrong with the template as a whole: length, whitespace, absolute, its tokens."""
    if not isinstance(template, str) or not template or len(template) > 2048:
        return "a prefetch template is a non-empty relative FHIR query"
    if any(c.isspace() for c in _tokens_only(template)) or "#" in template:
        return "a prefetch template may not contain whitespace or a fragment"
    if template.startswith("/") or "://" in template.partition("?")[0] or template.startswith(".."):
        return "a prefetch template is relative to the FHIR base (no absolute URL or leading /)"
    for expression in TOKEN.findall(template):
        if (refusal := _token_refusal(expression)) is not None:
            return refusal
    if TOKEN.sub("", template).count("{") or TOKEN.sub("", template).count("}"):
        return "unbalanced token braces"
    return None


def _read_refusal(segments: list[str]) -> str | None:
    """An instance read: Type/{{token}} or Type/<id>."""
    if len(segments) != 2:
        return "only an instance read Type/id or a type search Type?... is allowed"
    ident = segments[1]
    if not (re.fullmatch(r"\{\{[^{}]+\}\}", ident) or (_FHIR_ID.fullmatch(ident) and ident not in (".", ".."))):
        return "an instance read is Type/{{token}} or Type/<id>"
    return None


def _search_refusal(segments: list[str], query: str) -> str | None:
    """A type search: Type?params, each an allowed parameter with an allowed value."""
    if len(segments) != 1:
        return "a type search is Type?params (no compartment or operation paths)"
    if not query:
        return "a type search needs at least one parameter"
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        if not eq or not value:
            return f"parameter {key!r} has no value"
        name, colon, modifier = key.partition(":")
        # _id is a token search (R4 Resource search parameters); other _-parameters are not.
        if name not in ("_count", "_sort", "_id", *_INCLUDES) and not _PARAM.fullmatch(name):
            return f"parameter {name!r} is not an allowed prefetch query form"
        refusal = _check_value(name, modifier if colon else None, value)
        if refusal is not None:
            return refusal
    return None


def check_template(template: str) -> str | None:
    """None when `template` is an allowed prefetch query form, else the reason it is refused.

    Not hook-aware: `{{context.<field>}}` passes for any field name, whether or not the hooks the
    template serves have that context field (such a token then simply does not resolve)."""
    if (refusal := _shape_refusal(template)) is not None:
        return refusal
    path, sep, query = template.partition("?")
    segments = path.split("/")
    if not _RESOURCE_TYPE.fullmatch(segments[0]):
        return f"{segments[0]!r} is not a resource type"
    return _search_refusal(segments, query) if sep else _read_refusal(segments)


@dataclass(frozen=True)
class TokenValues:
    """What the tokens of one invocation resolve to."""

    context: Mapping[str, Any]
    user_ref: str | None
    today: dt.date


def _ids_of_type(value: Any, kind: str) -> list[str]:
    """The ids of the resources of type `kind` in a context field: a Bundle (`draftOrders`,
    `appointments`), a list of resources (`fulfillmentTasks`) or of references `Type/id`
    (`selections`, `dispatchedOrders`). In context order, each once."""
    items: list[Any]
    if isinstance(value, dict) and value.get("resourceType") == "Bundle" and isinstance(value.get("entry"), list):
        items = [e.get("resource") for e in value["entry"] if isinstance(e, dict)]
    elif isinstance(value, list):
        items = value
    else:
        return []
    ids: list[str] = []
    for item in items:
        if isinstance(item, dict) and item.get("resourceType") == kind:
            ident = item.get("id")
        elif isinstance(item, str) and item.partition("/")[0] == kind:
            ident = item.partition("/")[2]
        else:
            continue
        if isinstance(ident, str) and _FHIR_ID.fullmatch(ident) and ident not in ids:
            ids.append(ident)
    return ids


def _resolve(expression: str, values: TokenValues) -> str | list[str] | None:
    if m := _CONTEXT_IDS.fullmatch(expression):
        # None of that type in context: nothing to substitute, so the template is not run and its
        # key is omitted (2.0 §Prefetch: a key the CDS Client cannot fulfil is left out).
        return _ids_of_type(values.context.get(m.group(1)), m.group(2)) or None
    if expression in USER_TOKENS:
        kind, _, ident = (values.user_ref or "").partition("/")
        return ident if kind == USER_TOKENS[expression] and ident else None
    if m := _CONTEXT_TOKEN.fullmatch(expression):
        value = values.context.get(m.group(1))
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            return [str(v) for v in value]
        return None  # absent, empty, or an object (e.g. a Bundle): not a substitutable value
    if m := _TODAY.fullmatch(expression):
        days = int(m.group(2) or 0) * (-1 if m.group(1) == "-" else 1)
        return (values.today + dt.timedelta(days=days)).isoformat()
    return None


def _encode(value: str) -> str:
    return quote(value, safe="")


def render(template: str, values: TokenValues) -> str | None:
    """The query for this invocation, or None when a token cannot be resolved (key omitted).

    In the path (an instance read) a value must be a FHIR id other than `.`/`..`; in the query
    a list (e.g. `selections`) becomes a comma-separated OR list of encoded values.
    """
    if check_template(template) is not None:
        return None
    path, sep, query = template.partition("?")
    unresolved = False

    def substitute(part: str, *, in_path: bool) -> str:
        nonlocal unresolved

        def one(match: re.Match[str]) -> str:
            nonlocal unresolved
            value = _resolve(match.group(1).strip(), values)
            if value is None:
                unresolved = True
                return ""
            if in_path:
                if isinstance(value, list) and len(value) == 1:
                    value = value[0]  # one draft order of the type: an instance read is meaningful
                if not isinstance(value, str) or not _FHIR_ID.fullmatch(value) or value in (".", ".."):
                    unresolved = True
                    return ""
                return _encode(value)
            items = value if isinstance(value, list) else [value]
            return ",".join(_encode(v) for v in items)

        return TOKEN.sub(one, part)

    rendered_path = substitute(path, in_path=True)
    rendered_query = substitute(query, in_path=False) if sep else ""
    if unresolved:
        return None
    return f"{rendered_path}?{rendered_query}" if sep else rendered_path


@dataclass
class PrefetchResult:
    data: dict[str, Any] = field(default_factory=dict)
    # Why a key is missing or not a plain result (for the exchange record), by key.
    notes: dict[str, str] = field(default_factory=dict)


def _operation_outcome(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return body
    return None


async def _fetch_one(http: httpx.AsyncClient, url: str, headers: Mapping[str, str], is_read: bool) -> tuple[str, Any]:
    """("value", x) to send x; ("omit", reason) to omit the key."""
    try:
        response = await http.get(url, headers=headers)
    except httpx.HTTPError as exc:
        return "omit", f"FHIR server unreachable ({type(exc).__name__})"
    if response.status_code == 200:
        try:
            body = response.json()
        except ValueError:
            return "omit", "FHIR server answered with invalid JSON"
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            return "omit", "FHIR server answered with something that is not a resource"
        return "value", body
    if is_read and response.status_code in (404, 410):
        return "value", None  # §Prefetch: a read that finds nothing is null
    outcome = _operation_outcome(response)
    if outcome is not None:
        return "value", outcome
    return "omit", f"FHIR server answered {response.status_code} without detail"


async def fetch(
    http: httpx.AsyncClient,
    fhir_base: str,
    access_token: str,
    templates: Mapping[str, str],
    values: TokenValues,
) -> PrefetchResult:
    """Run the approved templates for one invocation, in parallel, with the per-call token.

    Bounded by the caller's deadline (the engine runs the whole exchange under one).
    """
    result = PrefetchResult()
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/fhir+json"}
    base = fhir_base.rstrip("/")
    jobs: dict[str, asyncio.Task[tuple[str, Any]]] = {}
    async with asyncio.TaskGroup() as group:
        for key, template in templates.items():
            rendered = render(template, values)
            if rendered is None:
                result.notes[key] = "template not resolvable for this invocation"
                continue
            is_read = "?" not in rendered
            jobs[key] = group.create_task(_fetch_one(http, f"{base}/{rendered}", headers, is_read))
    for key, job in jobs.items():
        kind, value = job.result()
        if kind == "value":
            result.data[key] = value
            if isinstance(value, dict) and value.get("resourceType") == "OperationOutcome":
                result.notes[key] = "FHIR server answered with an OperationOutcome"
        else:
            result.notes[key] = str(value)
    return result
