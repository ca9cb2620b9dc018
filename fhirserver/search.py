"""FHIR R4 search over the index tables, in SQL (http://hl7.org/fhir/R4/search.html).

`search()` turns the query parameters into one SQL statement for the page and one for the
total; every filter, the access restriction and the order are SQL, so the database uses the
lookup indexes of fhirserver.models and nothing is filtered row by row in Python.

Supported: every indexed parameter of the supported types (fhirserver.searchparams) with the
modifiers :missing (all types), :exact and :contains (string), :not and :text (token), :[type]
(reference); prefixes eq ne gt lt ge le sa eb (date, number, quantity); `,` = OR and a
repeated parameter = AND; _id, _lastUpdated, chaining and _has (nested, see the limits below);
_sort, _count, _summary (count, data, false), _total, _elements, _include and
_revinclude (with :iterate to a second level, and `*`).

Not supported: the `ap` prefix, :in / :not-in / :below / :above / :of-type / :identifier
(reported as unknown parameters), composite and special parameters, _text, _content, _filter,
_list, _query, _contained, _summary=true|text.

Complexity is bounded (searchparams.SearchLimits, from settings): the number of parameters,
of OR values per parameter, of links followed by chains and _has together, and of
_include/_revinclude. A search past a limit is refused (400 `too-costly`, naming the limit),
never half-run: the statement's size is bounded before it is built.

References: `Type/id`, a bare `id` (matching any of the parameter's target types), an absolute
URL under this server's base URL (the same as `Type/id`), any other absolute or canonical URL
(matched as written).

Escaping (search.html#escaping): `\\,` `\\|` `\\$` and `\\\\` in values.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, cast

import orjson
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    false,
    func,
    intersect,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import QueryableAttribute, aliased
from sqlalchemy.sql import operators
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BinaryExpression
from sqlalchemy.sql.selectable import ScalarSelect
from sqlalchemy.sql.visitors import InternalTraversal

from common.numbers import INT64_MAX, bounded_int
from fhirserver import searchparams, storage
from fhirserver.compartments import Restriction, compartment_condition, own_condition
from fhirserver.errors import FhirError, Issue
from fhirserver.indexing import MAX_STRING, date_range, normalize
from fhirserver.models import (
    DateIndexRow,
    NumberIndexRow,
    QuantityIndexRow,
    ResourceRow,
    SearchReferenceRow,
    StringIndexRow,
    TokenIndexRow,
    UriIndexRow,
)
from fhirserver.searchparams import SUPPORTED_TYPES, SearchLimits, SearchParam, compartment_params

__all__ = ["SUPPORTED_TYPES", "SearchResult", "find_by_id", "search"]

Cond = ColumnElement[bool]
Expr = ColumnElement[Any] | QueryableAttribute[Any]
REF = SearchReferenceRow
_DEFAULT_LIMITS = SearchLimits()
MAX_INCLUDE_LEVELS = 2  # _include:iterate / _revinclude:iterate follow at most this many links

_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_LITERAL = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")
_ELEMENT = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
# R4 search.html#modifiers: those implemented, per parameter type; the others R4 defines are
# reported as unknown parameters, and anything else is a malformed request.
_MODIFIERS = {
    "token": {"missing", "not", "text"},
    "string": {"missing", "exact", "contains"},
    "reference": {"missing"},
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "uri": {"missing"},
}
_UNSUPPORTED_MODIFIERS = {"in", "not-in", "below", "above", "of-type", "identifier", "iterate"}
_RESULT_PARAMS = {"_count", "_sort", "_summary", "_total", "_elements", "_include", "_revinclude"}
_IGNORED = {"_format", "_pretty"}  # answered by the REST layer


@dataclass
class SearchResult:
    resources: list[dict[str, Any]]  # the page, in sort order
    included: list[dict[str, Any]]  # _include / _revinclude results (search.mode = include)
    total: int | None  # None with _total=none
    unknown: list[str]  # parameters not understood or not supported: ignored
    offset: int
    count: int  # the page size used


@dataclass(frozen=True)
class _Cols:
    """The resource columns a condition is built on (the main query's row or an inner alias)."""

    rtype: ColumnElement[str]
    id: ColumnElement[str]
    last_updated: ColumnElement[Any]
    deleted: ColumnElement[bool]


def _cols(entity: Any) -> _Cols:
    return _Cols(entity.resource_type, entity.id, entity.last_updated, entity.deleted)


@dataclass(frozen=True)
class _Include:
    source: str
    codes: tuple[str, ...] | None  # None: every reference parameter (`*`)
    target: str | None
    reverse: bool
    iterate: bool


@dataclass
class _Controls:
    count: int
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (key, descending)
    summary: str = "false"
    total: str = "accurate"
    elements: list[str] | None = None
    includes: list[_Include] = field(default_factory=list)


def _bad(name: str, message: str, code: str = "invalid") -> FhirError:
    return FhirError([Issue(message, code=code, expression=(name,))])


def _too_costly(name: str, what: str, limit: int, setting: str) -> FhirError:
    """A search past one of its limits (searchparams.SearchLimits): 400, naming the limit."""
    return _bad(name, f"a search may have at most {limit} {what} (limit MOCKEHR_FHIR_{setting})", "too-costly")


# --- values: escaping, prefixes, numbers, dates ---------------------------------------------


def split_escaped(value: str, sep: str, maxsplit: int = -1) -> list[str]:
    """Split at unescaped `sep` and remove the escapes (R4 search.html#escaping)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            current.append(value[i + 1])
            i += 2
            continue
        if ch == sep and (maxsplit < 0 or len(parts) < maxsplit):
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _prefixed(name: str, value: str) -> tuple[str, str]:
    """(prefix, rest) of a date/number/quantity value (R4 search.html §3.1.1.4.2, prefixes)."""
    if len(value) > 2 and value[:2] in _PREFIXES and not value[:2].isdigit():
        prefix, value = value[:2], value[2:]
    else:
        prefix = "eq"
    if prefix == "ap":
        raise _bad(name, "the 'ap' prefix is not supported", "not-supported")
    return prefix, value


def _number_range(name: str, text: str) -> tuple[float, float, float]:
    """(value, low, high): the implicit range of the value's precision (R4 search.html#number)."""
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise _bad(name, f"{text!r} is not a number") from None
    if not number.is_finite():
        raise _bad(name, f"{text!r} is not a number")
    exponent = number.as_tuple().exponent
    half = Decimal(5).scaleb(int(exponent) - 1)
    return float(number), float(number - half), float(number + half)


def _dates(name: str, text: str) -> tuple[Any, Any]:
    found = date_range(text)
    if found is None:
        raise _bad(name, f"{text!r} is not a valid date (yyyy[-mm[-dd[Thh:mm[:ss][zone]]]])")
    return found


def _range_cond(prefix: str, lo: Expr, hi: Expr, qlo: Any, qhi: Any) -> Cond:
    """Date semantics of the prefixes, target range [lo, hi] against search range [qlo, qhi].

    R4 search.html §3.1.1.4.2: eq = the search range contains the target; gt = the range above
    the search value overlaps the target; ge = gt or eq; sa = the target starts after the search
    range; eb = it ends before. The redundant bounds (e.g. `lo <= qhi` for eq) let the index
    on (low) or (high) serve a bounded range scan.
    """
    contained = and_(lo >= qlo, hi <= qhi)
    conds: dict[str, Cond] = {
        "eq": and_(contained, lo <= qhi),
        "ne": not_(contained),
        "gt": hi > qhi,
        "lt": lo < qlo,
        "ge": and_(hi >= qlo, or_(hi > qhi, contained)),
        "le": and_(lo <= qhi, or_(lo < qlo, contained)),
        "sa": lo > qhi,
        "eb": hi < qlo,
    }
    return conds[prefix]


def _number_cond(prefix: str, lo: Expr, hi: Expr, value: tuple[float, float, float]) -> Cond:
    """Number semantics (R4 search.html#number): eq/ne use the precision range, the others the value."""
    exact, qlo, qhi = value
    within = and_(lo >= qlo, hi < qhi)
    conds: dict[str, Cond] = {
        "eq": within,
        "ne": not_(within),
        "gt": hi > exact,
        "lt": lo < exact,
        "ge": hi >= exact,
        "le": lo <= exact,
        "sa": lo > exact,
        "eb": hi < exact,
    }
    return conds[prefix]


# --- the condition builder ------------------------------------------------------------------


@dataclass(frozen=True)
class _Param:
    """One parsed query parameter name: code[:modifier][.chain] or _has:Type:param:…"""

    raw: str
    code: str
    modifier: str | None = None
    chain: str | None = None


def _parse_name(raw: str) -> _Param:
    head, dot, chain = raw.partition(".")
    code, colon, modifier = head.partition(":")
    return _Param(raw, code, modifier if colon else None, chain if dot else None)


class _Unknown(Exception):
    """A parameter this server does not know or does not support: reported, not an error."""


@dataclass
class _Builder:
    """Builds SQL conditions for one search (the main type, the caller's restriction)."""

    main_type: str
    restriction: Restriction | None
    base_url: str
    limits: SearchLimits = field(default_factory=SearchLimits)

    def values(self, name: str, value: str) -> list[str]:
        """The OR values of one parameter (empty ones dropped), at most limits.max_values."""
        values = [v for v in split_escaped(value, ",") if v != ""]
        if len(values) > self.limits.max_values:
            raise _too_costly(name, "values in one parameter", self.limits.max_values, "SEARCH_MAX_VALUES")
        return values

    def _deeper(self, raw: str, depth: int) -> int:
        """The depth of a chain's or _has's inner search, within limits.max_chain_depth."""
        if depth + 1 > self.limits.max_chain_depth:
            raise _too_costly(raw, "chained or _has links", self.limits.max_chain_depth, "SEARCH_MAX_CHAIN_DEPTH")
        return depth + 1

    def condition(self, rtype: str, cols: _Cols, raw: str, value: str, depth: int = 0) -> Cond:
        """The condition for one `name=value` pair on resources of `rtype` (raises _Unknown)."""
        if raw.startswith("_has:"):
            return self._has(rtype, cols, raw, value, depth)
        name = _parse_name(raw)
        if name.code == "_id":
            return self._id(cols, name, value)
        if name.code == "_lastUpdated":
            return self._last_updated(cols, name, value)
        param = searchparams.get(rtype, name.code)
        if param is None:
            raise _Unknown(raw)
        if name.chain is not None:
            return self._chain(rtype, cols, param, name, value, depth)
        self._check_modifier(param, name)
        if name.modifier == "missing":
            return self._missing(rtype, cols, param, name, value)
        values = self.values(name.raw, value)
        if not values:
            return true()
        return self._typed(rtype, cols, param, name, values)

    def _check_modifier(self, param: SearchParam, name: _Param) -> None:
        modifier = name.modifier
        if modifier is None or modifier in _MODIFIERS[param.type]:
            return
        if param.type == "reference" and modifier[:1].isupper():
            return  # :[type]; a type that is no (supported) target simply matches nothing
        if modifier in _UNSUPPORTED_MODIFIERS:
            raise _Unknown(name.raw)
        raise _bad(name.raw, f"modifier :{modifier} is not valid for a {param.type} parameter")

    def _typed(self, rtype: str, cols: _Cols, param: SearchParam, name: _Param, values: list[str]) -> Cond:
        if param.type == "token":
            return self._token(rtype, cols, param, name, values)
        if param.type == "string":
            return self._ids_in(cols, StringIndexRow, rtype, param.code, [self._string(name, v) for v in values])
        if param.type == "reference":
            return self._ids_in(cols, REF, rtype, param.code, [self._reference(param, name, v) for v in values])
        if param.type == "date":
            return self._ids_in(cols, DateIndexRow, rtype, param.code, [self._date(name, v) for v in values])
        if param.type == "quantity":
            return self._ids_in(cols, QuantityIndexRow, rtype, param.code, [self._quantity(name, v) for v in values])
        if param.type == "number":
            table = NumberIndexRow
            conds = [_number_cond(*self._number(name, v, table)) for v in values]
            return self._ids_in(cols, table, rtype, param.code, conds)
        uri = [UriIndexRow.value == v[:512] for v in values]
        return self._ids_in(cols, UriIndexRow, rtype, param.code, uri)

    @staticmethod
    def _ids(table: Any, rtype: str, code: str, *conds: Cond) -> Select[Any]:
        return select(table.resource_id).where(table.resource_type == rtype, table.param == code, *conds)

    def _ids_in(self, cols: _Cols, table: Any, rtype: str, code: str, alternatives: list[Cond]) -> Cond:
        return cols.id.in_(self._ids(table, rtype, code, or_(*alternatives)))

    # _id and _lastUpdated: columns of fhir_resources (search.html#id, #lastUpdated)
    def _id(self, cols: _Cols, name: _Param, value: str) -> Cond:
        if name.modifier is not None or name.chain is not None:
            raise _bad(name.raw, "_id takes no modifier")
        ids = self.values(name.raw, value)
        return cols.id.in_(ids) if ids else true()

    def _last_updated(self, cols: _Cols, name: _Param, value: str) -> Cond:
        if name.modifier is not None or name.chain is not None:
            raise _bad(name.raw, "_lastUpdated takes no modifier")
        alternatives = []
        for item in self.values(name.raw, value) or [""]:
            prefix, text = _prefixed(name.raw, item)
            low, high = _dates(name.raw, text)
            alternatives.append(_range_cond(prefix, cols.last_updated, cols.last_updated, low, high))
        return or_(*alternatives)

    def _missing(self, rtype: str, cols: _Cols, param: SearchParam, name: _Param, value: str) -> Cond:
        """search.html#missing: true = no value at all for the parameter, false = some value."""
        if value not in ("true", "false"):
            raise _bad(name.raw, ":missing takes true or false")
        present = cols.id.in_(self._ids(_TABLES[param.type], rtype, param.code))
        return not_(present) if value == "true" else present

    def _token(self, rtype: str, cols: _Cols, param: SearchParam, name: _Param, values: list[str]) -> Cond:
        """search.html#token: [system]|[code], |code (no system), system| (any code), code."""
        t = TokenIndexRow
        if name.modifier == "text":
            conds = [_starts_with(t.text, normalize(v)) for v in values]
            return self._ids_in(cols, t, rtype, param.code, conds)
        conds = []
        for v in values:
            parts = split_escaped(v, "|", maxsplit=1)
            if len(parts) == 1:
                conds.append(t.code == v[:MAX_STRING])
            elif parts[1] == "":
                conds.append(t.system == parts[0][:MAX_STRING])
            else:
                system = t.system.is_(None) if parts[0] == "" else t.system == parts[0][:MAX_STRING]
                conds.append(and_(t.code == parts[1][:MAX_STRING], system))
        matching = self._ids_in(cols, t, rtype, param.code, conds)
        return not_(matching) if name.modifier == "not" else matching

    @staticmethod
    def _string(name: _Param, value: str) -> Cond:
        """search.html#string: starts-with, case- and accent-insensitive; :exact; :contains."""
        s, folded = StringIndexRow, normalize(value)[:MAX_STRING]
        if name.modifier == "exact":
            return and_(s.value == folded, s.exact == value)
        if name.modifier == "contains":
            return s.value.like(f"%{_like_escape(folded)}%", escape="\\")
        return _starts_with(s.value, folded)

    def _reference(self, param: SearchParam, name: _Param, value: str) -> Cond:
        """search.html#reference: Type/id, id, an absolute URL (ours → Type/id), a canonical URL."""
        own = self.base_url.rstrip("/") + "/"
        typed = name.modifier
        literal_ref = value[len(own) :] if value.startswith(own) else value
        match = _LITERAL.match(literal_ref)
        if match:
            ttype, tid = match.groups()
            if typed is not None and ttype != typed:
                return false()
            cond = and_(REF.target_type == ttype, REF.target_id == tid)
            return or_(cond, REF.url == value) if value.startswith(own) else cond
        if "/" not in value and ":" not in value:
            if not _ID.match(value):
                raise _bad(name.raw, f"{value!r} is not a valid id")
            types = [typed] if typed else list(param.targets)
            return and_(REF.target_id == value, REF.target_type.in_(types) if types else REF.target_type.is_not(None))
        if "://" in value or value.startswith(("urn:", "#")):
            return REF.url == value[:512]
        raise _bad(name.raw, f"{value!r} is not a reference (Type/id, id or an absolute URL)")

    def _date(self, name: _Param, value: str) -> Cond:
        prefix, text = _prefixed(name.raw, value)
        low, high = _dates(name.raw, text)
        return _range_cond(prefix, DateIndexRow.low, DateIndexRow.high, low, high)

    @staticmethod
    def _number(name: _Param, value: str, table: Any) -> tuple[str, Any, Any, tuple[float, float, float]]:
        prefix, text = _prefixed(name.raw, value)
        return prefix, table.low, table.high, _number_range(name.raw, text)

    def _quantity(self, name: _Param, value: str) -> Cond:
        """search.html#quantity: [prefix]number|system|code; `number||code` matches code or unit."""
        q = QuantityIndexRow
        parts = split_escaped(value, "|")
        if len(parts) not in (1, 3):
            raise _bad(name.raw, f"{value!r} is not number[|system|code]")
        conds = [_number_cond(*self._number(name, parts[0], q))]
        if len(parts) == 3:
            system, code = parts[1][:MAX_STRING], parts[2][:MAX_STRING]
            if system:
                conds.append(q.system == system)
            if code:
                conds.append(q.code == code if system else or_(q.code == code, q.unit == code))
        return and_(*conds)

    # chaining and reverse chaining (search.html#chaining, #has)
    def _chain(self, rtype: str, cols: _Cols, param: SearchParam, name: _Param, value: str, depth: int) -> Cond:
        if param.type != "reference":
            raise _bad(name.raw, f"{param.code} is not a reference parameter: it cannot be chained")
        chained = name.chain or ""  # may chain further (a.b.c): each link is one level deeper
        inner_depth = self._deeper(name.raw, depth)
        chained_code = _parse_name(chained).code
        if name.modifier is not None:
            if name.modifier not in param.targets:
                return false()  # not a (supported) target type: nothing can match
            targets = [name.modifier]
        else:
            targets = [t for t in param.targets if chained_code.startswith("_") or searchparams.get(t, chained_code)]
        if not targets:
            raise _Unknown(name.raw)
        alternatives = []
        for target in targets:
            inner = aliased(ResourceRow)
            ids = self.matching_ids(target, _cols(inner), [(chained, value)], inner_depth)
            alternatives.append(and_(REF.target_type == target, REF.target_id.in_(ids)))
        return self._ids_in(cols, REF, rtype, param.code, alternatives)

    def _has(self, rtype: str, cols: _Cols, raw: str, value: str, depth: int) -> Cond:
        """`_has:Type:param:criteria` — resources referenced by `param` of matching `Type`s."""
        parts = raw.split(":", 3)
        if len(parts) != 4:
            raise _Unknown(raw)
        inner_depth = self._deeper(raw, depth)
        _, source, code, criteria = parts
        param = searchparams.get(source, code)
        if source not in SUPPORTED_TYPES or param is None or param.type != "reference":
            raise _bad(raw, f"_has needs a supported type and one of its reference parameters, not {source}:{code}")
        inner = aliased(ResourceRow)
        sources = self.matching_ids(source, _cols(inner), [(criteria, value)], inner_depth)
        refs = select(REF.target_id).where(
            REF.resource_type == source, REF.param == code, REF.target_type == rtype, REF.resource_id.in_(sources)
        )
        return cols.id.in_(refs)

    def matching_ids(self, rtype: str, cols: _Cols, pairs: Iterable[tuple[str, str]], depth: int) -> Select[Any]:
        """Ids of visible current `rtype` resources matching every pair (for chains and _has)."""
        conds = [self.condition(rtype, cols, n, v, depth) for n, v in pairs]
        where = [cols.rtype == rtype, cols.deleted.is_(False), *conds, *self.visible(rtype, cols)]
        return select(cols.id).where(*where)

    # the restriction (docs/security.md "The FHIR server's guard")
    def visible(self, rtype: str, cols: _Cols) -> list[Cond]:
        r = self.restriction
        if r is None:
            return []
        if r.types is not None and rtype not in r.types:
            return [false()]
        conds: list[Cond] = []
        if r.allowed_patient_ids is not None:
            compartment = compartment_condition(rtype, cols.id, r.allowed_patient_ids)
            if r.own_practitioner is not None and r.shows_own(rtype):
                compartment = or_(compartment, own_condition(rtype, cols.id, r.own_practitioner))
            conds.append(compartment)
        filters = r.extra_filters if rtype == self.main_type else r.type_filters.get(rtype, [])
        if filters:
            conds.append(or_(*[self._filter_group(rtype, cols, group) for group in filters]))
        return conds

    def _filter_group(self, rtype: str, cols: _Cols, group: Sequence[tuple[str, str]]) -> Cond:
        unrestricted = _Builder(self.main_type, None, self.base_url, self.limits)
        try:
            return and_(true(), *[unrestricted.condition(rtype, cols, n, v) for n, v in group])
        except (_Unknown, FhirError):
            return false()  # a scope filter we cannot evaluate grants nothing


_TABLES: dict[str, Any] = {
    "token": TokenIndexRow,
    "string": StringIndexRow,
    "reference": REF,
    "date": DateIndexRow,
    "quantity": QuantityIndexRow,
    "number": NumberIndexRow,
    "uri": UriIndexRow,
}


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _starts_with(column: Expr, prefix: str) -> Cond:
    """A prefix test as a range, so a B-tree index serves it (the column sorts bytewise)."""
    prefix = prefix[:MAX_STRING]
    if not prefix:
        return column.is_not(None)
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return and_(column >= prefix, column < upper)


# --- result parameters (search.html#count, #sort, #summary, #elements, #include) -------------


def _parse_controls(
    rtype: str, params: list[tuple[str, str]], default: int, maximum: int, limits: SearchLimits
) -> tuple[_Controls, list[tuple[str, str]]]:
    if len(params) > limits.max_parameters:
        raise _too_costly(params[0][0], "parameters", limits.max_parameters, "SEARCH_MAX_PARAMETERS")
    controls, rest = _Controls(count=default), []
    for name, value in params:
        base = name.split(":", 1)[0]
        if value == "":
            continue  # R4 search.html: a parameter with an empty value is ignored
        if base not in _RESULT_PARAMS:
            rest.append((name, value))
        elif base == "_count":
            controls.count = min(_count(name, value), maximum)
        elif base == "_sort":
            controls.sort = _sort_keys(rtype, name, value, limits)
        elif base == "_summary":
            controls.summary = _summary(name, value)
        elif base == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise _bad(name, "_total takes none, estimate or accurate")
            controls.total = value
        elif base == "_elements":
            controls.elements = _elements(name, value, limits)
        else:
            if len(controls.includes) >= limits.max_includes:
                raise _too_costly(name, "_include/_revinclude", limits.max_includes, "SEARCH_MAX_INCLUDES")
            controls.includes.append(_include(name, value))
    return controls, rest


def _count(name: str, value: str) -> int:
    """search.html#count: a page size; above the server's maximum it is lowered to it."""
    count = bounded_int(value, 0, INT64_MAX)
    if count is None:
        raise _bad(name, f"_count takes an integer from 0 to {INT64_MAX}")
    return count


def _summary(name: str, value: str) -> str:
    if value in ("true", "text"):
        raise _bad(name, f"_summary={value} is not supported (count, data and false are)", "not-supported")
    if value not in ("count", "data", "false"):
        raise _bad(name, "_summary takes count, data or false")
    return value


def _elements(name: str, value: str, limits: SearchLimits) -> list[str]:
    items = value.split(",")
    if len(items) > limits.max_values:
        raise _too_costly(name, "values in one parameter", limits.max_values, "SEARCH_MAX_VALUES")
    out = []
    for item in items:
        element = item.strip().rsplit(".", 1)[-1]
        if not _ELEMENT.match(element):
            raise _bad(name, f"{item!r} is not an element name")
        out.append(element)
    return out


_SORTABLE = {"string", "token", "date", "number", "quantity", "uri"}


def _sort_keys(rtype: str, name: str, value: str, limits: SearchLimits) -> list[tuple[str, bool]]:
    items = value.split(",")
    if len(items) > limits.max_values:
        raise _too_costly(name, "values in one parameter", limits.max_values, "SEARCH_MAX_VALUES")
    keys = []
    for item in items:
        key = item.strip()
        if not key:
            continue
        descending = key.startswith("-")
        key = key.lstrip("-")
        param = searchparams.get(rtype, key)
        if key not in ("_id", "_lastUpdated") and (param is None or param.type not in _SORTABLE):
            raise _bad(name, f"cannot sort {rtype} by {key!r}", "not-supported")
        keys.append((key, descending))
    return keys


def _include(name: str, value: str) -> _Include:
    """`Source:param[:Target]`, `Source:*` or `*`, with :iterate (or R4's older :recurse)."""
    reverse = name.startswith("_revinclude")
    modifier = name.partition(":")[2]
    if modifier not in ("", "iterate", "recurse"):
        raise _bad(name, f"unknown modifier :{modifier}")
    iterate = bool(modifier)
    if value == "*":
        return _Include("*", None, None, reverse, iterate)
    parts = value.split(":")
    source = parts[0]
    if len(parts) not in (2, 3) or source not in SUPPORTED_TYPES:
        raise _bad(name, f"{value!r} is not Type:parameter[:TargetType] of a supported type")
    target = parts[2] if len(parts) == 3 else None
    if parts[1] == "*":
        return _Include(source, None, target, reverse, iterate)
    param = searchparams.get(source, parts[1])
    if param is None or param.type != "reference":
        raise _bad(name, f"{source} has no reference parameter {parts[1]!r}")
    return _Include(source, (parts[1],), target, reverse, iterate)


class _NoIndex(ColumnElement[Any]):
    """A column SQLite may not use an index for (`+col`, its documented hint).

    Sorting: with a selective filter (an `id IN (…)` from an index table, e.g. the compartment), walking
    ix_fhir_resources_type_updated in order and testing each row costs O(resources of the type)
    until a page is full; SQLite's planner, without statistics, prefers it because of LIMIT.
    Driving from the filter and sorting the matches costs O(matches), like the count does.
    Sort values: `max(high) … WHERE param = ? AND resource_id = ?` would be answered by walking
    the (param, high) index of every resource; hiding `param` leaves the owner index.
    PostgreSQL plans from statistics and gets the column unchanged.
    """

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]  # noqa: RUF012 - SQLAlchemy's protocol

    def __init__(self, column: Expr) -> None:
        self.column: ColumnElement[Any] = column.expression if isinstance(column, QueryableAttribute) else column
        self.type = self.column.type


