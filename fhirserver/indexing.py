"""Search-index extraction at write time (FHIR R4 search.html#ptypes, "Search Parameter Types").

For every indexed search parameter of a resource's type (fhirserver.searchparams) the parameter's
FHIRPath expression selects values, and each value becomes rows of the index table of its
parameter type: token, string, reference, date, quantity, number, uri.

Evaluating FHIRPath with fhirpathpy costs ~0.1 ms per expression, far too slow for ~30
parameters per resource, so each expression is compiled once into a small path walker over the
JSON when it has one of the simple forms the official definitions use (`Type.a.b`, unions,
`as X` / `.as(X)` / `ofType(X)` on choice elements, `where(resolve() is X)`,
`where(field='literal')`). Everything else falls back to fhirpathpy (compiled once and cached).
Element types and choice types come from fhirpathpy's R4 model, so the walker knows that
`Observation.value` means `valueQuantity`, `valueString`, … and what datatype each value has.

`resolve() is X` is decided from the reference's literal type (`X/id`, or an absolute URL
ending in `X/id`); no resource is fetched.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fhirserver import searchparams

Node = tuple[Any, str]  # (JSON value, FHIR type name)
Evaluator = Callable[[dict[str, Any]], list[Node]]

_log = logging.getLogger(__name__)

MAX_STRING = 255
MAX_URI = 512
UTC = dt.UTC
MIN_INSTANT = dt.datetime(1, 1, 1, tzinfo=UTC)
MAX_INSTANT = dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
# Open ends of a Range: large finite sentinels, portable to SQLite REAL and PostgreSQL float8.
NUMBER_MIN = -1e300
NUMBER_MAX = 1e300

PRIMITIVES = frozenset(
    {
        "boolean",
        "integer",
        "string",
        "decimal",
        "uri",
        "url",
        "canonical",
        "base64Binary",
        "instant",
        "date",
        "dateTime",
        "time",
        "code",
        "oid",
        "id",
        "markdown",
        "unsignedInt",
        "positiveInt",
        "uuid",
        "xhtml",
    }
)
_LITERAL_REF = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")
_ABSOLUTE_REF = re.compile(r"^https?://.+/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


# --- the FHIRPath subset compiler -----------------------------------------------------------


@dataclass(frozen=True)
class Child:
    """Step into an element; several (JSON key, type) pairs for an untyped choice element."""

    keys: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class IsType:
    """`where(resolve() is X)`: keep references whose literal target type is X."""

    rtype: str


@dataclass(frozen=True)
class Equals:
    """`where(key='literal')`."""

    key: str
    literal: str


Step = Child | IsType | Equals
_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<id>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>[().|=]))")


class _Unsupported(Exception):
    """The expression is outside the compiled subset: use fhirpathpy."""


def _tokens(expression: str) -> list[str]:
    out, pos = [], 0
    expression = expression.strip()
    while pos < len(expression):
        match = _TOKEN.match(expression, pos)
        if match is None or match.end() == pos:
            raise _Unsupported(expression)
        out.append(match.group(match.lastgroup or "op"))
        pos = match.end()
    return out


class _Parser:
    """Parses the subset into branches of raw operations: ("child", name), ("as", T), …"""

    def __init__(self, expression: str) -> None:
        self.toks = _tokens(expression)
        self.pos = 0

    def peek(self, ahead: int = 0) -> str:
        i = self.pos + ahead
        return self.toks[i] if i < len(self.toks) else ""

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if not tok or (expected is not None and tok != expected):
            raise _Unsupported(f"expected {expected!r} at {tok!r}")
        self.pos += 1
        return tok

    def ident(self) -> str:
        tok = self.take()
        if not (tok[0].isalpha() or tok[0] == "_"):
            raise _Unsupported(tok)
        return tok

    def parse(self) -> list[list[tuple[str, ...]]]:
        branches = self.union()
        if self.pos != len(self.toks):
            raise _Unsupported("trailing tokens")
        return branches

    def union(self) -> list[list[tuple[str, ...]]]:
        branches = self.term()
        while self.peek() == "|":
            self.take()
            branches += self.term()
        return branches

    def term(self) -> list[list[tuple[str, ...]]]:
        if self.peek() == "(":
            self.take()
            branches = self.union()
            self.take(")")
        else:
            branches = [[("child", self.ident())]]
        while True:
            if self.peek() == ".":
                self.take()
                op = self.invocation()
            elif self.peek() == "as":
                self.take()
                op = ("as", self.ident())
            else:
                return branches
            for branch in branches:
                branch.append(op)

    def invocation(self) -> tuple[str, ...]:
        name = self.ident()
        if self.peek() != "(":
            return ("child", name)
        self.take("(")
        if name in ("as", "ofType"):
            op: tuple[str, ...] = ("as", self.ident())
        elif name == "where" and self.peek() == "resolve":
            self.take()
            self.take("(")
            self.take(")")
            self.take("is")
            op = ("is", self.ident())
        elif name == "where" and self.peek(1) == "=":
            key = self.ident()
            self.take("=")
            literal = self.take()
            if not literal.startswith("'"):
                raise _Unsupported(literal)
            op = ("eq", key, literal[1:-1])
        else:
            raise _Unsupported(name)
        self.take(")")
        return op


@functools.cache
def _model() -> dict[str, Any]:
    from fhirpathpy.models import models  # lazy: loading the model JSON costs ~30 ms

    model: dict[str, Any] = models["r4"]
    return model


@functools.cache
def _backbone_paths() -> frozenset[str]:
    """Element paths that have children but no type of their own in the model (BackboneElements)."""
    model = _model()
    paths: set[str] = set()
    for path in (*model["path2Type"], *model["choiceTypePaths"]):
        parts = path.split(".")
        paths.update(".".join(parts[:i]) for i in range(2, len(parts)))
    return frozenset(paths)


def normalize_type(name: str) -> str:
    """Model type names → FHIR type names: System.String → string, DateTime → dateTime."""
    if name.startswith("System."):
        return {"String": "string", "Boolean": "boolean", "Integer": "integer", "Decimal": "decimal"}.get(
            name[7:], name[7:].lower()
        )
    lowered = name[:1].lower() + name[1:]
    return lowered if lowered in PRIMITIVES else name


def _child_step(context: str, name: str, cast: str | None) -> tuple[Child, str | None, bool]:
    """The step into `name` from element/type path `context`, the context after it, and
    whether `cast` (a following `as X`) was consumed by picking one type of a choice element."""
    model = _model()
    path = f"{context}.{name}"
    path = model["pathsDefinedElsewhere"].get(path, path)
    choices: list[str] | None = model["choiceTypePaths"].get(path)
    if choices:
        if cast is not None:
            choices = [c for c in choices if c.lower() == cast.lower()]
            if not choices:
                raise _Unsupported(f"{path} as {cast}")
        keys = tuple((name + c, normalize_type(c)) for c in choices)
        return Child(keys), (keys[0][1] if len(keys) == 1 else None), cast is not None
    if path in model["path2Type"]:
        typ = normalize_type(model["path2Type"][path])
        return Child(((name, typ),)), (path if typ in ("BackboneElement", "Element") else typ), False
    if path in _backbone_paths():
        return Child(((name, "BackboneElement"),)), path, False
    raise _Unsupported(path)


def _type_branch(rtype: str, ops: list[tuple[str, ...]]) -> tuple[Step, ...] | None:
    """Typed steps of one union branch; None when the branch is rooted at another type."""
    if ops[0][0] != "child" or ops[0][1] not in (rtype, "Resource", "DomainResource"):
        return None
    steps: list[Step] = []
    context: str | None = rtype
    current: str | None = rtype
    i = 1
    while i < len(ops):
        op = ops[i]
        if op[0] == "child":
            if context is None:
                raise _Unsupported("navigation below an untyped choice")
            cast = ops[i + 1][1] if i + 1 < len(ops) and ops[i + 1][0] == "as" else None
            step, context, consumed = _child_step(context, op[1], cast)
            current = step.keys[0][1] if len(step.keys) == 1 else None
            steps.append(step)
            i += 2 if consumed else 1
            continue
        if op[0] == "as" and current is not None and current == normalize_type(op[1]):
            pass  # a cast to the type the element already has
        elif op[0] == "is" and current == "Reference":
            steps.append(IsType(op[1]))
        elif op[0] == "eq":
            steps.append(Equals(op[1], op[2]))
        else:
            raise _Unsupported(str(op))
        i += 1
    return tuple(steps)


def compile_path(rtype: str, expression: str) -> tuple[tuple[Step, ...], ...] | None:
    """The expression's branches for `rtype` as walker steps, or None when outside the subset."""
    try:
        raw = _Parser(expression).parse()
        typed = [_type_branch(rtype, ops) for ops in raw]
    except _Unsupported:
        return None
    return tuple(t for t in typed if t is not None)


