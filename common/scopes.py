"""SMART on FHIR scopes: parse, compare and narrow them (SMART App Launch 2.2, "Scopes and Launch Context").

Implements hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html (STU 2.2):

- "Scopes for requesting FHIR Resources" / "Clinical Scope Syntax": ``patient|user|system`` ``/``
  ``<FHIR resource type>|*`` ``.`` ``<permissions>``, the permissions a non-empty subset of
  ``c r u d s`` written in that order (``.rs`` yes, ``.sr`` and ``.rr`` no).
- "Finer-grained resource constraints using search parameters": an optional ``?param=value``
  (several joined with ``&``) restricts a v2 scope to the resources that search would match.
  The pairs of one scope are ANDed, as in any FHIR search, so more pairs means less access.
- "Wildcard scopes": ``*`` in place of the resource type.
- "SMART 1.0 backwards compatibility": v1 suffixes ``read`` (= ``rs``), ``write`` (= ``cud``) and
  ``*`` (= ``cruds``); a request may mix v1 and v2. Granular parameters exist only in v2.
- "Scope Equivalence": scopes compound, so ``.rs`` grants what ``.r`` and ``.s`` grant together;
  a request is authorised when ANY granted scope permits it.
- "Patient-specific scopes": a granted ``patient/`` scope establishes a patient in context.
- "Scopes for requesting context data" / "identity data" / "a refresh token": ``launch``,
  ``launch/patient``, ``launch/encounter``, ``openid``, ``fhirUser``, ``profile``,
  ``offline_access``, ``online_access`` and any other well-formed token (RFC 6749 §3.3) are kept
  verbatim in ``ScopeSet.other``.

The module is pure: no I/O, no clock, no service imports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import quote, unquote

__all__ = [
    "CONTEXTS",
    "CRUDS",
    "Context",
    "InvalidScopeError",
    "ResourceScope",
    "ScopeSet",
    "narrow",
    "parse_scopes",
    "v1_to_v2",
]

Context = Literal["patient", "user", "system"]

CONTEXTS: Final[tuple[Context, ...]] = ("patient", "user", "system")
"""The three resource-scope contexts ("Clinical Scope Syntax")."""

CRUDS: Final = "cruds"
"""The permission letters in their one legal order ("Clinical Scope Syntax")."""

_ALL_PERMISSIONS: Final = frozenset(CRUDS)

_V1_SUFFIXES: Final[dict[str, frozenset[str]]] = {
    "read": frozenset("rs"),
    "write": frozenset("cud"),
    "*": _ALL_PERMISSIONS,
}
"""SMART 2.2 "SMART 1.0 backwards compatibility": read→rs, write→cud, *→cruds."""

_V1_BY_PERMISSIONS: Final[dict[frozenset[str], str]] = {perms: suffix for suffix, perms in _V1_SUFFIXES.items()}

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN: Final = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# A FHIR resource type name: letters only, starting uppercase (FHIR R4 §2.1.0 / resourcelist).
_RESOURCE_TYPE: Final = re.compile(r"[A-Z][A-Za-z]{0,63}")
# A FHIR search parameter name, optionally with a modifier or chain (e.g. "code:in", "_tag").
_PARAM_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.:]{0,127}")
# A token that looks like an attempt at a resource scope although its context is wrong
# (e.g. "patients/Observation.r", "Patient/*.read"): letters, "/", then a "." before any "?".
_RESOURCE_LIKE: Final = re.compile(r"[A-Za-z]+/[^?]*\.")
_BAD_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
# Characters left readable when a granular value is written back (the spec's own examples write
# "http://terminology.hl7.org/CodeSystem/observation-category|laboratory" unencoded).
_VALUE_SAFE: Final = ":/|,"
_NAME_SAFE: Final = ":."


class InvalidScopeError(ValueError):
    """A scope string is malformed; OAuth error code ``invalid_scope`` (RFC 6749 §4.1.2.1, §5.2).

    The message names the offending scope (truncated); scopes are not secrets.
    """

    error: str = "invalid_scope"

    def __init__(self, message: str, scope: str = "") -> None:
        super().__init__(message)
        self.scope = scope


def _fail(scope: str, why: str) -> InvalidScopeError:
    shown = scope if len(scope) <= 120 else scope[:117] + "..."
    return InvalidScopeError(f"invalid scope {shown!r}: {why}", scope)


def v1_to_v2(perm: str) -> frozenset[str]:
    """Map a SMART v1 permission suffix to v2 letters ("SMART 1.0 backwards compatibility").

    ``read`` → {r, s}, ``write`` → {c, u, d}, ``*`` → {c, r, u, d, s}; anything else raises
    InvalidScopeError.
    """
    try:
        return _V1_SUFFIXES[perm]
    except KeyError:
        raise _fail(perm, "a v1 permission is read, write or *") from None


def _cruds_order(permissions: frozenset[str]) -> str:
    return "".join(letter for letter in CRUDS if letter in permissions)


def _encode(text: str, safe: str) -> str:
    return quote(text, safe=safe)


@dataclass(frozen=True)
class ResourceScope:
    """One resource scope ("Scopes for requesting FHIR Resources", SMART App Launch 2.2).

    ``permissions`` is a non-empty subset of {c, r, u, d, s} (v1 suffixes are stored expanded);
    ``params`` holds the decoded granular ``?name=value`` pairs ("Finer-grained resource
    constraints using search parameters"), sorted and deduplicated, ANDed together;
    ``version`` records whether the scope was written in v1 or v2 syntax. Construction validates
    every field and raises InvalidScopeError, so a malformed scope cannot exist.
    """

    context: Context
    resource_type: str
    permissions: frozenset[str]
    params: tuple[tuple[str, str], ...] = ()
    version: Literal[1, 2] = 2

    def __post_init__(self) -> None:
        label = f"{self.context}/{self.resource_type}"
        if self.context not in CONTEXTS:
            raise _fail(label, "the context is patient, user or system")
        if self.resource_type != "*" and not _RESOURCE_TYPE.fullmatch(self.resource_type):
            raise _fail(label, "the resource type is a FHIR resource type name or *")
        permissions = frozenset(self.permissions)
        if not permissions:
            raise _fail(label, "at least one permission is required")
        if not permissions <= _ALL_PERMISSIONS:
            raise _fail(label, "permissions are letters among c, r, u, d, s")
        params = tuple(sorted(set(self.params)))
        for name, value in params:
            if not _PARAM_NAME.fullmatch(name):
                raise _fail(label, f"bad search parameter name {name!r}")
            if not value or _CONTROL.search(value):
                raise _fail(label, f"bad value for search parameter {name!r}")
        if self.version not in (1, 2):
            raise _fail(label, "version is 1 or 2")
        if self.version == 1 and params:
            raise _fail(label, "granular ?param=value constraints need v2 syntax")
        object.__setattr__(self, "permissions", permissions)
        object.__setattr__(self, "params", params)

    def to_v2(self) -> str:
        """The canonical v2 string ("Clinical Scope Syntax"): letters in cruds order, params encoded.

        E.g. ``patient/Observation.rs?category=laboratory``; ``parse_scopes(s.to_v2())`` gives
        back an equal scope (with version 2).
        """
        text = f"{self.context}/{self.resource_type}.{_cruds_order(self.permissions)}"
        if self.params:
            text += "?" + "&".join(
                f"{_encode(name, _NAME_SAFE)}={_encode(value, _VALUE_SAFE)}" for name, value in self.params
            )
        return text

    def __str__(self) -> str:
        """The scope as its holder wrote it: v1 syntax when written so and still expressible, else v2."""
        if self.version == 1 and not self.params and self.permissions in _V1_BY_PERMISSIONS:
            return f"{self.context}/{self.resource_type}.{_V1_BY_PERMISSIONS[self.permissions]}"
        return self.to_v2()

    def allows(self, context: Context, resource_type: str, permission: str) -> bool:
        """Whether this scope grants ``permission`` on ``resource_type`` in ``context``, ignoring params.

        A ``*`` scope covers every type ("Wildcard scopes"); asking about ``*`` itself is only
        answered yes by a wildcard scope. Contexts never substitute for one another.
        """
        if permission not in _ALL_PERMISSIONS:
            raise ValueError(f"permission must be one of c, r, u, d, s, not {permission!r}")
        return self.context == context and self.resource_type in ("*", resource_type) and permission in self.permissions


@dataclass(frozen=True)
class ScopeSet:
    """A parsed ``scope`` parameter: resource scopes plus every other scope token.

    ``resources`` keeps the order given, deduplicated on meaning (context, type, permissions,
    params). ``other`` holds launch, identity, refresh and unknown tokens verbatim
    ("Scopes for requesting context data", "identity data", "a refresh token").
    ``other_order`` only fixes the order ``str()`` writes ``other`` in; it takes no part in
    equality.
    """

    resources: tuple[ResourceScope, ...] = ()
    other: frozenset[str] = frozenset()
    other_order: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __str__(self) -> str:
        """Space-separated (RFC 6749 §3.3): resource scopes as written, then other scopes, as given."""
        parts: list[str] = []
        seen: set[str] = set()
        for scope in self.resources:
            text = str(scope)
            if text not in seen:
                seen.add(text)
                parts.append(text)
        ordered = [token for token in self.other_order if token in self.other]
        ordered += sorted(self.other.difference(ordered))
        for token in ordered:
            if token not in seen:
                seen.add(token)
                parts.append(token)
        return " ".join(parts)

    def has_context(self, context: Context) -> bool:
        """Whether any resource scope is in ``context``.

        ``has_context("patient")`` means a patient must be in context: SMART 2.2 "Patient-specific
        scopes" — a granted patient/ scope requires the ``patient`` launch context parameter.
        """
        return any(scope.context == context for scope in self.resources)

    def permits(self, context: Context, resource_type: str, permission: str) -> list[ResourceScope]:
        """The scopes granting ``permission`` on ``resource_type`` in ``context`` (empty = denied).

        SMART 2.2 "Scope Equivalence": any one scope suffices. When a returned scope has params the
        caller must apply them as a filter; results of several scopes are ORed, and if any returned
        scope has no params the access is unrestricted by scope.
        """
        return [scope for scope in self.resources if scope.allows(context, resource_type, permission)]


def _decode(part: str, whole: str) -> str:
    if _BAD_PERCENT.search(part):
        raise _fail(whole, "bad percent-encoding")
    try:
        return unquote(part, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise _fail(whole, "percent-encoding is not UTF-8") from None


def _parse_params(query: str, whole: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for item in query.split("&"):
        name, sep, value = item.partition("=")
        if not sep:
            raise _fail(whole, "granular constraints are ?name=value pairs")
        name = _decode(name, whole)
        value = _decode(value, whole)
        if not name:
            raise _fail(whole, "empty search parameter name")
        if not _PARAM_NAME.fullmatch(name):
            raise _fail(whole, f"bad search parameter name {name!r}")
        if not value:
            raise _fail(whole, f"empty value for search parameter {name!r}")
        if _CONTROL.search(value):
            raise _fail(whole, f"control character in the value of {name!r}")
        pairs.append((name, value))
    return tuple(sorted(set(pairs)))


def _parse_permissions(suffix: str, whole: str) -> tuple[frozenset[str], Literal[1, 2]]:
    if suffix in _V1_SUFFIXES:
        return _V1_SUFFIXES[suffix], 1
    if not suffix:
        raise _fail(whole, "no permissions after '.'")
    if any(letter not in _ALL_PERMISSIONS for letter in suffix):
        raise _fail(whole, "permissions are v1 read|write|* or v2 letters among c, r, u, d, s")
    if len(set(suffix)) != len(suffix):
        raise _fail(whole, "a permission letter is repeated")
    if suffix != _cruds_order(frozenset(suffix)):
        raise _fail(whole, "v2 permission letters are written in the order c, r, u, d, s")
    return frozenset(suffix), 2


def _parse_resource_scope(token: str) -> ResourceScope:
    base, has_query, query = token.partition("?")
    context, slash, rest = base.partition("/")
    if not slash or context not in CONTEXTS:
        raise _fail(token, "the context is patient, user or system")
    resource_type, dot, suffix = rest.partition(".")
    if not dot:
        raise _fail(token, "a resource scope ends in .<permissions>")
    if resource_type != "*" and not _RESOURCE_TYPE.fullmatch(resource_type):
        raise _fail(token, "the resource type is a FHIR resource type name (e.g. Observation) or *")
    permissions, version = _parse_permissions(suffix, token)
    params: tuple[tuple[str, str], ...] = ()
    if has_query:
        if version == 1:
            raise _fail(token, "granular ?param=value constraints need v2 syntax (e.g. .rs, not .read)")
        params = _parse_params(query, token)
    return ResourceScope(context, resource_type, permissions, params, version)


def _is_resource_like(token: str) -> bool:
    context = token.partition("/")[0]
    return context in CONTEXTS or bool(_RESOURCE_LIKE.match(token))


def _scope_key(scope: ResourceScope) -> tuple[str, str, frozenset[str], tuple[tuple[str, str], ...]]:
    return (scope.context, scope.resource_type, scope.permissions, scope.params)


def _dedupe(scopes: list[ResourceScope]) -> tuple[ResourceScope, ...]:
    seen: set[tuple[str, str, frozenset[str], tuple[tuple[str, str], ...]]] = set()
    kept: list[ResourceScope] = []
    for scope in scopes:
        key = _scope_key(scope)
        if key not in seen:
            seen.add(key)
            kept.append(scope)
    return tuple(kept)


def parse_scopes(scope: str) -> ScopeSet:
    """Parse a space-separated ``scope`` parameter (RFC 6749 §3.3; SMART App Launch 2.2 scopes).

    Tokens whose context is patient/user/system, or which look like a resource scope
    (``word/...`` with a ``.`` before any ``?``), must be valid v1 or v2 resource scopes; v1 and
    v2 may be mixed. Any other token that is a well-formed RFC 6749 scope-token goes to
    ``other``. Granular values are percent-decoded. Raises InvalidScopeError on anything
    malformed.
    """
    resources: list[ResourceScope] = []
    other_order: list[str] = []
    for token in scope.split(" "):
        if not token:
            continue
        if not _SCOPE_TOKEN.fullmatch(token):
            raise _fail(token, "characters outside the RFC 6749 scope-token set")
        if _is_resource_like(token):
            resources.append(_parse_resource_scope(token))
        elif token not in other_order:
            other_order.append(token)
    return ScopeSet(_dedupe(resources), frozenset(other_order), tuple(other_order))


def _narrow_params(
    requested: tuple[tuple[str, str], ...], allowed: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...] | None:
    """The constraint of both scopes, or None when neither constraint contains the other."""
    want, have = set(requested), set(allowed)
    if have <= want:
        return requested
    if want <= have:
        return allowed
    return None


def _narrow_one(requested: ResourceScope, allowed: ResourceScope) -> ResourceScope | None:
    if requested.context != allowed.context:
        return None
    if requested.resource_type == "*":
        resource_type = allowed.resource_type
    elif allowed.resource_type in ("*", requested.resource_type):
        resource_type = requested.resource_type
    else:
        return None
    permissions = requested.permissions & allowed.permissions
    if not permissions:
        return None
    params = _narrow_params(requested.params, allowed.params)
    if params is None:
        return None
    version: Literal[1, 2] = 1 if requested.version == 1 and not params and permissions in _V1_BY_PERMISSIONS else 2
    return ResourceScope(requested.context, resource_type, permissions, params, version)


def narrow(requested: ScopeSet, allowed: ScopeSet) -> ScopeSet:
    """``requested`` ∩ ``allowed``, permission by permission (SMART 2.2 "Scope Equivalence").

    Each requested scope is intersected with each allowed scope of the same context (contexts
    never cross): the type is the narrower of the two (``*`` yields to a named type), the
    permissions are the common letters, and the granular params are the more specific of the two
    when one set contains the other; when neither does the pair grants nothing (conservative: the
    result never grants what either side does not). ``other`` scopes survive only if allowed.
    Results keep the requested order and the requested syntax (v1) when still expressible.
    """
    scopes: list[ResourceScope] = []
    for wanted in requested.resources:
        for granted in allowed.resources:
            narrowed = _narrow_one(wanted, granted)
            if narrowed is not None:
                scopes.append(narrowed)
    order = requested.other_order or tuple(sorted(requested.other))
    other = requested.other & allowed.other
    return ScopeSet(_dedupe(scopes), other, tuple(token for token in order if token in other))
