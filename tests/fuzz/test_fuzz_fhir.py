"""Fuzzing the FHIR server through its public interface: searches (every parameter type, modifiers,
prefixes, chains, _has, _include, _sort, _count, …), reads, history and vread with odd ids,
create/update/delete with odd bodies and headers, batch and transaction Bundles, and the guard
with forged tokens. Most requests carry a valid token so the fuzz reaches past the guard.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fhirserver import searchparams
from tests.fuzz.conftest import secrets_in
from tests.fuzz.invariants import fhir_shape, send
from tests.fuzz.strategies import forged_jwts, header_text, json_values, numbers_text, text
from tests.integration.fhirharness import AUTH, FHIR, FhirHarness, fhir_harness

RTYPES = sorted(searchparams.SUPPORTED_TYPES)


class Fhir:
    def __init__(self, h: FhirHarness, tokens: dict[str, str], secrets: set[str], ids: list[str]) -> None:
        self.h = h
        self.tokens = tokens
        self.secrets = secrets
        self.ids = ids  # real resource ids (patients, practitioners) so references and reads hit rows

    def __repr__(self) -> str:
        return "Fhir(...)"  # keeps hypothesis's report of a failing example short

    async def send(self, method: str, url: str, token: str | None = "read", **kwargs: Any) -> Any:  # noqa: S107
        headers = dict(kwargs.pop("headers", {}) or {})
        if token in self.tokens:
            headers["Authorization"] = f"Bearer {self.tokens[token]}"
        elif token is not None:
            headers["Authorization"] = token
        # Raw bytes on the wire: a client may send any octets in a header value.
        headers = {k: v.encode() if isinstance(v, str) else v for k, v in headers.items()}
        return await send(self.h.client, method, url, shape=fhir_shape, secrets=self.secrets, headers=headers, **kwargs)


@pytest.fixture(scope="module")
async def fhir(both_dbs: tuple[Path, str]) -> AsyncIterator[Fhir]:
    directory, url = both_dbs
    async with fhir_harness(directory, url, patients=3) as h:
        patient = h.patient_of(0)
        tokens = {
            "read": await h.token("system/*.rs"),
            "write": await h.token("system/*.cruds"),
            "patient": await h.token("patient/*.cruds", patient=patient),
            "user": await h.token("user/*.rs", user=h.practitioner(0)),
        }
        signer = await h.auth_app.state.runtime.signing_keys.signer()
        secrets = secrets_in(Path(directory)) | set(tokens.values())
        secrets.add(str(signer.key.as_dict(private=True)["d"]))
        ids = [patient, h.patient_of(1), h.data.practitioners[0].id]
        assert (await h.get(f"Patient/{patient}", tokens["read"])).status_code == 200
        yield Fhir(h, tokens, secrets, ids)


# --- search ------------------------------------------------------------------------------------

PREFIXES = ["", "", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "xx"]
MODIFIERS = [
    "",
    "",
    "",
    ":missing",
    ":exact",
    ":contains",
    ":not",
    ":text",
    ":above",
    ":below",
    ":in",
    ":not-in",
    ":of-type",
    ":identifier",
    ":Patient",
    ":Practitioner",
    ":iterate",
    ":",
    ":x",
]

dates = st.one_of(
    st.dates().map(lambda d: d.isoformat()),
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()),
    st.from_regex(
        r"-?\d{1,6}(-\d{1,2}(-\d{1,2}(T\d{1,2}(:\d{1,2}(:\d{1,2}(\.\d{1,12})?)?)?(Z|[+-]\d{1,2}:\d{2})?)?)?)?",
        fullmatch=True,
    ),
    text,
)


def values_for(kind: str, ids: list[str]) -> st.SearchStrategy[str]:
    refs = st.sampled_from(ids)
    by_kind: dict[str, st.SearchStrategy[str]] = {
        "date": st.builds(str.__add__, st.sampled_from(PREFIXES), dates),
        "number": st.builds(str.__add__, st.sampled_from(PREFIXES), numbers_text),
        "quantity": st.builds(
            lambda p, n, s, c: f"{p}{n}|{s}|{c}", st.sampled_from(PREFIXES), numbers_text, text, text
        ),
        "token": st.one_of(
            st.builds(lambda s, c: f"{s}|{c}", st.sampled_from(["http://loinc.org", "", "urn:x"]) | text, text),
            text,
        ),
        "reference": st.one_of(
            refs,
            refs.map(lambda i: f"Patient/{i}"),
            refs.map(lambda i: f"{FHIR}/Practitioner/{i}"),
            st.builds(lambda t, i: f"{t}/{i}", text, text),
            text,
        ),
    }
    return by_kind.get(kind, text)


@st.composite
def search_param(draw: st.DrawFn, rtype: str, ids: list[str]) -> tuple[str, str]:
    known = searchparams.params(rtype) if rtype in searchparams.SUPPORTED_TYPES else {}
    codes = sorted(known) or ["_id"]
    kind = draw(st.integers(0, 9))
    if kind <= 3:  # a real parameter, maybe with a modifier, maybe several OR values
        code = draw(st.sampled_from(codes))
        ptype = known[code].type if code in known else "token"
        many = st.lists(values_for(ptype, ids), min_size=1, max_size=3).map(",".join)
        return code + draw(st.sampled_from(MODIFIERS)), draw(many)
    if kind == 4:  # a chain, typed or not, one or two links deep
        ref = draw(st.sampled_from([c for c in codes if c in known and known[c].type == "reference"] or ["subject"]))
        target = draw(st.sampled_from(["", ":Patient", ":Practitioner", ":Organization", ":Nope"]))
        tail = draw(st.sampled_from(["name", "birthdate", "_id", "identifier", "general-practitioner.name", "x", ""]))
        return f"{ref}{target}.{tail}", draw(values_for("string", ids))
    if kind == 5:  # reverse chain
        other, ref, code = (
            draw(st.sampled_from([*RTYPES, "Nope"])),
            draw(text),
            draw(st.sampled_from(["code", "_id", "x"])),
        )
        return f"_has:{other}:{ref}:{code}", draw(text)
    if kind == 6:  # _include and _revinclude
        name = draw(
            st.sampled_from(["_include", "_revinclude", "_include:iterate", "_revinclude:iterate", "_include:x"])
        )
        src, code = draw(st.sampled_from([rtype, *RTYPES[:3], "*"])), draw(st.sampled_from([*codes, "*", ""]))
        target = draw(st.sampled_from(["", ":Patient", ":Nope", ":"]))
        return name, draw(st.sampled_from([f"{src}:{code}{target}", "*", ""]) | text)
    if kind == 7:  # result parameters
        name = draw(
            st.sampled_from(["_count", "_sort", "_summary", "_total", "_elements", "_cursor", "_format", "_pretty"])
        )
        if name == "_count":
            return name, draw(numbers_text)
        if name == "_sort":
            return name, ",".join(
                draw(
                    st.lists(st.sampled_from(["-", ""]), min_size=1, max_size=3).map(
                        lambda signs: [
                            s + draw(st.sampled_from([*codes, "_lastUpdated", "_id", "x", ""])) for s in signs
                        ]
                    )
                )
            )
        if name == "_format":
            return name, draw(st.sampled_from(["json", "application/fhir+json", "xml", "html"]) | text)
        return name, draw(
            st.sampled_from(["true", "false", "count", "text", "data", "none", "accurate", "id,name"]) | text
        )
    if kind == 8:
        return draw(st.sampled_from(["_id", "_lastUpdated"])), draw(values_for("date", ids) | st.sampled_from(ids))
    return draw(text), draw(text)  # anything at all


@st.composite
def searches(draw: st.DrawFn, ids: list[str]) -> tuple[str, list[tuple[str, str]]]:
    rtype = draw(st.sampled_from(RTYPES) | st.sampled_from(["Nope", "patient", "", "metadata", "_history"]))
    return rtype, draw(st.lists(search_param(rtype, ids), min_size=1, max_size=4))


ACCEPT = (
    st.sampled_from(
        [
            "",
            "application/fhir+json",
            "application/json",
            "*/*",
            "text/html",
            "application/fhir+xml",
            "application/fhir+json; fhirVersion=3.0",
            "application/*;q=0",
        ]
    )
    | header_text
)


@given(data=st.data())
async def test_searches_never_fail_badly(fhir: Fhir, data: st.DataObject) -> None:
    rtype, params = data.draw(searches(fhir.ids))
    token = data.draw(st.sampled_from(["read", "read", "read", "patient", "user", None]))
    headers = {"Accept": data.draw(ACCEPT)}
    path = f"/fhir/{quote(rtype, safe='')}"
    if data.draw(st.booleans()):
        await fhir.send("GET", path, token, params=params, headers=headers)
    else:
        await fhir.send("POST", f"{path}/_search", token, data=dict(params), headers=headers)


@given(query=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80))
@example(query="_id=%zz&&=&name:=x;y")
async def test_a_raw_query_string_never_fails_badly(fhir: Fhir, query: str) -> None:
    await fhir.send("GET", f"/fhir/Observation?{query}")


# --- reads, history, vread -----------------------------------------------------------------------

odd_ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True), text, st.sampled_from(["-", "..", "$everything"])
)
vids = st.one_of(numbers_text, st.just("9" * 40))


@given(data=st.data())
async def test_reads_history_and_vreads_never_fail_badly(fhir: Fhir, data: st.DataObject) -> None:
    rtype = data.draw(st.sampled_from([*RTYPES, "Nope"]))
    rid = quote(data.draw(st.sampled_from(fhir.ids) | odd_ids), safe="")
    vid = quote(data.draw(vids), safe="")
    path = data.draw(
        st.sampled_from(
            [
                f"{rtype}/{rid}",
                f"{rtype}/{rid}/_history",
                f"{rtype}/{rid}/_history/{vid}",
                f"{rtype}/_history",
                f"Patient/{rid}/$everything",
                "metadata",
                ".well-known/smart-configuration",
            ]
        )
    )
    params = data.draw(
        st.dictionaries(st.sampled_from(["_count", "_since", "_at", "_format", "start", "x"]), text, max_size=2)
    )
    headers = {"Accept": data.draw(ACCEPT), "If-None-Match": data.draw(header_text)}
    token = data.draw(st.sampled_from(["read", "patient", "user", None]))
    await fhir.send(
        data.draw(st.sampled_from(["GET", "GET", "HEAD", "PATCH"])),
        f"/fhir/{path}",
        token,
        params=params,
        headers=headers,
    )


# --- writes ----------------------------------------------------------------------------------------


def templates(ids: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "resourceType": "Patient",
            "name": [{"family": "Fuzz", "given": ["Ada"]}],
            "gender": "female",
            "birthDate": "1970-01-01",
        },
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{ids[0]}"},
            "effectiveDateTime": "2024-01-01T00:00:00Z",
            "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        },
        {
            "resourceType": "Condition",
            "subject": {"reference": f"Patient/{ids[1]}"},
            "code": {"text": "x"},
            "clinicalStatus": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
            },
        },
    ]


@st.composite
def resources(draw: st.DrawFn, ids: list[str]) -> Any:
    if draw(st.integers(0, 5)) == 0:
        return draw(json_values)
    resource = dict(draw(st.sampled_from(templates(ids))))
    for key in draw(
        st.lists(st.sampled_from([*sorted(resource), "id", "meta", "text", "contained", "extension", "x"]), max_size=3)
    ):
        resource[key] = draw(json_values | st.sampled_from(ids) | st.just({"versionId": "1", "lastUpdated": "x"}))
    if draw(st.booleans()):
        resource["id"] = draw(st.sampled_from(ids) | odd_ids)
    return resource


IF_MATCH = st.sampled_from(['W/"1"', '"1"', "1", 'W/"0"', 'W/"', "*", ""]) | header_text
PREFER = (
    st.sampled_from(
        [
            "return=minimal",
            "return=representation",
            "return=OperationOutcome",
            "handling=strict",
            "handling=lenient",
            "return=x",
            "",
        ]
    )
    | header_text
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/fhir+json",
        "application/fhir+json",
        "application/fhir+json",
        "application/json",
        "application/json+fhir",
        "text/plain",
        "application/fhir+json; charset=latin-1",
        "",
    ]
)


@given(data=st.data())
async def test_creates_updates_and_deletes_never_fail_badly(fhir: Fhir, data: st.DataObject) -> None:
    body = data.draw(resources(fhir.ids))
    rtype = (
        body.get("resourceType") if isinstance(body, dict) and isinstance(body.get("resourceType"), str) else "Patient"
    )
    rtype = data.draw(st.sampled_from([rtype, rtype, "Observation", "Nope"]))
    rid = data.draw(st.sampled_from(fhir.ids) | odd_ids)
    if isinstance(body, dict) and data.draw(st.booleans()):
        body["id"] = rid
    method = data.draw(st.sampled_from(["POST", "PUT", "PUT", "DELETE"]))
    path = f"/fhir/{rtype}" if method == "POST" else f"/fhir/{rtype}/{quote(rid, safe='')}"
    headers = {
        "Content-Type": data.draw(CONTENT_TYPES),
        "If-Match": data.draw(IF_MATCH),
        "Prefer": data.draw(PREFER),
        "If-None-Exist": data.draw(st.sampled_from(["", f"_id={rid}", "identifier=x|y", "nope=1"]) | header_text),
    }
    headers = {k: v for k, v in headers.items() if v and (k == "Content-Type" or data.draw(st.booleans()))}
    raw = None
    if data.draw(st.integers(0, 5)) == 0:
        raw = data.draw(st.sampled_from([b"", b"{", b"[]", b"\xff\xfe", b'{"resourceType": "Patient",}']))
    content = raw if raw is not None else __import__("json").dumps(body).encode()
    token = data.draw(st.sampled_from(["write", "write", "patient", "read"]))
    await fhir.send(method, path, token, content=None if method == "DELETE" else content, headers=headers)


@st.composite
def bundles(draw: st.DrawFn, ids: list[str]) -> Any:
    def entry() -> dict[str, Any]:
        resource = draw(resources(ids))
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", ""]) | text)
        url = draw(
            st.sampled_from(
                [
                    "Patient",
                    f"Patient/{ids[0]}",
                    "Observation?code=8867-4",
                    f"Patient/{ids[0]}/_history/1",
                    "metadata",
                    "Nope/1",
                    "",
                    "/Patient",
                    f"{FHIR}/Patient",
                    "Patient?_count=2",
                ]
            )
            | text
        )
        request: dict[str, Any] = {"method": method, "url": url}
        for key in draw(
            st.lists(
                st.sampled_from(["ifMatch", "ifNoneExist", "ifNoneMatch", "ifModifiedSince"]), max_size=2, unique=True
            )
        ):
            request[key] = draw(text)
        found: dict[str, Any] = {"resource": resource, "request": request}
        if draw(st.booleans()):
            found["fullUrl"] = draw(
                st.sampled_from(["urn:uuid:3f9c1b6e-6b3a-4c1e-8d7a-1a2b3c4d5e6f", "urn:uuid:x", f"{FHIR}/Patient/p"])
                | text
            )
        for key in draw(st.lists(st.sampled_from(["resource", "request", "fullUrl"]), max_size=1)):
            found[key] = draw(json_values)
        return found

    bundle: dict[str, Any] = {
        "resourceType": draw(st.sampled_from(["Bundle", "Bundle", "Patient"])),
        "type": draw(st.sampled_from(["batch", "transaction", "transaction", "searchset", ""])),
        "entry": [entry() for _ in range(draw(st.integers(0, 4)))],
    }
    if draw(st.integers(0, 6)) == 0:
        bundle["entry"] = draw(json_values)
    return bundle


@given(data=st.data())
async def test_batches_and_transactions_never_fail_badly(fhir: Fhir, data: st.DataObject) -> None:
    bundle = data.draw(bundles(fhir.ids))
    token = data.draw(st.sampled_from(["write", "write", "patient", "read", None]))
    await fhir.send("POST", "/fhir", token, json=bundle, headers={"Prefer": data.draw(PREFER)})


# --- the guard ---------------------------------------------------------------------------------------


@given(data=st.data())
async def test_forged_and_malformed_credentials_get_a_bare_401(fhir: Fhir, data: st.DataObject) -> None:
    now = int(fhir.h.clock())
    valid = {
        "iss": AUTH,
        "sub": "test-client",
        "aud": FHIR,
        "client_id": "test-client",
        "scope": "system/*.rs",
        "iat": now,
        "exp": now + 300,
        "jti": "j",
    }
    credential = data.draw(
        st.one_of(
            forged_jwts(valid).map(lambda t: f"Bearer {t}"),
            st.builds(lambda s, t: f"{s} {t}", st.sampled_from(["Bearer", "bearer", "Basic", "DPoP", ""]), header_text),
            st.just(f"Bearer {fhir.tokens['read']}").map(lambda t: t[:-3] + "AAA"),
            st.just(f"Bearer {fhir.tokens['read']}").map(lambda t: t + data.draw(header_text)),
        )
    )
    path = data.draw(st.sampled_from(["Patient", f"Patient/{fhir.ids[0]}", "Observation?_count=1", "Patient/_history"]))
    response = await fhir.send("GET", f"/fhir/{path}", credential)
    if credential.strip() != f"Bearer {fhir.tokens['read']}":  # HTTP drops whitespace around a value
        assert response.status_code == 401, (credential, response.status_code, response.text)
