"""Fuzzing the EHR: the hooks API (`POST /api/hooks/{hook}` contexts), the exchange log, the
registry and card-action APIs, the UI's form posts without a session, and — the EHR as a client —
whatever a CDS Service answers (cards, suggestions, actions, systemActions, links), fed to it by a
CDS Service double that returns hostile JSON.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.responses import JSONResponse, Response
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.conftest import secrets_in
from tests.fuzz.invariants import any_shape, ehr_api_shape, send
from tests.fuzz.strategies import header_text, json_values, numbers_text, text
from tests.integration.ehrharness import CdsDouble, EhrHarness, ehr_harness, greeting_service

HOOKS = ["patient-view", "order-select", "order-sign", "encounter-start", "encounter-discharge", "appointment-book"]


class Ehr:
    def __init__(self, h: EhrHarness, secrets: set[str]) -> None:
        self.h = h
        self.secrets = secrets
        self.answer: Response = JSONResponse({"cards": []})
        self.user = h.fhir.practitioner(0)
        self.patient = h.fhir.patient_of(0)

    def __repr__(self) -> str:
        return "Ehr(...)"

    async def send(
        self, method: str, url: str, *, shape: Any = ehr_api_shape, admin: bool = True, **kwargs: Any
    ) -> Any:
        headers = {k: v.encode() for k, v in (kwargs.pop("headers", None) or {}).items()}
        if admin:
            headers["Authorization"] = f"Bearer {self.h.admin_token}".encode()
        return await send(self.h.ehr, method, url, shape=shape, secrets=self.secrets, headers=headers, **kwargs)


@pytest.fixture(scope="module")
async def ehr(sqlite_db: tuple[Path, str]) -> AsyncIterator[Ehr]:
    directory, url = sqlite_db
    cds = CdsDouble(services=[greeting_service("fuzz")])
    async with ehr_harness(directory, url, cds) as h:
        added = await h.add_service(approveAllPrefetch=True, allowSystemActions=True)
        assert added.status_code == 201, added.text
        found = Ehr(h, secrets_in(directory) | {h.admin_token})
        cds.answers["fuzz"] = lambda _body: found.answer
        yield found


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, json_values)


@given(data=st.data())
async def test_firing_a_hook_with_any_body_gets_an_answer_or_a_clear_error(ehr: Ehr, data: st.DataObject) -> None:
    hook = data.draw(st.sampled_from(HOOKS) | text.filter(lambda t: "/" not in t and t not in (".", "..")))
    fields = {
        "userId": maybe(st.sampled_from([ehr.user, "Practitioner/nobody", "Patient/x", ""])),
        "patientId": maybe(st.sampled_from([ehr.patient, "nobody", "../x"])),
        "encounterId": maybe(text),
        "services": maybe(st.lists(st.sampled_from(["fuzz", "nope"]) | text, max_size=3)),
        "context": maybe(
            st.dictionaries(
                st.sampled_from(["draftOrders", "selections", "appointments", "x"]), json_values, max_size=3
            )
        ),
    }
    body = {
        n: data.draw(fields[n]) for n in data.draw(st.lists(st.sampled_from(sorted(fields)), max_size=5, unique=True))
    }
    if data.draw(st.integers(0, 9)) == 0:
        body = data.draw(json_values)
    await ehr.send("POST", f"/api/hooks/{quote(hook, safe='')}", json=body, admin=data.draw(st.integers(0, 5)) > 0)


@given(data=st.data())
async def test_the_exchange_log_and_registry_apis_answer_any_parameters(ehr: Ehr, data: st.DataObject) -> None:
    route = data.draw(
        st.sampled_from(
            [
                "GET /api/exchanges",
                "GET /api/exchanges/{id}",
                "GET /api/services",
                "PATCH /api/services/{id}",
                "POST /api/services/{id}/disable",
                "POST /api/services",
            ]
        )
    )
    method, path = route.split()
    ident = data.draw(
        st.sampled_from([str(uuid.uuid4()), "nope", ".."])
        | text.filter(lambda t: "/" not in t and t not in ("", ".", ".."))
    )
    path = path.replace("{id}", quote(ident, safe=""))
    params = data.draw(
        st.dictionaries(
            st.sampled_from(["patientId", "serviceId", "hook", "before", "limit", "x"]), numbers_text | text, max_size=4
        )
    )
    body = data.draw(
        st.one_of(
            json_values,
            st.fixed_dictionaries(
                {},
                optional={
                    "discoveryUrl": st.sampled_from(
                        ["https://nowhere.test/cds-services", "http://127.0.0.1:1/x", "file:///etc/passwd"]
                    )
                    | text,
                    "hooks": maybe(st.lists(text)),
                    "prefetch": maybe(st.lists(text)),
                    "scope": maybe(st.lists(text)),
                    "deadlineSeconds": maybe(st.floats()),
                    "enabled": json_values,
                    "approveAllPrefetch": json_values,
                    "clientCertFile": maybe(st.just("/etc/passwd")),
                    "clientId": json_values,
                },
            ),
        )
    )
    kwargs: dict[str, Any] = {"params": params} if method == "GET" else {"json": body}
    await ehr.send(method, path, admin=data.draw(st.integers(0, 4)) > 0, **kwargs)


@given(data=st.data())
async def test_card_actions_answer_any_body(ehr: Ehr, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(["/api/suggestions/accept", "/api/feedback"]))
    fields = {
        "hookInstance": st.just(str(uuid.uuid4())) | text,
        "serviceId": st.sampled_from(["fuzz", "nope"]) | text,
        "cardUuid": text,
        "suggestionUuid": text,
        "userId": st.just(ehr.user) | text,
        "outcome": st.sampled_from(["overridden", "accepted"]) | text,
        "overrideReason": json_values,
        "userComment": json_values,
    }
    body = {
        n: data.draw(fields[n]) for n in data.draw(st.lists(st.sampled_from(sorted(fields)), max_size=8, unique=True))
    }
    raw = data.draw(st.sampled_from([None, None, None, b"", b"{", b"\xff"]))
    if raw is None:
        await ehr.send("POST", path, json=body)
    else:
        await ehr.send("POST", path, content=raw, headers={"Content-Type": "application/json"})


@given(data=st.data())
async def test_ui_pages_and_form_posts_without_a_session_are_refused_cleanly(ehr: Ehr, data: st.DataObject) -> None:
    route = data.draw(
        st.sampled_from(
            [
                "POST /admin/elevate",
                "POST /ui/launch",
                "POST /ui/orders",
                "POST /logout",
                "POST /admin/clients/{id}/disable",
                "POST /admin/keys/rotate",
                "GET /patients/{id}",
                "GET /patients/{id}/sections",
                "GET /exchanges",
                "GET /oauth/callback",
                "GET /login",
                "GET /",
                "GET /patients",
                "GET /admin",
                "GET /admin/services",
                "GET /admin/clients",
                "GET /admin/keys",
            ]
        )
    )
    method, path = route.split()
    path = path.replace(
        "{id}", quote(data.draw(st.just(ehr.patient) | text.filter(lambda t: t not in ("", ".", ".."))), safe="")
    )
    cookie_value = header_text.filter(lambda v: not re.search(r"[;, \"\\]", v))
    cookies = data.draw(
        st.dictionaries(
            st.sampled_from(["__Host-ehr-session", "__Host-ehr-login", "__Host-ehr-csrf", "x"]),
            cookie_value,
            max_size=2,
        )
    )
    headers = data.draw(
        st.fixed_dictionaries(
            {},
            optional={
                "X-CSRF-Token": header_text,
                "Origin": st.sampled_from(["https://ehr.test", "https://evil.example", "null"]),
                "Sec-Fetch-Site": st.sampled_from(["same-origin", "cross-site"]),
            },
        )
    )
    form = data.draw(
        st.dictionaries(
            st.sampled_from(["csrf", "token", "url", "patientId", "launchUrl", "appContext", "order", "next"]),
            text,
            max_size=4,
        )
    )
    params = data.draw(
        st.dictionaries(st.sampled_from(["state", "code", "iss", "error", "q", "next"]), text, max_size=3)
    )
    ehr.h.ehr.cookies.clear()
    ehr.h.ehr.cookies.update(cookies)
    try:
        kwargs: dict[str, Any] = {"params": params} if method == "GET" else {"data": form}
        await ehr.send(method, path, shape=any_shape, admin=False, headers=headers, **kwargs)
    finally:
        ehr.h.ehr.cookies.clear()


# --- what a CDS Service answers ---------------------------------------------------------------------

URLS = (
    st.sampled_from(
        [
            "https://example.org/x",
            "https://evil.example/login",
            "javascript:alert(1)",
            "http://example.org/",
            "data:text/html,<script>alert(1)</script>",
            "https://localhost:9004/launch",
            "//evil.example",
            "",
        ]
    )
    | text
)
MARKDOWN = (
    st.sampled_from(
        [
            "<script>alert(1)</script>",
            '<img src=x onerror="alert(1)">',
            "[x](javascript:alert(1))",
            '<a href="javascript:alert(1)">a</a>',
            "![i](https://evil.example/t.png)",
            "<iframe src=//evil.example>",
            "<svg onload=alert(1)>",
            "**bold**",
        ]
    )
    | text
)


def odd(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the expected kind of value, sometimes any JSON at all."""
    return st.one_of(strategy, strategy, strategy, json_values)