def reference_type(node: Any) -> str | None:
    """The literal target type of a Reference (relative `T/id` or absolute `…/T/id`)."""
    ref = node.get("reference") if isinstance(node, dict) else None
    if not isinstance(ref, str):
        return None
    match = _LITERAL_REF.match(ref) or _ABSOLUTE_REF.match(ref)
    return match.group(1) if match else None


def walk(resource: dict[str, Any], rtype: str, branches: tuple[tuple[Step, ...], ...]) -> list[Node]:
    out: list[Node] = []
    for steps in branches:
        nodes: list[Node] = [(resource, rtype)]
        for step in steps:
            nodes = _apply(step, nodes)
            if not nodes:
                break
        out.extend(nodes)
    return out


def _apply(step: Step, nodes: list[Node]) -> list[Node]:
    if isinstance(step, Child):
        out: list[Node] = []
        for node, _ in nodes:
            if not isinstance(node, dict):
                continue
            for key, typ in step.keys:
                value = node.get(key)
                if isinstance(value, list):
                    out.extend((v, typ) for v in value if v is not None)
                elif value is not None:
                    out.append((value, typ))
        return out
    if isinstance(step, IsType):
        return [(n, t) for n, t in nodes if reference_type(n) == step.rtype]
    return [(n, t) for n, t in nodes if isinstance(n, dict) and n.get(step.key) == step.literal]