@compiles(_NoIndex)
def _no_index_elsewhere(element: _NoIndex, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column, **kw)


@compiles(_NoIndex, "sqlite")
def _no_index_on_sqlite(element: _NoIndex, compiler: SQLCompiler, **kw: Any) -> str:
    return "+" + compiler.process(element.column, **kw)


def _order_by(rtype: str, keys: list[tuple[str, bool]], *, filtered: bool) -> list[Any]:
    """search.html#sort: a multi-valued parameter sorts by its lowest value ascending, highest
    descending; resources without a value come last; ties are broken by _id (stable paging).
    The default order is _lastUpdated, then _id."""

    def column(expr: Expr) -> Any:
        return _NoIndex(expr) if filtered else expr

    if not keys:
        return [column(ResourceRow.last_updated).asc(), column(ResourceRow.id).asc()]
    order: list[Any] = []
    for key, descending in keys:
        sort = _sort_column(rtype, key, descending)
        sort = column(sort) if key in ("_id", "_lastUpdated") else sort
        order.append(sort.desc().nulls_last() if descending else sort.asc().nulls_last())
    if not any(key == "_id" for key, _ in keys):
        order.append(column(ResourceRow.id).asc())
    return order


def _sort_column(rtype: str, key: str, descending: bool) -> Any:
    if key == "_id":
        return ResourceRow.id
    if key == "_lastUpdated":
        return ResourceRow.last_updated
    param = searchparams.get(rtype, key)
    if param is None:  # _sort_keys let only known parameters through
        raise _bad("_sort", f"cannot sort by {key!r}")
    table = _TABLES[param.type]
    column = {"token": "code", "string": "value", "uri": "value"}.get(param.type, "high" if descending else "low")
    aggregate = func.max if descending else func.min
    return (
        select(aggregate(getattr(table, column)))
        .where(
            table.resource_type == ResourceRow.resource_type,
            table.resource_id == ResourceRow.id,
            _NoIndex(table.param) == key,
        )
        .scalar_subquery()
    )