resources = st.fixed_dictionaries(
    {"resourceType": odd(st.sampled_from(["ServiceRequest", "MedicationRequest", "Observation", "Patient"]))},
    optional={
        "id": odd(text),
        "status": odd(st.sampled_from(["draft", "active"])),
        "subject": json_values,
        "intent": odd(text),
    },
)
actions = st.fixed_dictionaries(
    {"type": odd(st.sampled_from(["create", "update", "delete"]))},
    optional={
        "description": odd(text),
        "resource": odd(resources),
        "resourceId": odd(st.lists(text, max_size=2)),
        "uuid": odd(text),
    },
)
links = st.fixed_dictionaries(
    {"label": odd(text), "url": odd(URLS), "type": odd(st.sampled_from(["absolute", "smart"]))},
    optional={"appContext": json_values, "autolaunchable": json_values},
)
cards = st.fixed_dictionaries(
    {
        "uuid": odd(st.uuids().map(str)),
        "summary": odd(MARKDOWN),
        "indicator": odd(st.sampled_from(["info", "warning", "critical"])),
        "source": odd(
            st.fixed_dictionaries(
                {"label": odd(MARKDOWN)}, optional={"url": odd(URLS), "icon": odd(URLS), "topic": json_values}
            )
        ),
    },
    optional={
        "detail": odd(MARKDOWN),
        "suggestions": odd(
            st.lists(
                st.fixed_dictionaries(
                    {"label": odd(text)},
                    optional={
                        "uuid": odd(text),
                        "isRecommended": json_values,
                        "actions": odd(st.lists(actions, max_size=3)),
                    },
                ),
                max_size=3,
            )
        ),
        "selectionBehavior": odd(st.sampled_from(["at-most-one", "any"])),
        "overrideReasons": json_values,
        "links": odd(st.lists(links, max_size=3)),
        "x": json_values,
    },
)
answers = st.one_of(
    st.fixed_dictionaries(
        {"cards": odd(st.lists(cards, max_size=4))},
        optional={"systemActions": odd(st.lists(actions, max_size=3)), "extension": json_values},
    ),
    json_values,
)
_ACTIVE = re.compile(r"<script|<iframe|<svg|\son\w+\s*=|javascript:|data:text", re.IGNORECASE)


@given(data=st.data())
async def test_whatever_a_cds_service_answers_the_ehr_answers_cleanly_and_renders_no_active_content(
    ehr: Ehr, data: st.DataObject
) -> None:
    raw = data.draw(st.sampled_from([None] * 8 + [b"", b"{", b"null", b"\xff\xfe", b'{"cards": [}']))
    if raw is None:
        answer = data.draw(answers)
        status = data.draw(st.sampled_from([200] * 6 + [201, 204, 400, 412, 500]))
        ehr.answer = Response(json.dumps(answer), status_code=status, media_type="application/json")
    else:
        ehr.answer = Response(raw, media_type=data.draw(st.sampled_from(["application/json", "text/html"])))
    response = await ehr.send("POST", "/api/hooks/patient-view", json={"userId": ehr.user, "patientId": ehr.patient})
    assert response.status_code == 200, response.text
    for service in response.json()["services"]:
        for shown in service.get("cards") or []:
            assert not _ACTIVE.search(shown.get("detailHtml", "")), shown["detailHtml"]
