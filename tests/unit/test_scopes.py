"""common.scopes: SMART App Launch 2.2 scope parsing, permission checks and narrowing that never widens."""

from __future__ import annotations

import itertools

import pytest

from common.scopes import (
    Context,
    InvalidScopeError,
    ResourceScope,
    ScopeSet,
    narrow,
    parse_scopes,
    v1_to_v2,
)

CRUDS = "cruds"


def only(scope: str) -> ResourceScope:
    parsed = parse_scopes(scope)
    assert len(parsed.resources) == 1, parsed
    assert parsed.other == frozenset()
    return parsed.resources[0]


# --- parsing valid forms -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "context", "resource_type", "permissions", "version"),
    [
        ("patient/Observation.read", "patient", "Observation", "rs", 1),
        ("patient/Observation.write", "patient", "Observation", "cud", 1),
        ("patient/Observation.*", "patient", "Observation", "cruds", 1),
        ("user/*.read", "user", "*", "rs", 1),
        ("system/*.*", "system", "*", "cruds", 1),
        ("patient/Observation.c", "patient", "Observation", "c", 2),
        ("patient/Observation.r", "patient", "Observation", "r", 2),
        ("patient/Observation.u", "patient", "Observation", "u", 2),
        ("patient/Observation.d", "patient", "Observation", "d", 2),
        ("patient/Observation.s", "patient", "Observation", "s", 2),
        ("patient/Observation.rs", "patient", "Observation", "rs", 2),
        ("user/Condition.cu", "user", "Condition", "cu", 2),
        ("user/MedicationRequest.cud", "user", "MedicationRequest", "cud", 2),
        ("system/Patient.rds", "system", "Patient", "rds", 2),
        ("user/*.cruds", "user", "*", "cruds", 2),
        ("patient/*.rs", "patient", "*", "rs", 2),
    ],
)
def test_every_valid_v1_and_v2_resource_scope_parses_to_its_permissions(
    scope: str, context: str, resource_type: str, permissions: str, version: int
) -> None:
    parsed = only(scope)

    assert parsed.context == context
    assert parsed.resource_type == resource_type
    assert parsed.permissions == frozenset(permissions)
    assert parsed.params == ()
    assert parsed.version == version


@pytest.mark.parametrize("letters", ["".join(c) for n in range(1, 6) for c in itertools.combinations(CRUDS, n)])
def test_every_in_order_combination_of_cruds_letters_is_a_valid_v2_scope(letters: str) -> None:
    parsed = only(f"user/Observation.{letters}")

    assert parsed.permissions == frozenset(letters)
    assert parsed.version == 2
    assert parsed.to_v2() == f"user/Observation.{letters}"


def test_a_granular_scope_with_one_parameter_keeps_the_pair() -> None:
    parsed = only("patient/Observation.rs?category=laboratory")

    assert parsed.params == (("category", "laboratory"),)
    assert parsed.permissions == frozenset("rs")


def test_a_granular_scope_with_two_parameters_keeps_both_pairs_sorted() -> None:
    parsed = only("patient/Observation.rs?status=final&category=vital-signs")

    assert parsed.params == (("category", "vital-signs"), ("status", "final"))


def test_url_encoded_granular_values_are_decoded() -> None:
    parsed = only("patient/Observation.rs?code=http%3A%2F%2Floinc.org%7C4548-4")

    assert parsed.params == (("code", "http://loinc.org|4548-4"),)