# --- search ---------------------------------------------------------------------------------


async def search(
    session: AsyncSession,
    rtype: str,
    params: list[tuple[str, str]],
    *,
    restriction: Restriction | None = None,
    base_url: str,
    page_size_default: int = 20,
    page_size_max: int = 200,
    offset: int = 0,
    limits: SearchLimits | None = None,
) -> SearchResult:
    """Search `rtype` (R4 search.html). Malformed parameters raise FhirError (400), and so does
    a search past `limits` (default: SearchLimits()); unknown or unsupported parameters are
    ignored and listed in `SearchResult.unknown`."""
    if rtype not in SUPPORTED_TYPES:
        raise FhirError([Issue(f"resource type {rtype!r} is not searchable", code="not-supported")])
    limits = limits or _DEFAULT_LIMITS
    await storage.flush_index(session)
    plan = _cached_plan(rtype, params, restriction, base_url, page_size_default, page_size_max, limits)
    controls, offset = plan.controls, max(offset, 0)
    counted = controls.total != "none" or controls.summary == "count"
    if controls.summary == "count" or controls.count == 0:
        total = int((await session.execute(plan.count())).scalar_one()) if counted else None
        return SearchResult([], [], total, list(plan.unknown), offset, controls.count)
    rows = (await session.execute(plan.page(offset, with_total=counted))).all()
    resources = [_loads(row[0]) for row in rows]
    total = None
    if counted:
        # The total rides along with the page (one round trip); past the end there is no row
        # to carry it, so it is counted on its own.
        total = (
            int(rows[0][1]) if rows else (0 if offset == 0 else int((await session.execute(plan.count())).scalar_one()))
        )
    included = await _included(session, plan.builder, resources, controls.includes)
    return SearchResult(
        _shape(resources, controls),
        _shape(included, controls, main=False),
        total,
        list(plan.unknown),
        offset,
        controls.count,
    )