def _resolve_literal(inputs: list[Any]) -> list[Any]:
    """fhirpathpy has no resolve(): a typed stub built from the reference's literal type."""
    from fhirpathpy.engine.nodes import ResourceNode

    types = [reference_type(i) for i in inputs]
    return [ResourceNode.create_node({"resourceType": t}, t) for t in types if t]  # type: ignore[no-untyped-call]


def split_union(expression: str) -> list[str]:
    """Split a FHIRPath expression at its top-level `|` operators (not inside () or quotes)."""
    parts: list[str] = []
    depth, quote, start = 0, False, 0
    for i, ch in enumerate(expression):
        if ch == "'":
            quote = not quote
        elif quote:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


_INFIX_AS = re.compile(r"^\((.+) as (\w+)\)$")


def lenient(branch: str) -> str:
    """`X as T` and `X.as(T)` as `X.ofType(T)`: FHIRPath's `as` is an error on a collection of
    several items (e.g. `Observation.component.value as Quantity` with two components), while
    the search parameter's intent is clearly every value of that type."""
    match = _INFIX_AS.match(branch.strip())
    if match:
        branch = f"{match.group(1)}.ofType({match.group(2)})"
    return branch.replace(".as(", ".ofType(")


@functools.cache
def _fhirpathpy(expression: str) -> Callable[[dict[str, Any]], list[Any]]:
    import fhirpathpy

    options = {"returnRawData": True, "userInvocationTable": {"resolve": {"fn": _resolve_literal, "arity": {0: []}}}}
    compiled = fhirpathpy.compile(expression, _model(), options)
    return lambda resource: compiled(resource, None)