def test_the_spec_example_with_an_unencoded_system_and_pipe_parses() -> None:
    parsed = only(
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
    )

    assert parsed.params == (("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),)


def test_an_encoded_ampersand_or_equals_sign_stays_inside_the_value() -> None:
    parsed = only("patient/Observation.rs?code=a%26b%3Dc")

    assert parsed.params == (("code", "a&b=c"),)
    assert parse_scopes(parsed.to_v2()).resources == (parsed,)


def test_a_modifier_in_a_parameter_name_is_accepted() -> None:
    assert only("patient/Condition.rs?code:in=http%3A%2F%2Fexample.org%2Fvs").params == (
        ("code:in", "http://example.org/vs"),
    )


def test_v1_and_v2_scopes_and_other_scopes_mix_in_one_request() -> None:
    parsed = parse_scopes("openid fhirUser launch/patient patient/Patient.read patient/Observation.rs offline_access")

    assert [s.to_v2() for s in parsed.resources] == ["patient/Patient.rs", "patient/Observation.rs"]
    assert [s.version for s in parsed.resources] == [1, 2]
    assert parsed.other == {"openid", "fhirUser", "launch/patient", "offline_access"}


@pytest.mark.parametrize(
    "token",
    [
        "openid",
        "fhirUser",
        "profile",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
        "launch/Patient?role=http://example.org/role",
        "https://example.org/custom",
        "x-vendor:thing",
    ],
)
def test_non_resource_scopes_including_unknown_ones_are_kept_verbatim_in_other(token: str) -> None:
    parsed = parse_scopes(token)

    assert parsed.resources == ()
    assert parsed.other == {token}
    assert str(parsed) == token


def test_an_empty_scope_string_is_an_empty_set() -> None:
    assert parse_scopes("") == ScopeSet()
    assert parse_scopes("   ") == ScopeSet()
    assert str(parse_scopes("")) == ""


def test_repeated_spaces_are_tolerated_and_duplicates_removed_keeping_the_first_order() -> None:
    parsed = parse_scopes(
        "openid  patient/Observation.rs launch openid patient/Observation.rs patient/Observation.read"
    )

    assert str(parsed) == "patient/Observation.rs openid launch"


# --- malformed forms ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scope",
    [
        "patient/Observation.sr",  # out of cruds order
        "patient/Observation.rr",  # repeated letter
        "patient/Observation.rsr",
        "patient/Observation.dc",
        "patient/Observation.",  # no permissions
        "patient/Observation",  # no suffix at all
        "patient/",
        "patient/.rs",  # no type
        "patients/Observation.r",  # bad context
        "Patient/Observation.rs",
        "users/*.read",
        "patient/observation.r",  # type must start uppercase
        "patient/Obs3rvation.r",
        "patient/Observation-X.r",
        "patient/**.rs",
        "patient/Observation.x",  # bad letter
        "patient/Observation.rx",
        "patient/Observation.R",
        "patient/Observation.READ",  # v1 suffix other than read|write|*
        "patient/Observation.reads",
        "patient/Observation.all",
        "patient/Observation.rs.rs",
        "patient/Observation.read?category=x",  # params on v1
        "patient/Observation.*?category=x",
        "patient/Observation.rs?=x",  # empty param name
        "patient/Observation.rs?category=",  # empty value
        "patient/Observation.rs?category",  # no '='
        "patient/Observation.rs?",  # empty query
        "patient/Observation.rs?category=a&",  # trailing empty pair
        "patient/Observation.rs?category=a&&status=final",
        "patient/Observation.rs?category=%zz",  # bad percent-encoding
        "patient/Observation.rs?category=%",
        "patient/Observation.rs?category=%FF",  # not UTF-8
        "patient/Observation.rs?category=a%0Ab",  # control character once decoded
        "patient/Observation.rs?cat%20egory=a",  # bad name once decoded
        "patient/Observation.rs?=",
    ],
)
def test_a_malformed_resource_scope_is_refused_with_invalid_scope(scope: str) -> None:
    with pytest.raises(InvalidScopeError) as raised:
        parse_scopes(f"openid {scope} launch")

    assert raised.value.error == "invalid_scope"
    assert isinstance(raised.value, ValueError)
    assert raised.value.scope == scope


@pytest.mark.parametrize("scope", ['open"id', "back\\slash", "caf\u00e9", "tab\tinside"])
def test_a_token_outside_the_rfc_6749_character_set_is_refused(scope: str) -> None:
    with pytest.raises(InvalidScopeError):
        parse_scopes(scope)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"context": "patients", "resource_type": "Observation", "permissions": frozenset("r")},
        {"context": "patient", "resource_type": "observation", "permissions": frozenset("r")},
        {"context": "patient", "resource_type": "Observation", "permissions": frozenset()},
        {"context": "patient", "resource_type": "Observation", "permissions": frozenset("rx")},
        {"context": "patient", "resource_type": "Observation", "permissions": frozenset("r"), "params": (("", "x"),)},
        {"context": "patient", "resource_type": "Observation", "permissions": frozenset("r"), "params": (("a", ""),)},
        {
            "context": "patient",
            "resource_type": "Observation",
            "permissions": frozenset("rs"),
            "params": (("a", "b"),),
            "version": 1,
        },
    ],
)
def test_a_resource_scope_cannot_be_constructed_malformed(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidScopeError):
        ResourceScope(**kwargs)  # type: ignore[arg-type]


