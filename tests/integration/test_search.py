"""Search on the Synthea fixtures, on SQLite and PostgreSQL, against expected sets computed here.

One database per backend is loaded once for the module (the practitioner and hospital bundles,
then eight patient bundles) and only read by the tests. Every expected set is computed from the
bundle JSON with plain Python, independently of the index extraction: urn:uuid references are
mapped to the stored ids through the transaction responses.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.db import make_engine, make_sessionmaker
from fhirserver.compartments import Restriction, in_compartment
from fhirserver.errors import FhirError
from fhirserver.search import SearchResult, search, statements
from fhirserver.transaction import process_transaction
from mockehr import migrate
from tests.conftest import _pg_admin, _pg_url

BASE = "https://ehr.example/fhir"
LOINC = "http://loinc.org"
PATIENT_FILES = 8
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
Resource = dict[str, Any]


@dataclass
class Corpus:
    """The loaded resources as stored (references rewritten to Type/id), by type."""

    sessions: async_sessionmaker[AsyncSession]
    backend: str
    by_type: dict[str, list[Resource]] = field(default_factory=dict)

    def of(self, rtype: str, where: Callable[[Resource], bool] = lambda _: True) -> set[str]:
        return {r["id"] for r in self.by_type.get(rtype, []) if where(r)}

    def get(self, rtype: str, rid: str) -> Resource:
        return next(r for r in self.by_type[rtype] if r["id"] == rid)

    async def search(self, rtype: str, params: list[tuple[str, str]], **kw: Any) -> SearchResult:
        async with self.sessions() as session:
            return await search(session, rtype, params, base_url=BASE, **kw)

    async def ids(self, rtype: str, params: list[tuple[str, str]], **kw: Any) -> set[str]:
        """Every matching id, across pages, checking the total on the way."""
        found: list[str] = []
        offset = 0
        while True:
            page = await self.search(rtype, [*params, ("_count", "50")], offset=offset, **kw)
            found += [r["id"] for r in page.resources]
            if len(page.resources) < 50:
                break
            offset += 50
        assert page.total == len(found) == len(set(found))
        return set(found)


def _rewrite(node: Any, ids: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            k: ids.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, ids) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(v, ids) for v in node]
    return node


async def _load(sessions: async_sessionmaker[AsyncSession], files: list[Path]) -> dict[str, list[Resource]]:
    by_type: dict[str, list[Resource]] = {}
    for n, path in enumerate(files):
        bundle = json.loads(path.read_bytes())
        async with sessions() as session, session.begin():
            response = await process_transaction(
                session, json.loads(path.read_bytes()), now=T0 + dt.timedelta(minutes=n)
            )
        locations = [e["response"]["location"].split("/_history")[0] for e in response["entry"]]
        ids = {e["fullUrl"]: loc for e, loc in zip(bundle["entry"], locations, strict=True)}
        for entry, location in zip(bundle["entry"], locations, strict=True):
            stored = _rewrite(entry["resource"], ids)
            stored["id"] = location.split("/")[1]
            by_type.setdefault(stored["resourceType"], []).append(stored)
    return by_type


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def search_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(backend, URL) of a migrated database for this module (sync: the PostgreSQL helpers run
    their own event loop)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('search') / 'search.db'}"
        migrate.upgrade(url)
        yield request.param, url
        return
    template = request.getfixturevalue("pg_template")
    name = f"mockehr_s_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    yield request.param, _pg_url(name)
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
async def corpus(search_db: tuple[str, str], fixtures_dir: Path) -> AsyncIterator[Corpus]:
    backend, url = search_db
    folder = fixtures_dir / "synthea-r4"
    info = sorted(folder.glob("*Information*.json"))
    patients = sorted(p for p in folder.glob("*.json") if "Information" not in p.name)[:PATIENT_FILES]
    engine = make_engine(url, pool_size=2)
    try:
        sessions = make_sessionmaker(engine)
        yield Corpus(sessions, backend, await _load(sessions, info + patients))
    finally:
        await engine.dispose()


# --- independent helpers over the bundle JSON ---------------------------------------------------


def _codes(concept: Any) -> list[tuple[str | None, str]]:
    return [(c.get("system"), c["code"]) for c in (concept or {}).get("coding", []) if "code" in c]


def _ref(resource: Resource, key: str) -> str | None:
    value = resource.get(key)
    return value.get("reference") if isinstance(value, dict) else None


def _instant(text_value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(text_value)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def _fold(value: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", value) if not unicodedata.combining(c)).casefold()


def _name_parts(patient: Resource) -> list[str]:
    parts: list[str] = []
    for name in patient.get("name", []):
        parts += [name.get("family", ""), *name.get("given", []), *name.get("prefix", []), *name.get("suffix", [])]
        parts.append(name.get("text", ""))
    return [p for p in parts if p]


def _subject_of(corpus: Corpus, patient_id: str) -> Callable[[Resource], bool]:
    return lambda r: _ref(r, "subject") == f"Patient/{patient_id}"


def _first_patient(corpus: Corpus, n: int = 0) -> str:
    patients = sorted(corpus.by_type["Patient"], key=lambda p: p["name"][0]["family"] + p["name"][0]["given"][0])
    identifier: str = patients[n]["id"]
    return identifier


def _common_loinc(corpus: Corpus) -> str:
    counts: dict[str, int] = {}
    for obs in corpus.by_type["Observation"]:
        for system, code in _codes(obs.get("code")):
            if system == LOINC:
                counts[code] = counts.get(code, 0) + 1
    return max(sorted(counts), key=lambda c: counts[c])


# --- tokens, references ---------------------------------------------------------------------------


async def test_observations_by_loinc_code_match_the_bundles_in_every_token_form(corpus: Corpus) -> None:
    code = _common_loinc(corpus)
    expected = corpus.of("Observation", lambda r: (LOINC, code) in _codes(r.get("code")))
    assert len(expected) > 8
    assert await corpus.ids("Observation", [("code", code)]) == expected
    assert await corpus.ids("Observation", [("code", f"{LOINC}|{code}")]) == expected
    assert await corpus.ids("Observation", [("code", f"|{code}")]) == set()  # only codes without a system
    with_loinc = corpus.of("Observation", lambda r: any(s == LOINC for s, _ in _codes(r.get("code"))))
    assert await corpus.ids("Observation", [("code", f"{LOINC}|")]) == with_loinc


async def test_a_comma_is_or_and_a_repeated_parameter_is_and(corpus: Corpus) -> None:
    codes = sorted({c for o in corpus.by_type["Observation"] for s, c in _codes(o.get("code")) if s == LOINC})[:3]
    either = corpus.of("Observation", lambda r: any(c in codes for _, c in _codes(r.get("code"))))
    assert await corpus.ids("Observation", [("code", ",".join(codes))]) == either
    patient = _first_patient(corpus)
    both = either & corpus.of("Observation", _subject_of(corpus, patient))
    assert await corpus.ids("Observation", [("code", ",".join(codes)), ("subject", f"Patient/{patient}")]) == both


async def test_observations_of_a_patient_by_subject_patient_and_absolute_url(corpus: Corpus) -> None:
    patient = _first_patient(corpus)
    expected = corpus.of("Observation", _subject_of(corpus, patient))
    assert expected
    assert await corpus.ids("Observation", [("subject", f"Patient/{patient}")]) == expected
    assert await corpus.ids("Observation", [("subject:Patient", patient)]) == expected
    assert await corpus.ids("Observation", [("patient", patient)]) == expected
    assert await corpus.ids("Observation", [("subject", f"{BASE}/Patient/{patient}")]) == expected
    assert await corpus.ids("Observation", [("subject", f"https://elsewhere.example/Patient/{patient}")]) == set()


async def test_active_conditions_and_the_not_modifier(corpus: Corpus) -> None:
    active = corpus.of("Condition", lambda r: "active" in [c for _, c in _codes(r.get("clinicalStatus"))])
    assert active
    assert await corpus.ids("Condition", [("clinical-status", "active")]) == active
    assert await corpus.ids("Condition", [("clinical-status:not", "active")]) == corpus.of("Condition") - active


async def test_the_missing_modifier_splits_conditions_by_abatement(corpus: Corpus) -> None:
    abated = corpus.of("Condition", lambda r: "abatementDateTime" in r)
    assert abated and abated != corpus.of("Condition")
    assert await corpus.ids("Condition", [("abatement-date:missing", "false")]) == abated
    assert await corpus.ids("Condition", [("abatement-date:missing", "true")]) == corpus.of("Condition") - abated


async def test_token_text_matches_the_display_from_its_start(corpus: Corpus) -> None:
    expected = corpus.of(
        "Condition",
        lambda r: (
            any(_fold(c.get("display", "")).startswith("hypert") for c in r["code"].get("coding", []))
            or _fold(r["code"].get("text", "")).startswith("hypert")
        ),
    )
    assert await corpus.ids("Condition", [("code:text", "Hypert")]) == expected


# --- strings ------------------------------------------------------------------------------------


async def test_patient_names_match_from_the_start_of_any_part_exactly_or_anywhere(corpus: Corpus) -> None:
    starts = corpus.of("Patient", lambda p: any(_fold(x).startswith("ch") for x in _name_parts(p)))
    exact = corpus.of("Patient", lambda p: "Hoeger" in _name_parts(p))
    contains = corpus.of("Patient", lambda p: any("er" in _fold(x) for x in _name_parts(p)))
    assert len(starts) >= 2 and len(exact) == 2
    assert await corpus.ids("Patient", [("name", "CH")]) == starts
    assert await corpus.ids("Patient", [("name:exact", "Hoeger")]) == exact
    assert await corpus.ids("Patient", [("name:exact", "hoeger")]) == set()
    assert await corpus.ids("Patient", [("family", "hoe")]) == exact
    assert await corpus.ids("Patient", [("name:contains", "ER")]) == contains


# --- dates ---------------------------------------------------------------------------------------


def _effective_day_cases(corpus: Corpus, patient: str) -> tuple[dt.datetime, dict[str, set[str]]]:
    """Expected Observation ids per prefix for one day, from second-precision effective times."""
    observations = [o for o in corpus.by_type["Observation"] if _subject_of(corpus, patient)(o)]
    times = {o["id"]: _instant(o["effectiveDateTime"]) for o in observations}
    day = sorted(times.values())[len(times) // 2].replace(hour=0, minute=0, second=0, microsecond=0)
    end = day + dt.timedelta(days=1)
    on_day = {i for i, t in times.items() if day <= t < end}
    before, after = {i for i, t in times.items() if t < day}, {i for i, t in times.items() if t >= end}
    cases = {
        "eq": on_day,
        "ne": set(times) - on_day,
        "lt": before,
        "eb": before,
        "le": before | on_day,
        "gt": after,
        "sa": after,
        "ge": on_day | after,
    }
    return day, cases


async def test_observation_dates_honour_every_prefix(corpus: Corpus) -> None:
    patient = _first_patient(corpus, 2)
    day, cases = _effective_day_cases(corpus, patient)
    assert cases["eq"] and cases["lt"] and cases["gt"]
    for prefix, expected in cases.items():
        found = await corpus.ids("Observation", [("patient", patient), ("date", f"{prefix}{day:%Y-%m-%d}")])
        assert found == expected, prefix


async def test_birthdates_in_a_decade_by_two_bounds(corpus: Corpus) -> None:
    expected = corpus.of("Patient", lambda p: "1980-01-01" <= p["birthDate"] < "1990-01-01")
    assert 0 < len(expected) < len(corpus.by_type["Patient"])
    assert await corpus.ids("Patient", [("birthdate", "ge1980"), ("birthdate", "lt1990")]) == expected
    assert await corpus.ids("Patient", [("birthdate", "1980")]) == corpus.of(
        "Patient", lambda p: p["birthDate"].startswith("1980")
    )


async def test_encounters_by_period_within_a_year_and_overlapping_a_day(corpus: Corpus) -> None:
    def period(e: Resource) -> tuple[dt.datetime, dt.datetime]:
        return _instant(e["period"]["start"]), _instant(e["period"]["end"])

    year_start, year_end = dt.datetime(2015, 1, 1, tzinfo=dt.UTC), dt.datetime(2016, 1, 1, tzinfo=dt.UTC)
    within = corpus.of("Encounter", lambda e: year_start <= period(e)[0] and period(e)[1] < year_end)
    assert within
    assert await corpus.ids("Encounter", [("date", "2015")]) == within
    later = corpus.of("Encounter", lambda e: period(e)[1] >= year_end)
    assert await corpus.ids("Encounter", [("date", "gt2015-12-31")]) == later


async def test_last_updated_separates_the_bundles_loaded_a_minute_apart(corpus: Corpus) -> None:
    first_patient_bundle = (T0 + dt.timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M")
    found = await corpus.ids("Patient", [("_lastUpdated", first_patient_bundle)])
    assert len(found) == 1
    assert len(await corpus.ids("Patient", [("_lastUpdated", f"gt{first_patient_bundle}")])) == PATIENT_FILES - 1


# --- quantities -----------------------------------------------------------------------------------


async def test_body_heights_by_value_quantity_prefixes_and_units(corpus: Corpus) -> None:
    heights = {
        o["id"]: o["valueQuantity"]["value"]
        for o in corpus.by_type["Observation"]
        if (LOINC, "8302-2") in _codes(o.get("code"))
    }
    assert heights
    tall = {i for i, v in heights.items() if v > 170}
    query = [("code", "8302-2"), ("value-quantity", "gt170|http://unitsofmeasure.org|cm")]
    assert await corpus.ids("Observation", query) == tall
    assert await corpus.ids("Observation", [("code", "8302-2"), ("value-quantity", "le170||cm")]) == set(heights) - tall
    assert await corpus.ids("Observation", [("code", "8302-2"), ("value-quantity", "gt170||kg")]) == set()


# --- sorting and paging --------------------------------------------------------------------------


async def test_sorting_by_date_both_ways_breaks_ties_by_id(corpus: Corpus) -> None:
    patient = _first_patient(corpus, 1)
    observations = [o for o in corpus.by_type["Observation"] if _subject_of(corpus, patient)(o)]
    ascending = [o["id"] for o in sorted(observations, key=lambda o: (_instant(o["effectiveDateTime"]), o["id"]))]
    descending = [
        o["id"] for o in sorted(observations, key=lambda o: (-_instant(o["effectiveDateTime"]).timestamp(), o["id"]))
    ]
    assert len({o["effectiveDateTime"] for o in observations}) < len(observations)  # there are ties
    params = [("patient", patient), ("_count", "200")]
    up = await corpus.search("Observation", [*params, ("_sort", "date")])
    down = await corpus.search("Observation", [*params, ("_sort", "-date")])
    assert [r["id"] for r in up.resources] == ascending
    assert [r["id"] for r in down.resources] == descending


async def test_sorting_patients_by_family_then_given_descending(corpus: Corpus) -> None:
    expected = sorted(corpus.by_type["Patient"], key=lambda p: p["id"])
    expected = sorted(expected, key=lambda p: _fold(p["name"][0]["given"][0]), reverse=True)  # stable
    expected = sorted(expected, key=lambda p: _fold(p["name"][0]["family"]))
    found = await corpus.search("Patient", [("_sort", "family,-given")])
    assert [r["id"] for r in found.resources] == [p["id"] for p in expected]


async def test_pages_of_seven_cover_every_match_exactly_once_in_a_stable_order(corpus: Corpus) -> None:
    code = _common_loinc(corpus)
    expected = corpus.of("Observation", lambda r: (LOINC, code) in _codes(r.get("code")))
    seen: list[str] = []
    for offset in range(0, len(expected) + 7, 7):
        page = await corpus.search("Observation", [("code", code), ("_count", "7")], offset=offset)
        assert page.total == len(expected) and page.offset == offset and page.count == 7
        seen += [r["id"] for r in page.resources]
    assert len(seen) == len(set(seen)) and set(seen) == expected
    whole = await corpus.search("Observation", [("code", code), ("_count", "200")])
    assert [r["id"] for r in whole.resources] == seen  # default order: _lastUpdated, then _id


async def test_count_is_capped_and_summary_count_returns_only_the_total(corpus: Corpus) -> None:
    capped = await corpus.search("Observation", [("_count", "5000")])
    assert capped.count == 200 and len(capped.resources) == 200
    counted = await corpus.search("Observation", [("_summary", "count")])
    assert counted.resources == [] and counted.total == len(corpus.by_type["Observation"])
    untotalled = await corpus.search("Observation", [("_total", "none"), ("_count", "3")])
    assert untotalled.total is None and len(untotalled.resources) == 3


async def test_elements_keep_only_the_listed_elements_and_mark_the_subset(corpus: Corpus) -> None:
    found = await corpus.search("Patient", [("_elements", "birthDate,gender"), ("_count", "3")])
    for patient in found.resources:
        assert set(patient) <= {"resourceType", "id", "meta", "birthDate", "gender"}
        assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"} in patient[
            "meta"
        ]["tag"]


# --- include, chaining, _has -----------------------------------------------------------------------


async def test_include_subject_and_revinclude_observations_of_a_patient(corpus: Corpus) -> None:
    patient = _first_patient(corpus)
    found = await corpus.search("Observation", [("patient", patient), ("_include", "Observation:subject")])
    assert [(r["resourceType"], r["id"]) for r in found.included] == [("Patient", patient)]
    rev = await corpus.search("Patient", [("_id", patient), ("_revinclude", "Observation:subject")])
    assert [r["id"] for r in rev.resources] == [patient]
    assert {r["id"] for r in rev.included} == corpus.of("Observation", _subject_of(corpus, patient))


async def test_include_iterate_follows_a_second_link(corpus: Corpus) -> None:
    report = next(r for r in corpus.by_type["DiagnosticReport"] if r.get("result"))
    results = {ref["reference"].split("/")[1] for ref in report["result"]}
    found = await corpus.search(
        "DiagnosticReport",
        [("_id", report["id"]), ("_include", "DiagnosticReport:result"), ("_include:iterate", "Observation:subject")],
    )
    assert {r["id"] for r in found.included if r["resourceType"] == "Observation"} == results
    assert [r["id"] for r in found.included if r["resourceType"] == "Patient"] == [
        report["subject"]["reference"].split("/")[1]
    ]


async def test_a_chained_name_finds_the_observations_of_both_hoegers(corpus: Corpus) -> None:
    hoegers = corpus.of("Patient", lambda p: "Hoeger" in _name_parts(p))
    expected = corpus.of("Observation", lambda o: (_ref(o, "subject") or "").split("/")[-1] in hoegers)
    assert len(hoegers) == 2 and expected
    assert await corpus.ids("Observation", [("subject:Patient.name", "hoeger")]) == expected
    assert await corpus.ids("Observation", [("patient.family", "Hoeger")]) == expected


async def test_has_finds_the_patients_with_an_observation_of_a_code(corpus: Corpus) -> None:
    code = sorted({c for o in corpus.by_type["Observation"] for s, c in _codes(o.get("code")) if s == LOINC})[0]
    expected = {
        (_ref(o, "subject") or "").split("/")[1]
        for o in corpus.by_type["Observation"]
        if (LOINC, code) in _codes(o.get("code"))
    }
    assert 0 < len(expected) < len(corpus.by_type["Patient"])
    assert await corpus.ids("Patient", [("_has:Observation:patient:code", code)]) == expected


# --- the restriction -------------------------------------------------------------------------------


async def test_a_compartment_restriction_hides_other_patients_in_matches_totals_and_includes(corpus: Corpus) -> None:
    mine, other = _first_patient(corpus, 0), _first_patient(corpus, 1)
    only_mine = Restriction(allowed_patient_ids=frozenset({mine}))
    code = _common_loinc(corpus)
    with_code = corpus.of("Observation", lambda r: (LOINC, code) in _codes(r.get("code")))
    expected = with_code & corpus.of("Observation", _subject_of(corpus, mine))
    found = await corpus.search(
        "Observation", [("code", code), ("_include", "Observation:subject")], restriction=only_mine
    )
    assert {r["id"] for r in found.resources} == expected and found.total == len(expected) < len(with_code)
    assert [r["id"] for r in found.included] == [mine]
    patients = await corpus.search(
        "Patient", [("_id", f"{mine},{other}"), ("_revinclude", "Observation:subject")], restriction=only_mine
    )
    assert [r["id"] for r in patients.resources] == [mine] and patients.total == 1
    assert {r["id"] for r in patients.included} == corpus.of("Observation", _subject_of(corpus, mine))
    theirs = await corpus.search("Observation", [("subject", f"Patient/{other}")], restriction=only_mine)
    assert theirs.resources == [] and theirs.total == 0


async def test_types_outside_the_compartment_are_invisible_under_a_restriction(corpus: Corpus) -> None:
    mine = _first_patient(corpus)
    encounter = next(e for e in corpus.by_type["Encounter"] if _subject_of(corpus, mine)(e) and e.get("participant"))
    restriction = Restriction(allowed_patient_ids=frozenset({mine}))
    found = await corpus.search(
        "Encounter", [("_id", encounter["id"]), ("_include", "Encounter:participant")], restriction=restriction
    )
    assert [r["id"] for r in found.resources] == [encounter["id"]]
    assert found.included == []  # the Practitioner is in no Patient compartment
    assert (await corpus.search("Practitioner", [], restriction=restriction)).total == 0
    unrestricted = await corpus.search("Encounter", [("_id", encounter["id"]), ("_include", "Encounter:participant")])
    assert [r["resourceType"] for r in unrestricted.included] == ["Practitioner"]


async def test_chains_and_has_cannot_see_past_the_restriction(corpus: Corpus) -> None:
    mine, other = _first_patient(corpus, 0), _first_patient(corpus, 1)
    restriction = Restriction(allowed_patient_ids=frozenset({mine}))
    other_family = corpus.get("Patient", other)["name"][0]["family"]
    chained = await corpus.search("Observation", [("subject:Patient.family", other_family)], restriction=restriction)
    assert chained.total == 0
    types_only = Restriction(types=frozenset({"Patient"}))
    code = _common_loinc(corpus)
    has = await corpus.search("Patient", [("_has:Observation:patient:code", code)], restriction=types_only)
    assert has.total == 0  # Observations are not readable, so they cannot select Patients either


async def test_extra_filters_restrict_a_patient_to_laboratory_results(corpus: Corpus) -> None:
    mine = _first_patient(corpus)

    def lab(o: Resource) -> bool:
        return any("laboratory" in [c for _, c in _codes(cat)] for cat in o.get("category", []))

    expected = corpus.of("Observation", lambda o: _subject_of(corpus, mine)(o) and lab(o))
    assert expected and expected != corpus.of("Observation", _subject_of(corpus, mine))
    labs_only = Restriction(allowed_patient_ids=frozenset({mine}), extra_filters=[[("category", "laboratory")]])
    assert await corpus.ids("Observation", [], restriction=labs_only) == expected
    vitals = await corpus.search("Observation", [("category", "vital-signs")], restriction=labs_only)
    assert vitals.total == 0
    either = Restriction(extra_filters=[[("category", "laboratory")], [("category", "vital-signs")]])
    assert await corpus.ids("Observation", [("patient", mine)], restriction=either) == corpus.of(
        "Observation", lambda o: _subject_of(corpus, mine)(o) and (lab(o) or "vital-signs" in json.dumps(o["category"]))
    )
    unknowable = Restriction(extra_filters=[[("no-such-param", "x")]])
    assert (await corpus.search("Observation", [], restriction=unknowable)).total == 0


async def test_in_compartment_answers_for_the_patient_and_their_resources(corpus: Corpus) -> None:
    mine, other = _first_patient(corpus, 0), _first_patient(corpus, 1)
    observation = next(iter(corpus.of("Observation", _subject_of(corpus, mine))))
    practitioner = corpus.by_type["Practitioner"][0]["id"]
    async with corpus.sessions() as session:
        assert await in_compartment(session, "Patient", mine, frozenset({mine}))
        assert await in_compartment(session, "Observation", observation, frozenset({other, mine}))
        assert not await in_compartment(session, "Observation", observation, frozenset({other}))
        assert not await in_compartment(session, "Practitioner", practitioner, frozenset({mine}))
        assert not await in_compartment(session, "Patient", mine, frozenset())


# --- errors and unknown parameters --------------------------------------------------------------------


async def test_unknown_and_unsupported_parameters_are_reported_and_ignored(corpus: Corpus) -> None:
    found = await corpus.search("Observation", [("colour", "blue"), ("code:in", "http://vs"), ("_text", "x")])
    assert found.unknown == ["colour", "code:in", "_text"]
    assert found.total == len(corpus.by_type["Observation"])


@pytest.mark.parametrize(
    ("params", "expression"),
    [
        ([("date", "2020-13-01")], "date"),
        ([("date", "xx2020")], "date"),
        ([("date", "ap2020")], "date"),
        ([("birthdate:exact", "2020")], "birthdate:exact"),
        ([("value-quantity", "gt1|2")], "value-quantity"),
        ([("_count", "-1")], "_count"),
        ([("_sort", "subject")], "_sort"),
        ([("_include", "Observation:code")], "_include"),
        ([("subject", "not a reference")], "subject"),
        ([("code:missing", "maybe")], "code:missing"),
    ],
)
async def test_malformed_values_are_a_400_naming_the_parameter(
    corpus: Corpus, params: list[tuple[str, str]], expression: str
) -> None:
    with pytest.raises(FhirError) as caught:
        await corpus.search("Observation" if "birthdate" not in expression else "Patient", params)
    assert caught.value.status == 400
    assert caught.value.issues[0].code in ("invalid", "not-supported")
    assert caught.value.issues[0].expression == (expression,)


# --- the plans -------------------------------------------------------------------------------------------


async def test_sqlite_plans_use_the_indexes_for_compartment_token_and_sorted_searches(corpus: Corpus) -> None:
    if corpus.backend != "sqlite":
        pytest.skip("EXPLAIN QUERY PLAN is SQLite's")
    mine = _first_patient(corpus)
    cases = [
        ("Observation", [("_count", "10")], Restriction(allowed_patient_ids=frozenset({mine}))),
        ("Observation", [("code", f"{LOINC}|8302-2")], None),
        ("Observation", [("patient", mine), ("_sort", "-date")], None),
        ("Patient", [("name", "ch")], None),
    ]
    async with corpus.sessions() as session:
        for rtype, params, restriction in cases:
            for statement in statements(rtype, params, restriction=restriction, base_url=BASE):
                sql = str(statement.compile(dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True}))
                plan = [row[-1] for row in (await session.execute(text(f"EXPLAIN QUERY PLAN {sql}"))).all()]
                # "SCAN (subquery-n)" walks the matches only (the window that counts them)
                assert not [step for step in plan if step.startswith("SCAN fhir_")], (params, plan)
                assert any("USING COVERING INDEX ix_fhir_" in step for step in plan), (params, plan)
