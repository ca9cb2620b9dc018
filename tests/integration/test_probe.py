"""`mockehr probe` against real services in uvicorn over TLS on loopback.

The example CDS Service passes every check. Each deliberately weak double fails exactly the
checks its weakness predicts, on every endpoint, and nothing else — so a pass is earned and a
failure names the right hole. When the positive control fails, nothing passes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.tls import ensure_ca
from examples.cds_service.app import create_app as create_example
from examples.cds_service.settings import CdsSettings, TrustedClient
from mockehr.cli import app as cli
from mockehr.probe.checks import CHECKS, LEAK_CHECKS
from mockehr.probe.runner import ProbeOptions, Report, probe
from tests.integration.probeharness import SERVICE, Weakness, create_double, free_port, serve_tls

DOUBLE_ENDPOINTS = ("discovery", SERVICE["id"], f"{SERVICE['id']} feedback")
KIND = {"discovery": "discovery", SERVICE["id"]: "service", f"{SERVICE['id']} feedback": "feedback"}
ALL_ATTACKS = {c.id for c in CHECKS if c.expect == "reject"}
LEAKS = {c.id for c in LEAK_CHECKS}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    ensure_ca(tmp_path)
    return tmp_path


def verdicts(report: Report) -> dict[tuple[str, str], str]:
    return {(r.endpoint, r.check.id): r.verdict for r in report.results}


def expected(
    fail: set[str], inconclusive: frozenset[str] | set[str] = frozenset(), not_served: frozenset[str] = frozenset()
) -> dict[tuple[str, str], str]:
    """Every check on every endpoint of a double: pass, except those named (by check or by endpoint)."""
    out: dict[tuple[str, str], str] = {}
    for endpoint in DOUBLE_ENDPOINTS:
        for check in (*CHECKS, *LEAK_CHECKS):
            if KIND[endpoint] not in check.kinds:
                continue
            out[(endpoint, check.id)] = (
                "skipped"
                if endpoint in not_served
                else "fail"
                if check.id in fail
                else "inconclusive"
                if check.id in inconclusive
                else "pass"
            )
    return out


class Double:
    def __init__(self, data_dir: Path, weakness: Weakness, *, trust_probe: bool = True) -> None:
        self.data_dir = data_dir
        self.jwks_port = free_port()
        self.port = free_port()
        issuer = f"https://localhost:{self.jwks_port}" if trust_probe else "https://some-other-ehr.test"
        self.app = create_double(
            weakness,
            issuer=issuer,
            jwks_url=f"{issuer}/.well-known/jwks.json",
            base_url=f"https://localhost:{self.port}",
            ca_file=data_dir / "ca.pem",
        )

    @property
    def discovery(self) -> str:
        return f"https://localhost:{self.port}/cds-services"

    async def probe(self) -> Report:
        with serve_tls(self.app, self.data_dir, self.port):
            return await probe(ProbeOptions(self.discovery, self.data_dir, self.jwks_port))


@pytest.fixture
def example(data_dir: Path) -> Iterator[tuple[str, int]]:
    """The example CDS Service configured as a user would: the probe registered as a CDS Client."""
    jwks_port = free_port()
    port = free_port()
    probe_issuer = f"https://localhost:{jwks_port}"
    settings = CdsSettings(
        data_dir=data_dir,
        public_url=f"https://localhost:{port}",
        trusted_clients=[TrustedClient(issuer=probe_issuer, jwks_url=f"{probe_issuer}/.well-known/jwks.json")],
    )
    with serve_tls(create_example(settings), data_dir, port) as base:
        yield f"{base}/cds-services", jwks_port


async def test_the_example_cds_service_passes_every_check_on_every_endpoint(
    example: tuple[str, int], data_dir: Path
) -> None:
    url, jwks_port = example
    report = await probe(ProbeOptions(url, data_dir, jwks_port))

    not_passed = [(r.endpoint, r.check.id, r.verdict, r.detail) for r in report.results if r.verdict != "pass"]
    assert not_passed == []
    assert report.passed
    kinds = {r.kind for r in report.results}
    assert kinds == {"discovery", "service", "feedback"}
    # Every service the example lists was called and sent feedback, each with the full catalogue.
    services = {r.endpoint for r in report.results if r.kind == "service"}
    assert len(services) >= 2
    for endpoint in services:
        ran = {r.check.id for r in report.results if r.endpoint == endpoint}
        assert ran == {c.id for c in (*CHECKS, *LEAK_CHECKS)}


async def test_a_careful_double_passes_every_check(data_dir: Path) -> None:
    report = await Double(data_dir, Weakness()).probe()

    assert verdicts(report) == expected(set())
    assert report.passed


async def test_a_double_without_jwt_verification_fails_every_attack_and_leaves_nothing_to_examine(
    data_dir: Path,
) -> None:
    report = await Double(data_dir, Weakness(verify=False)).probe()

    assert verdicts(report) == expected(ALL_ATTACKS, inconclusive=LEAKS)
    assert not report.passed


async def test_a_double_that_accepts_alg_none_fails_exactly_the_three_alg_none_checks(data_dir: Path) -> None:
    report = await Double(data_dir, Weakness(alg_none=True)).probe()

    assert verdicts(report) == expected({"alg-none", "alg-none-capitalised", "alg-none-uppercase"})


async def test_a_double_that_ignores_aud_fails_exactly_the_audience_checks(data_dir: Path) -> None:
    report = await Double(data_dir, Weakness(check_aud=False)).probe()

    aud_checks = {"aud-other-endpoint", "aud-discovery", "aud-base-url", "aud-trailing-slash", "aud-missing"}
    assert verdicts(report) == expected(aud_checks)


async def test_a_double_without_jti_tracking_fails_exactly_the_replay_check(data_dir: Path) -> None:
    report = await Double(data_dir, Weakness(track_jti=False)).probe()

    assert verdicts(report) == expected({"jti-replayed"})


async def test_a_double_that_fetches_any_jku_fails_exactly_the_jku_checks_and_the_fetches_are_named(
    data_dir: Path,
) -> None:
    report = await Double(data_dir, Weakness(any_jku=True)).probe()

    jku = {"jku-untrusted-same-origin", "jku-untrusted-origin", "jku-http"}
    assert verdicts(report) == expected(jku)
    details = {r.check.id: r.detail for r in report.results if r.endpoint == "discovery" and r.check.id in jku}
    assert details["jku-http"].startswith("fetched the untrusted JWKS (http)")
    assert details["jku-untrusted-origin"].startswith("fetched the untrusted JWKS (https)")


async def test_a_double_whose_refusals_explain_themselves_fails_exactly_the_three_leak_checks(data_dir: Path) -> None:
    report = await Double(data_dir, Weakness(verbose_errors=True)).probe()

    assert verdicts(report) == expected(LEAKS)
    details = {r.check.id: r.detail for r in report.results if r.endpoint == "discovery"}
    assert "Traceback" in details["leak-stack-trace"]
    assert "repeats the token" in details["leak-token-echo"]


async def test_a_service_that_does_not_trust_the_probe_gets_no_pass_only_a_failed_control(data_dir: Path) -> None:
    report = await Double(data_dir, Weakness(), trust_probe=False).probe()

    # Discovery refuses the probe, so no service is found: one endpoint, nothing passes.
    results = verdicts(report)
    assert results[("discovery", "control")] == "fail"
    assert {v for k, v in results.items() if k[1] != "control"} == {"inconclusive"}
    assert len(results) == len([c for c in (*CHECKS, *LEAK_CHECKS) if "discovery" in c.kinds])
    assert report.results[0].detail.startswith("refused: HTTP 401: is the probe's issuer trusted")
    assert not report.passed


async def test_a_service_that_locks_the_caller_out_after_refusals_makes_every_check_inconclusive(
    data_dir: Path,
) -> None:
    report = await Double(data_dir, Weakness(verify=True, lockout_after=3)).probe()

    results = verdicts(report)
    assert results[("discovery", "control")] == "fail"
    assert "after the checks" in report.results[0].detail
    assert {v for k, v in results.items() if k[1] != "control"} == {"inconclusive"}


def test_the_command_exits_0_when_every_check_passes_and_writes_json_and_html(data_dir: Path) -> None:
    double = Double(data_dir, Weakness())
    html = data_dir / "report.html"
    args = ["probe", double.discovery, "--data-dir", str(data_dir), "--issuer-port", str(double.jwks_port)]
    with serve_tls(double.app, data_dir, double.port):
        result = CliRunner().invoke(cli, [*args, "--json", "--html", str(html)])

    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["passed"] is True
    assert data["score"]["fail"] == data["score"]["inconclusive"] == 0
    assert data["score"]["pass"] == data["score"]["total"] == len(expected(set()))
    assert data["issuer"] == f"https://localhost:{double.jwks_port}"
    assert {c["id"] for c in data["checks"]} == {c.id for c in (*CHECKS, *LEAK_CHECKS)}
    assert html.read_text().startswith("<!doctype html>")


def test_the_command_exits_1_and_names_the_failed_checks_in_its_table(data_dir: Path) -> None:
    double = Double(data_dir, Weakness(track_jti=False))
    with serve_tls(double.app, data_dir, double.port):
        result = CliRunner().invoke(
            cli,
            ["probe", double.discovery, "--data-dir", str(data_dir), "--issuer-port", str(double.jwks_port)],
            env={"COLUMNS": "200"},
        )

    assert result.exit_code == 1, result.output
    assert "jti-replayed" in result.output
    assert f"{len(expected(set())) - 3}/{len(expected(set()))} checks passed, 3 failed, 0 inconclusive" in result.output


def test_the_command_refuses_a_plain_http_target(data_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["probe", "http://localhost:1/cds-services", "--data-dir", str(data_dir)])

    assert result.exit_code == 2
    assert "CDS Services are served over TLS" in result.output


async def test_only_the_named_services_are_probed_and_an_unlisted_name_is_reported(data_dir: Path) -> None:
    double = Double(data_dir, Weakness())
    with serve_tls(double.app, data_dir, double.port):
        report = await probe(ProbeOptions(double.discovery, data_dir, double.jwks_port, only=("not-listed",)))

    assert {r.endpoint for r in report.results} == {"discovery"}
    assert report.notes == ["discovery does not list not-listed"]


async def test_a_careful_service_that_answers_412_for_lack_of_fhir_data_still_passes_every_check(
    data_dir: Path,
) -> None:
    report = await Double(data_dir, Weakness(needs_fhir=True)).probe()

    assert verdicts(report) == expected(set())


FEEDBACK = frozenset({f"{SERVICE['id']} feedback"})


async def test_a_service_without_feedback_endpoints_has_them_reported_not_served_and_their_checks_skipped(
    data_dir: Path,
) -> None:
    report = await Double(data_dir, Weakness(feedback=False)).probe()

    assert verdicts(report) == expected(set(), not_served=FEEDBACK)
    assert report.passed  # a service need not take feedback
    assert report.not_served == [f"{SERVICE['id']} feedback"]
    control = next(r for r in report.results if r.endpoint in FEEDBACK and r.check.id == "control")
    assert control.detail == "not served: HTTP 404 to a correctly signed request, so its checks were skipped"
    skipped = len([c for c in (*CHECKS, *LEAK_CHECKS) if "feedback" in c.kinds])
    assert report.notes == [f"{SERVICE['id']} feedback ({control.url}) is not served: {skipped} checks skipped"]


async def test_a_weak_service_without_feedback_endpoints_fails_exactly_as_before_on_the_endpoints_it_serves(
    data_dir: Path,
) -> None:
    report = await Double(data_dir, Weakness(feedback=False, track_jti=False)).probe()

    assert verdicts(report) == expected({"jti-replayed"}, not_served=FEEDBACK)
    assert not report.passed


def test_the_summary_counts_run_passed_failed_and_skipped_alike_in_text_json_and_html(data_dir: Path) -> None:
    double = Double(data_dir, Weakness(feedback=False, track_jti=False))
    html = data_dir / "report.html"
    args = ["probe", double.discovery, "--data-dir", str(data_dir), "--issuer-port", str(double.jwks_port)]
    with serve_tls(double.app, data_dir, double.port):
        as_json = CliRunner().invoke(cli, [*args, "--json", "--html", str(html)])
        as_text = CliRunner().invoke(cli, args, env={"COLUMNS": "200"})

    everything = expected({"jti-replayed"}, not_served=FEEDBACK)
    skipped = sum(1 for v in everything.values() if v == "skipped")
    run = len(everything) - skipped
    line = f"{run - 2}/{run} checks passed, 2 failed, 0 inconclusive, {skipped} skipped"
    assert as_json.exit_code == as_text.exit_code == 1
    data = json.loads(as_json.output)
    score = {"pass": run - 2, "fail": 2, "inconclusive": 0, "run": run, "skipped": skipped, "total": len(everything)}
    assert data["score"] == score
    assert data["not_served"] == [f"{SERVICE['id']} feedback"]
    assert {r["verdict"] for r in data["results"] if r["endpoint"] in FEEDBACK} == {"skipped"}
    assert line in as_text.output
    assert "is not served" in as_text.output
    page = html.read_text()
    assert line in page
    assert "not served" in page
    assert 'data-verdict="skipped"' in page


async def test_a_service_that_answers_412_without_authenticating_fails_every_attack_on_its_calls(
    data_dir: Path,
) -> None:
    report = await Double(data_dir, Weakness(verify=False, needs_fhir=True)).probe()

    call = {k[1]: v for k, v in verdicts(report).items() if k[0] == SERVICE["id"]}
    assert {check for check, verdict in call.items() if verdict == "fail"} == ALL_ATTACKS
    details = {r.detail for r in report.results if r.endpoint == SERVICE["id"] and r.check.id == "alg-none"}
    assert details == {"HTTP 412: the service accepted the credentials and went on to look for its data"}


async def test_an_unreachable_service_gets_a_failed_control_that_says_so(data_dir: Path) -> None:
    report = await probe(ProbeOptions(f"https://localhost:{free_port()}/cds-services", data_dir, free_port()))

    assert report.results[0].check.id == "control"
    assert report.results[0].verdict == "fail"
    assert report.results[0].detail.startswith("no response (ConnectError")
    assert "is the service running at this URL" in report.results[0].detail
    assert {r.verdict for r in report.results[1:]} == {"inconclusive"}


async def test_a_huge_refusal_body_is_read_only_up_to_the_limit_and_still_examined(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mockehr.probe import judge

    seen: list[int] = []
    original = judge.leaked_reason

    def recording(exchange: judge.Exchange) -> str | None:
        seen.append(len(exchange.body))
        return original(exchange)

    monkeypatch.setattr(judge, "leaked_reason", recording)

    report = await Double(data_dir, Weakness(huge_refusals=True)).probe()

    assert verdicts(report) == expected({"leak-reason"})
    detail = next(r.detail for r in report.results if r.check.id == "leak-reason")
    assert "says 'signature'" in detail
    assert seen and max(seen) <= judge.BODY_LIMIT < 1024 * 1024