def test_v1_suffixes_map_to_v2_letters() -> None:
    assert v1_to_v2("read") == {"r", "s"}
    assert v1_to_v2("write") == {"c", "u", "d"}
    assert v1_to_v2("*") == set(CRUDS)
    with pytest.raises(InvalidScopeError):
        v1_to_v2("rs")


# --- rendering ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "v2"),
    [
        ("patient/Observation.read", "patient/Observation.rs"),
        ("patient/Observation.write", "patient/Observation.cud"),
        ("user/*.*", "user/*.cruds"),
        ("system/Patient.rs", "system/Patient.rs"),
        ("patient/Observation.rs?category=laboratory", "patient/Observation.rs?category=laboratory"),
        (
            "patient/Observation.rs?status=final&category=laboratory",
            "patient/Observation.rs?category=laboratory&status=final",
        ),
        (
            "patient/Observation.rs?code=http%3A%2F%2Floinc.org%7C4548-4",
            "patient/Observation.rs?code=http://loinc.org|4548-4",
        ),
        ("patient/Observation.rs?code=a%20b", "patient/Observation.rs?code=a%20b"),
    ],
)
def test_to_v2_writes_the_canonical_form_and_round_trips(scope: str, v2: str) -> None:
    parsed = only(scope)

    assert parsed.to_v2() == v2
    again = only(v2)
    assert again.to_v2() == v2
    assert (again.context, again.resource_type, again.permissions, again.params) == (
        parsed.context,
        parsed.resource_type,
        parsed.permissions,
        parsed.params,
    )


def test_str_keeps_v1_syntax_for_scopes_written_in_v1() -> None:
    assert str(parse_scopes("patient/Observation.read user/*.* launch")) == "patient/Observation.read user/*.* launch"


# --- permits / has_context ---------------------------------------------------------------------


def test_a_patient_scope_establishes_a_patient_context() -> None:
    granted = parse_scopes("patient/Observation.rs openid")

    assert granted.has_context("patient")
    assert not granted.has_context("user")
    assert not granted.has_context("system")
    assert not parse_scopes("launch/patient user/*.rs").has_context("patient")


def test_permits_matches_type_permission_and_context() -> None:
    granted = parse_scopes("patient/Observation.rs user/Patient.read")

    assert granted.permits("patient", "Observation", "r") == [granted.resources[0]]
    assert granted.permits("patient", "Observation", "s") == [granted.resources[0]]
    assert granted.permits("patient", "Observation", "c") == []
    assert granted.permits("patient", "Condition", "r") == []
    assert granted.permits("user", "Observation", "r") == []
    assert granted.permits("patient", "Patient", "r") == []
    assert granted.permits("user", "Patient", "s") == [granted.resources[1]]
    assert granted.permits("system", "Patient", "r") == []


def test_a_wildcard_scope_permits_every_type_but_a_named_scope_does_not_permit_the_wildcard() -> None:
    granted = parse_scopes("user/*.r patient/Observation.rs")

    assert granted.permits("user", "Encounter", "r") == [granted.resources[0]]
    assert granted.permits("user", "*", "r") == [granted.resources[0]]
    assert granted.permits("patient", "*", "r") == []
    assert granted.permits("user", "Encounter", "s") == []


def test_permits_returns_every_matching_scope_including_granular_ones_for_the_caller_to_filter() -> None:
    granted = parse_scopes(
        "patient/Observation.rs?category=laboratory patient/Observation.rs?category=vital-signs patient/Condition.rs"
    )

    matching = granted.permits("patient", "Observation", "s")
    assert [dict(s.params) for s in matching] == [{"category": "laboratory"}, {"category": "vital-signs"}]
    assert granted.permits("patient", "Observation", "c") == []


def test_a_scope_without_params_next_to_a_granular_one_shows_the_access_is_unrestricted() -> None:
    granted = parse_scopes("patient/Observation.rs?category=laboratory patient/*.r")

    matching = granted.permits("patient", "Observation", "r")
    assert any(not scope.params for scope in matching)
    assert all(scope.params for scope in granted.permits("patient", "Observation", "s"))


def test_permits_rejects_an_unknown_permission_letter() -> None:
    with pytest.raises(ValueError, match="permission"):
        parse_scopes("patient/*.cruds").permits("patient", "Observation", "x")