def _by_id_statement(rtype: str, compartment: bool) -> Select[Any]:
    """`search(rtype, _id=rid)` under a compartment restriction, as one statement with bound
    parameters only: built once per shape, so SQLAlchemy compiles it once (its cache key is
    the same for every id and patient) and a read costs no statement building."""
    key = (rtype, compartment)
    stmt = _BY_ID.get(key)
    if stmt is not None:
        return stmt
    where: list[Cond] = [
        ResourceRow.resource_type == rtype,
        ResourceRow.id == bindparam("rid"),
        ResourceRow.deleted.is_(False),
    ]
    if compartment:
        members = select(REF.resource_id).where(
            REF.target_id.in_(bindparam("patients", expanding=True)),
            REF.target_type == "Patient",
            REF.resource_type == rtype,
            REF.param.in_(sorted(compartment_params(rtype) or ())),
        )
        cond: Cond = ResourceRow.id.in_(members)
        if rtype == "Patient":
            cond = or_(ResourceRow.id.in_(bindparam("own", expanding=True)), cond)
        where.append(cond)
    stmt = select(ResourceRow.content).where(*where).limit(1)
    _BY_ID[key] = stmt
    return stmt


_BY_ID: dict[tuple[str, bool], Select[Any]] = {}


async def find_by_id(
    session: AsyncSession, rtype: str, rid: str, *, restriction: Restriction, base_url: str
) -> dict[str, Any] | None:
    """The current `rtype/rid` if `restriction` lets the caller see it: exactly what
    `search(rtype, [("_id", rid)], restriction=…)` finds, through a prepared statement in the
    common case (a plain id, no granular scope filter on the type)."""
    if rtype not in SUPPORTED_TYPES:
        raise FhirError([Issue(f"resource type {rtype!r} is not searchable", code="not-supported")])
    if not _ID.match(rid):
        return None  # not a FHIR id (R4 datatypes.html#id): no resource has it
    if restriction.extra_filters or (restriction.allowed_patient_ids is not None and restriction.shows_own(rtype)):
        # The prepared statement knows only the compartment: the general search decides the rest.
        found = await search(
            session, rtype, [("_id", rid)], restriction=restriction, base_url=base_url, page_size_default=1
        )
        return found.resources[0] if found.resources else None
    if restriction.types is not None and rtype not in restriction.types:
        return None
    await storage.flush_index(session)
    patients = restriction.allowed_patient_ids
    params: dict[str, Any] = {"rid": rid}
    if patients is not None:
        if not patients or compartment_params(rtype) is None:
            return None  # compartment_condition: outside every compartment it may see
        params["patients"] = sorted(patients)
        if rtype == "Patient":
            params["own"] = sorted(patients)
    content = (await session.execute(_by_id_statement(rtype, patients is not None), params)).scalar_one_or_none()
    return None if content is None else _loads(content)