def _typed(item: Any) -> Node | None:
    data, path = (item.data, item.path) if hasattr(item, "data") else (item, None)
    if data is None:
        return None
    if path is None:
        path = {bool: "boolean", int: "integer", float: "decimal", str: "string"}.get(type(data), "Element")
    return data, normalize_type(path)


def fhirpathpy_nodes(resource: dict[str, Any], expression: str) -> list[Node]:
    """Evaluate with fhirpathpy, typed like the walker's results (the fallback; also in tests).

    Each top-level union branch is evaluated alone because fhirpathpy's `|` drops type
    information; a branch that fails as written is retried in its lenient form.
    """
    out: list[Node] = []
    for branch in split_union(expression):
        try:
            items = _fhirpathpy(branch)(resource)
        except Exception:  # noqa: BLE001 - fhirpathpy raises bare Exception for evaluation errors
            items = _fhirpathpy(lenient(branch))(resource)
        out.extend(node for node in map(_typed, items) if node is not None)
    return out


def _safe_fhirpathpy(resource: dict[str, Any], expression: str) -> list[Node]:
    """The fallback at write time: an expression fhirpathpy cannot evaluate indexes nothing
    rather than refusing the write (the resource was already validated)."""
    try:
        return fhirpathpy_nodes(resource, expression)
    except Exception:  # noqa: BLE001 - see fhirpathpy_nodes
        _log.warning("search parameter expression %r failed on a %s", expression, resource.get("resourceType"))
        return []


@functools.cache
def evaluator(rtype: str, expression: str) -> Evaluator:
    """The fastest correct evaluator of `expression` on resources of `rtype` (cached)."""
    branches = compile_path(rtype, expression)
    if branches is not None:
        return lambda resource: walk(resource, rtype, branches)
    return lambda resource: _safe_fhirpathpy(resource, expression)


# --- values: normalisation, dates, numbers --------------------------------------------------


def normalize(text: str) -> str:
    """Case- and accent-insensitive form for string search (R4 search.html#string)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


_DATE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def _tz(text: str | None) -> dt.tzinfo:
    if not text or text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    return dt.timezone(sign * dt.timedelta(hours=int(text[1:3]), minutes=int(text[4:6])))


def _add_months(when: dt.datetime, months: int) -> dt.datetime:
    year, month = divmod(when.month - 1 + months, 12)
    return when.replace(year=when.year + year, month=month + 1)


def _end_of_precision(
    low: dt.datetime, month: str | None, day: str | None, minute: str | None, second: str | None, fraction: str | None
) -> dt.datetime:
    """The first instant after the value's precision range."""
    if fraction:
        return low + dt.timedelta(microseconds=10 ** (6 - min(len(fraction), 6)))
    if second:
        return low + dt.timedelta(seconds=1)
    if minute:
        return low + dt.timedelta(minutes=1)
    if day:
        return low + dt.timedelta(days=1)
    return _add_months(low, 1 if month else 12)


def date_range(text: str) -> tuple[dt.datetime, dt.datetime] | None:
    """The instants [low, high] covered by a date/dateTime/instant at its precision, in UTC.

    R4 search.html#date: a date value is an implicit range; `2020-03` is all of March 2020.
    Values without a time zone are taken as UTC (the server's zone). None when malformed.
    """
    match = _DATE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        low = dt.datetime(
            int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0),
            int((fraction or "0")[:6].ljust(6, "0")), tzinfo=_tz(zone),
        )  # fmt: skip
    except ValueError:
        return None
    try:
        high = _end_of_precision(low, month, day, minute, second, fraction)
    except (ValueError, OverflowError):  # the last instants of year 9999
        return _utc(low), MAX_INSTANT
    return _utc(low), _utc(high - dt.timedelta(microseconds=1))