# --- narrow: examples --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "allowed", "expected"),
    [
        ("patient/*.cruds", "patient/Observation.rs", "patient/Observation.rs"),
        ("user/Observation.rs", "user/*.r", "user/Observation.r"),
        ("patient/Observation.read", "patient/*.cruds", "patient/Observation.read"),
        ("patient/Observation.read", "patient/Observation.r", "patient/Observation.r"),
        ("patient/Observation.*", "patient/Observation.write", "patient/Observation.write"),
        (
            "patient/*.read",
            "patient/Observation.rs patient/Condition.r",
            "patient/Observation.read patient/Condition.r",
        ),
        ("patient/*.rs", "patient/*.rs", "patient/*.rs"),
        ("patient/*.rs", "patient/*.cud", ""),
        ("patient/Observation.rs", "patient/Condition.rs", ""),
        ("patient/Observation.rs", "user/Observation.rs", ""),
        ("user/Observation.rs", "patient/*.cruds", ""),
        ("system/*.rs", "user/*.rs", ""),
        # granular
        (
            "patient/Observation.rs?category=laboratory",
            "patient/Observation.rs",
            "patient/Observation.rs?category=laboratory",
        ),
        (
            "patient/Observation.rs",
            "patient/Observation.rs?category=laboratory",
            "patient/Observation.rs?category=laboratory",
        ),
        ("patient/*.cruds", "patient/Observation.r?category=laboratory", "patient/Observation.r?category=laboratory"),
        (
            "patient/Observation.rs?category=laboratory",
            "patient/Observation.rs?category=laboratory&status=final",
            "patient/Observation.rs?category=laboratory&status=final",
        ),
        (
            "patient/Observation.rs?category=laboratory&status=final",
            "patient/Observation.r?category=laboratory",
            "patient/Observation.r?category=laboratory&status=final",
        ),
        ("patient/Observation.rs?category=laboratory", "patient/Observation.rs?category=vital-signs", ""),
        ("patient/Observation.rs?category=laboratory", "patient/Observation.rs?status=final", ""),
        (
            "patient/Observation.read",
            "patient/Observation.rs?category=laboratory",
            "patient/Observation.rs?category=laboratory",
        ),
        # other scopes
        ("openid fhirUser launch offline_access", "openid launch", "openid launch"),
        ("openid patient/*.rs", "patient/Patient.r", "patient/Patient.r"),
        ("launch/patient patient/Patient.rs", "launch/patient patient/*.rs", "patient/Patient.rs launch/patient"),
    ],
)
def test_narrow_intersects_permission_by_permission(requested: str, allowed: str, expected: str) -> None:
    result = narrow(parse_scopes(requested), parse_scopes(allowed))

    assert str(result) == expected
    assert _same_grants(result, parse_scopes(expected))


def _same_grants(a: ScopeSet, b: ScopeSet) -> bool:
    return {s.to_v2() for s in a.resources} == {s.to_v2() for s in b.resources} and a.other == b.other


def test_narrowing_to_what_is_already_allowed_changes_nothing() -> None:
    requested = parse_scopes("openid fhirUser launch patient/Patient.read patient/Observation.rs?category=laboratory")
    allowed = parse_scopes("openid fhirUser launch offline_access patient/*.read user/*.cruds")

    assert narrow(requested, allowed) == requested
    assert str(narrow(requested, allowed)) == str(requested)


def test_narrow_keeps_the_requested_order_and_removes_duplicates() -> None:
    requested = parse_scopes("patient/Observation.rs patient/*.rs launch openid")
    allowed = parse_scopes("openid launch patient/Observation.rs")

    assert str(narrow(requested, allowed)) == "patient/Observation.rs launch openid"


def test_an_empty_allowance_grants_nothing() -> None:
    result = narrow(parse_scopes("patient/*.cruds user/*.cruds system/*.cruds openid launch"), ScopeSet())

    assert result == ScopeSet()
    assert str(result) == ""


def test_an_empty_request_gets_nothing() -> None:
    assert narrow(ScopeSet(), parse_scopes("patient/*.cruds openid")) == ScopeSet()


def test_a_patient_scope_does_not_satisfy_a_user_request_nor_the_reverse() -> None:
    assert narrow(parse_scopes("user/*.cruds"), parse_scopes("patient/*.cruds system/*.cruds")).resources == ()
    assert narrow(parse_scopes("patient/*.cruds"), parse_scopes("user/*.cruds system/*.cruds")).resources == ()
    assert narrow(parse_scopes("system/*.cruds"), parse_scopes("patient/*.cruds user/*.cruds")).resources == ()