@dataclass
class _Plan:
    builder: _Builder
    controls: _Controls
    where: list[Cond]
    unknown: list[str]
    order: list[Any]

    statements: dict[tuple[int, bool] | None, Select[Any]] = field(default_factory=dict)

    def count(self) -> Select[Any]:
        stmt = self.statements.get(None)
        if stmt is None:
            stmt = self.statements[None] = select(func.count()).select_from(ResourceRow).where(*self.where)
        return stmt

    def page(self, offset: int, *, with_total: bool = False) -> Select[Any]:
        """The page's resources, and with `with_total` the number of all matches on every row
        (`count(*) OVER ()`, computed before LIMIT/OFFSET)."""
        stmt = self.statements.get((offset, with_total))
        if stmt is not None:
            return stmt
        columns: list[Any] = [ResourceRow.content]
        if with_total:
            columns.append(func.count().over())
        stmt = select(*columns).where(*self.where).order_by(*self.order).offset(offset).limit(self.controls.count)
        if len(self.statements) < _PAGES_KEPT:
            self.statements[(offset, with_total)] = stmt
        return stmt


# Built plans, by everything a plan is a pure function of (the query and the restriction). The
# same query for the same patient recurs (each hook's prefetch, paging, a chart's views): it then
# costs neither building the statement (~1 ms of SQLAlchemy constructs) nor its cache key.
PLANS_KEPT = 512
_PAGES_KEPT = 8
_PLANS: OrderedDict[tuple[Any, ...], _Plan] = OrderedDict()