def _utc(when: dt.datetime) -> dt.datetime:
    try:
        return when.astimezone(UTC)
    except OverflowError:  # year 1 east of UTC, year 9999 west of it
        return MIN_INSTANT if when.year == 1 else MAX_INSTANT


# --- index rows -----------------------------------------------------------------------------


@dataclass
class IndexRows:
    """Index values of one resource, per table, as (param, value...) tuples without duplicates."""

    token: set[tuple[str, str | None, str, str | None]] = field(default_factory=set)
    string: set[tuple[str, str, str]] = field(default_factory=set)
    reference: set[tuple[str, str | None, str | None, str | None]] = field(default_factory=set)
    date: set[tuple[str, dt.datetime, dt.datetime]] = field(default_factory=set)
    quantity: set[tuple[str, float, float, str | None, str | None, str | None]] = field(default_factory=set)
    number: set[tuple[str, float, float]] = field(default_factory=set)
    uri: set[tuple[str, str]] = field(default_factory=set)


def _cut(value: Any, limit: int = MAX_STRING) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _text(value: Any) -> str | None:
    return _cut(normalize(value)) if isinstance(value, str) and value else None


def token_values(value: Any, typ: str) -> Iterator[tuple[str | None, str, str | None]]:
    """(system, code, normalised display text) of a token-typed value (R4 search.html#token)."""
    if typ == "CodeableConcept" and isinstance(value, dict):
        for coding in value.get("coding") or []:
            yield from token_values(coding, "Coding")
        if _text(value.get("text")):
            yield None, "", _text(value.get("text"))
    elif typ == "Coding" and isinstance(value, dict):
        if _cut(value.get("code")):
            yield _cut(value.get("system")), _cut(value["code"]) or "", _text(value.get("display"))
    elif typ in ("Identifier", "ContactPoint") and isinstance(value, dict):
        if _cut(value.get("value")):
            kind = value.get("type")
            text = _text(kind.get("text")) if isinstance(kind, dict) else None
            yield _cut(value.get("system")), _cut(value["value"]) or "", text
    elif isinstance(value, bool):
        yield None, "true" if value else "false", None
    elif isinstance(value, str) and value:
        yield None, value[:MAX_STRING], None


_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


def string_values(value: Any, typ: str) -> Iterator[str]:
    """Strings searched by a string parameter; HumanName and Address by each part (R4 #string)."""
    parts = _NAME_PARTS if typ == "HumanName" else _ADDRESS_PARTS if typ == "Address" else None
    if parts is None:
        if isinstance(value, str) and value:
            yield value
        return
    if isinstance(value, dict):
        for part in parts:
            item = value.get(part)
            for text in item if isinstance(item, list) else [item]:
                if isinstance(text, str) and text:
                    yield text


def reference_values(value: Any, typ: str) -> Iterator[tuple[str | None, str | None, str | None]]:
    """(target type, target id, url) of a reference: relative literal → type/id, else the URL."""
    ref = value.get("reference") if typ == "Reference" and isinstance(value, dict) else value
    if not isinstance(ref, str) or not ref or ref.startswith("#"):
        return
    match = _LITERAL_REF.match(ref)
    if match:
        yield match.group(1), match.group(2), None
    else:
        yield None, None, ref[:MAX_URI]


def date_values(value: Any, typ: str) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    if typ in ("date", "dateTime", "instant") and isinstance(value, str):
        found = date_range(value)
        if found:
            yield found
    elif typ == "Period" and isinstance(value, dict):
        start = date_range(value["start"]) if isinstance(value.get("start"), str) else None
        end = date_range(value["end"]) if isinstance(value.get("end"), str) else None
        if start or end:  # an open end is unbounded (R4 search.html#date, Period)
            yield (start[0] if start else MIN_INSTANT), (end[1] if end else MAX_INSTANT)
    elif typ == "Timing" and isinstance(value, dict):
        for event in value.get("event") or []:
            yield from date_values(event, "dateTime")