def test_a_resource_looking_other_scope_cannot_smuggle_access() -> None:
    # "launch/patient" is allowed as an other scope; it grants no resource access.
    result = narrow(parse_scopes("launch/patient patient/*.rs"), parse_scopes("launch/patient"))

    assert result.resources == ()
    assert result.other == {"launch/patient"}
    assert not result.has_context("patient")


def test_an_unknown_other_scope_is_dropped_unless_allowed() -> None:
    result = narrow(parse_scopes("openid admin superuser"), parse_scopes("openid"))

    assert result.other == {"openid"}


# --- narrow never widens: exhaustive grid ------------------------------------------------------

GRID = [
    "patient/*.cruds",
    "patient/*.rs",
    "patient/*.read",
    "patient/*.write",
    "patient/*.*",
    "patient/*.c",
    "patient/Observation.rs",
    "patient/Observation.r",
    "patient/Observation.cud",
    "patient/Observation.read",
    "patient/Observation.rs?category=laboratory",
    "patient/Observation.r?category=vital-signs",
    "patient/Observation.rs?category=laboratory&status=final",
    "patient/Observation.cruds?status=final",
    "patient/*.rs?_tag=x",
    "patient/Condition.rs",
    "patient/Condition.*",
    "user/*.cruds",
    "user/*.r",
    "user/Observation.rs",
    "user/Observation.s?category=laboratory",
    "user/Patient.read",
    "system/*.rs",
    "system/Patient.cruds",
    "openid",
    "launch",
]
TYPES = ["Observation", "Condition", "Patient", "Encounter", "*"]
CONTEXTS: list[Context] = ["patient", "user", "system"]


def _covered(scope: ResourceScope, by: ScopeSet) -> bool:
    """Every permission `scope` grants is granted by some scope of `by` at most as restrictive."""
    for context, resource_type, permission in itertools.product(CONTEXTS, TYPES, CRUDS):
        if scope.allows(context, resource_type, permission) and not any(
            set(g.params) <= set(scope.params) for g in by.permits(context, resource_type, permission)
        ):
            return False
    return True


def _assert_never_widens(requested: ScopeSet, allowed: ScopeSet) -> ScopeSet:
    result = narrow(requested, allowed)
    for scope in result.resources:
        assert _covered(scope, allowed), f"{scope} not within allowed {allowed}"
        assert _covered(scope, requested), f"{scope} not within requested {requested}"
    assert result.other <= allowed.other & requested.other
    # has_context follows from the granted scopes only.
    for context in CONTEXTS:
        if result.has_context(context):
            assert requested.has_context(context) and allowed.has_context(context)
    # str() is parseable and means the same thing.
    assert _same_grants(parse_scopes(str(result)), result)
    return result


def _sets(size: int) -> list[str]:
    return [" ".join(combo) for combo in itertools.combinations(GRID, size)]


@pytest.mark.parametrize("requested", GRID)
def test_narrowing_one_scope_by_one_scope_never_grants_more_than_either_side(requested: str) -> None:
    for allowed in GRID:
        _assert_never_widens(parse_scopes(requested), parse_scopes(allowed))


@pytest.mark.parametrize("requested", [*GRID, *_sets(2)[::7]])
def test_narrowing_scope_sets_never_grants_more_than_either_side(requested: str) -> None:
    for allowed in _sets(2)[::5] + _sets(3)[::97]:
        _assert_never_widens(parse_scopes(requested), parse_scopes(allowed))


@pytest.mark.parametrize("scope", GRID)
def test_narrowing_a_scope_by_itself_keeps_all_of_its_permissions(scope: str) -> None:
    parsed = parse_scopes(scope)
    result = narrow(parsed, parsed)

    assert _same_grants(result, parsed)


def test_narrowing_is_lossless_where_the_allowance_covers_the_request() -> None:
    allowed = parse_scopes("patient/*.cruds user/*.cruds system/*.cruds openid launch")
    for scope in GRID:
        requested = parse_scopes(scope)
        assert _same_grants(narrow(requested, allowed), requested), scope


def test_narrowing_twice_is_the_same_as_narrowing_once() -> None:
    for requested, allowed in itertools.product(GRID, repeat=2):
        once = narrow(parse_scopes(requested), parse_scopes(allowed))
        assert _same_grants(narrow(once, parse_scopes(allowed)), once), (requested, allowed)