def _restriction_key(r: Restriction | None) -> tuple[Any, ...] | None:
    if r is None:
        return None
    return (
        r.allowed_patient_ids,
        tuple(tuple(group) for group in r.extra_filters),
        r.types,
        tuple(sorted((t, tuple(tuple(g) for g in f)) for t, f in r.type_filters.items())),
        r.own_practitioner,
        r.own_types,
    )


def _cached_plan(
    rtype: str,
    params: list[tuple[str, str]],
    restriction: Restriction | None,
    base_url: str,
    default: int,
    maximum: int,
    limits: SearchLimits,
) -> _Plan:
    params_key = tuple((str(n), str(v)) for n, v in params)
    key = (rtype, params_key, _restriction_key(restriction), base_url, default, maximum, limits)
    plan = _PLANS.get(key)
    if plan is not None:
        _PLANS.move_to_end(key)
        return plan
    plan = _plan(rtype, params, restriction, base_url, default, maximum, limits)
    _PLANS[key] = plan
    if len(_PLANS) > PLANS_KEPT:
        _PLANS.popitem(last=False)
    return plan


def _plan(
    rtype: str,
    params: list[tuple[str, str]],
    restriction: Restriction | None,
    base_url: str,
    default: int,
    maximum: int,
    limits: SearchLimits = _DEFAULT_LIMITS,
) -> _Plan:
    controls, filters = _parse_controls(rtype, params, default, maximum, limits)
    builder = _Builder(rtype, restriction, base_url, limits)
    where, unknown = _where(builder, rtype, filters)
    filtered = len(where) > _BASE_CONDITIONS
    return _Plan(builder, controls, where, unknown, _order_by(rtype, controls.sort, filtered=filtered))