_QUANTITY_TYPES = frozenset({"Quantity", "Age", "Duration", "Count", "Distance", "SimpleQuantity", "MoneyQuantity"})


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def quantity_values(value: Any, typ: str) -> Iterator[tuple[float, float, str | None, str | None, str | None]]:
    """(low, high, system, code, unit) of a Quantity-like value or a Range (R4 #quantity)."""
    if not isinstance(value, dict):
        return
    if typ in _QUANTITY_TYPES or typ == "Money":
        number = _number(value.get("value"))
        if number is None:
            return
        if typ == "Money":
            yield number, number, "urn:iso:std:iso:4217", _cut(value.get("currency")), None
        else:
            yield number, number, _cut(value.get("system")), _cut(value.get("code")), _cut(value.get("unit"))
    elif typ == "Range":
        low, high = value.get("low") or {}, value.get("high") or {}
        lo, hi = _number(low.get("value")), _number(high.get("value"))
        if lo is None and hi is None:
            return
        unit_of = low if lo is not None else high
        yield (
            NUMBER_MIN if lo is None else lo,
            NUMBER_MAX if hi is None else hi,
            _cut(unit_of.get("system")),
            _cut(unit_of.get("code")),
            _cut(unit_of.get("unit")),
        )


def extract(resource: dict[str, Any]) -> IndexRows:
    """Index values of every supported search parameter of the resource's type."""
    rtype = resource["resourceType"]
    rows = IndexRows()
    for param in searchparams.indexed_params(rtype):
        for value, typ in evaluator(rtype, param.expression)(resource):
            _add(rows, param.code, param.type, value, typ)
    return rows


def _add(rows: IndexRows, code: str, ptype: str, value: Any, typ: str) -> None:
    if ptype == "token":
        rows.token.update((code, s, c, t) for s, c, t in token_values(value, typ))
    elif ptype == "string":
        rows.string.update((code, _cut(normalize(s)) or "", s) for s in string_values(value, typ))
    elif ptype == "reference":
        rows.reference.update((code, *r) for r in reference_values(value, typ))
    elif ptype == "date":
        rows.date.update((code, lo, hi) for lo, hi in date_values(value, typ))
    elif ptype == "quantity":
        rows.quantity.update((code, *q) for q in quantity_values(value, typ))
    elif ptype == "number":
        number = _number(value)
        if number is not None:
            rows.number.add((code, number, number))
    elif ptype == "uri" and isinstance(value, str) and value:
        rows.uri.add((code, value[:MAX_URI]))


# --- the original, type-independent extraction (kept for fhir_reference_index) ------------


def identifier_tokens(resource: dict[str, Any]) -> Iterator[tuple[str | None, str]]:
    idents = resource.get("identifier")
    if isinstance(idents, dict):
        idents = [idents]
    for ident in idents or []:
        if isinstance(ident, dict) and isinstance(ident.get("value"), str):
            system = ident.get("system")
            yield (system if isinstance(system, str) else None, ident["value"])


_OLD_LITERAL_REF = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")


def literal_references(node: Any, path: str = "") -> Iterator[tuple[str, str, str]]:
    """(element path, target type, target id) for every relative literal reference."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                match = _OLD_LITERAL_REF.match(value)
                if match:
                    yield path, match.group(1), match.group(2)
            elif key not in ("contained", "text"):
                yield from literal_references(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for item in node:
            yield from literal_references(item, path)


def split_reference(reference: str) -> tuple[str, str] | None:
    match = _OLD_LITERAL_REF.match(reference)
    return (match.group(1), match.group(2)) if match else None