def statements(
    rtype: str,
    params: list[tuple[str, str]],
    *,
    restriction: Restriction | None = None,
    base_url: str,
    offset: int = 0,
) -> tuple[Select[Any], Select[Any]]:
    """The (count, page) SQL a search would run: for EXPLAIN in tests and benchmarks."""
    plan = _plan(rtype, params, restriction, base_url, 20, 200)
    return plan.count(), plan.page(offset, with_total=True)


_BASE_CONDITIONS = 2  # the type and "not deleted"


def _where(builder: _Builder, rtype: str, filters: list[tuple[str, str]]) -> tuple[list[Cond], list[str]]:
    cols = _cols(ResourceRow)
    where: list[Cond] = [ResourceRow.resource_type == rtype, ResourceRow.deleted.is_(False)]
    unknown: list[str] = []
    for name, value in filters:
        if name in _IGNORED:
            continue
        try:
            where.append(builder.condition(rtype, cols, name, value))
        except _Unknown:
            if name not in unknown:
                unknown.append(name)
    where.extend(builder.visible(rtype, cols))
    return _intersected(where), unknown


def _intersected(where: list[Cond]) -> list[Cond]:
    """Several `id IN (ids from an index table)` conditions as one `id IN (… INTERSECT …)`.

    As separate conditions, PostgreSQL joins them as semi-joins in an order chosen from its
    statistics; right after a bulk write those still say "1 row" for values that now match tens
    of thousands, and a nested-loop semi-join then costs matches × matches. An INTERSECT is
    computed by hashing or sorting both id lists whatever the estimates (linear), and its
    result then drives primary-key lookups. SQLite builds the same intersection in a temporary
    index. Negated conditions (:not, :missing=true) and column conditions stay as they are.
    """
    members = [c for c in where if _is_id_in_subquery(c)]
    if len(members) < 2:
        return where
    selects = [cast(ScalarSelect[Any], cast(BinaryExpression[bool], c).right).element for c in members]
    rest = [c for c in where if not any(c is m for m in members)]
    return [*rest, ResourceRow.id.in_(intersect(*selects))]


def _is_id_in_subquery(cond: Cond) -> bool:
    return (
        isinstance(cond, BinaryExpression)
        and cond.operator is operators.in_op
        and isinstance(cond.right, ScalarSelect)
        and isinstance(cond.left, ColumnElement)
        and cond.left.compare(ResourceRow.__table__.c.id)
    )


def _loads(content: str | None) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(content or "{}")
    return loaded


def _shape(resources: list[dict[str, Any]], controls: _Controls, *, main: bool = True) -> list[dict[str, Any]]:
    """_summary=data drops the narrative; _elements keeps the listed elements of the matches and
    marks them SUBSETTED (search.html#summary, #elements)."""
    out = []
    for resource in resources:
        shaped = resource
        if controls.summary == "data":
            shaped = {k: v for k, v in shaped.items() if k != "text"}
        if main and controls.elements is not None:
            keep = {"resourceType", "id", "meta", *controls.elements}
            shaped = {k: v for k, v in shaped.items() if k in keep}
            meta = dict(shaped.get("meta") or {})
            meta["tag"] = [*meta.get("tag", []), _SUBSETTED]
            shaped["meta"] = meta
        out.append(shaped)
    return out


# --- _include / _revinclude (search.html#include, #revinclude) -------------------------------


async def _included(
    session: AsyncSession, builder: _Builder, matches: list[dict[str, Any]], specs: list[_Include]
) -> list[dict[str, Any]]:
    """Resources the page's matches reference (or that reference them), restricted like the
    matches; :iterate specs follow links from included resources, MAX_INCLUDE_LEVELS deep."""
    if not specs or not matches:
        return []
    seen = {(r["resourceType"], r["id"]) for r in matches}
    frontier, out = sorted(seen), []
    for level in range(MAX_INCLUDE_LEVELS):
        active = [s for s in specs if level == 0 or s.iterate]
        keys = {key for spec in active for key in await _linked(session, spec, frontier)} - seen
        if not keys:
            break
        found = await _fetch_visible(session, builder, keys)
        seen.update((r["resourceType"], r["id"]) for r in found)
        out.extend(found)
        frontier = sorted((r["resourceType"], r["id"]) for r in found)
    return out


async def _linked(session: AsyncSession, spec: _Include, sources: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """(type, id) of resources linked to `sources` by one include spec."""
    out: set[tuple[str, str]] = set()
    by_type: dict[str, list[str]] = {}
    for rtype, rid in sources:
        by_type.setdefault(rtype, []).append(rid)
    for rtype, ids in by_type.items():
        if spec.reverse and spec.target is not None and spec.target != rtype:
            continue
        stmt: Any  # two column pairs of different nullability
        if spec.reverse:
            stmt = select(REF.resource_type, REF.resource_id).where(REF.target_id.in_(ids), REF.target_type == rtype)
            if spec.source != "*":
                stmt = stmt.where(REF.resource_type == spec.source)
        else:
            if spec.source not in (rtype, "*"):
                continue
            stmt = select(REF.target_type, REF.target_id).where(
                REF.resource_type == rtype, REF.resource_id.in_(ids), REF.target_type.is_not(None)
            )
            if spec.target is not None:
                stmt = stmt.where(REF.target_type == spec.target)
        if spec.codes is not None:
            stmt = stmt.where(REF.param.in_(spec.codes))
        out.update((t, i) for t, i in (await session.execute(stmt.distinct())).all() if t and i)
    return out


async def _fetch_visible(session: AsyncSession, builder: _Builder, keys: set[tuple[str, str]]) -> list[dict[str, Any]]:
    by_type: dict[str, list[str]] = {}
    for rtype, rid in keys:
        if rtype in SUPPORTED_TYPES:
            by_type.setdefault(rtype, []).append(rid)
    out: list[dict[str, Any]] = []
    cols = _cols(ResourceRow)
    for rtype in sorted(by_type):
        stmt = (
            select(ResourceRow.content)
            .where(
                ResourceRow.resource_type == rtype,
                ResourceRow.id.in_(sorted(by_type[rtype])),
                ResourceRow.deleted.is_(False),
                *builder.visible(rtype, cols),
            )
            .order_by(ResourceRow.id)
        )
        out.extend(_loads(c) for c in (await session.execute(stmt)).scalars())
    return out
