"""Running the catalogue against a CDS Service: discovery, then each service and its feedback.

For each endpoint: the positive control (a correct request) first; then every check in the
catalogue; then the control again (a service that starts refusing everything after a few bad
tokens — a lockout — would otherwise make every later check look like a pass). If either control
is refused, every other check on that endpoint is inconclusive, never a pass. If the control gets
a 404, the endpoint is not served: its checks are skipped and a note says so (a feedback endpoint
may be absent; a discovery or a listed service answering 404 also fails its control). Requests go
one at a time: verdicts must not depend on timing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from common.clock import Clock, system_clock
from common.http import make_http_client
from mockehr.probe import judge
from mockehr.probe.cds_requests import feedback_request, service_request
from mockehr.probe.checks import CHECKS, CONTROL, LEAK_CHECKS, Attack, Check, Forge, Kind, Target
from mockehr.probe.forge import load_or_create_key
from mockehr.probe.judge import Exchange, Verdict
from mockehr.probe.jwks_server import JwksEndpoints, serve_jwks

KEY_FILE = Path("probe") / "probe-key.pem"
NOT_SERVED = "not served"


@dataclass(frozen=True)
class Result:
    endpoint: str
    kind: Kind
    url: str
    check: Check
    verdict: Verdict
    detail: str


@dataclass
class Report:
    target: str
    issuer: str
    jwks_url: str
    started_at: float
    finished_at: float = 0.0
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def count(self, verdict: Verdict) -> int:
        return sum(1 for r in self.results if r.verdict == verdict)

    @property
    def run(self) -> int:
        """The checks that were run: every result but those of endpoints not served."""
        return len(self.results) - self.count("skipped")

    @property
    def passed(self) -> bool:
        """Exit 0 only when checks were run and every one of them passed."""
        return self.run > 0 and all(r.verdict in ("pass", "skipped") for r in self.results)

    @property
    def not_served(self) -> list[str]:
        """The endpoints that answered the correctly signed control 404, in probe order."""
        return [r.endpoint for r in self.results if r.check is CONTROL and r.detail.startswith(NOT_SERVED)]


@dataclass(frozen=True)
class ProbeOptions:
    discovery_url: str
    data_dir: Path
    jwks_port: int
    timeout: float = 10.0
    clock: Clock = system_clock
    only: tuple[str, ...] = ()  # probe only these discovered service ids (all when empty)


@dataclass
class _Outcome:
    """What one endpoint's checks produced, before the leak checks and the jku fetches are judged."""

    results: list[Result] = field(default_factory=list)
    refusals: list[tuple[str, Exchange, list[str]]] = field(default_factory=list)
    baits: dict[int, str] = field(default_factory=dict)  # index in results -> bait nonce
    control_body: str = ""
    served: bool = True


class _Runner:
    def __init__(self, http: httpx.AsyncClient, forge: Forge) -> None:
        self.http = http
        self.forge = forge

    async def send(self, target: Target, authorization: str | None) -> Exchange:
        headers = {"Accept": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        body = target.body() if target.method == "POST" and target.body else None
        try:
            async with self.http.stream(target.method, target.url, json=body, headers=headers) as response:
                # Read at most BODY_LIMIT bytes: the service under test decides how much it sends.
                content = bytearray()
                async for chunk in response.aiter_bytes():
                    content += chunk
                    if len(content) >= judge.BODY_LIMIT:
                        break
        except httpx.HTTPError as exc:
            message = str(exc).splitlines()[0][:160] if str(exc) else ""
            return Exchange(None, error=f"{type(exc).__name__}: {message}" if message else type(exc).__name__)
        return Exchange(
            response.status_code,
            body=bytes(content[: judge.BODY_LIMIT]).decode("utf-8", "replace"),
            www_authenticate=response.headers.get("www-authenticate", "")[:1024],
        )

    def _result(self, target: Target, check: Check, verdict: Verdict, detail: str) -> Result:
        return Result(target.name, target.kind, target.url, check, verdict, detail)

    async def endpoint(self, target: Target) -> _Outcome:
        outcome = _Outcome()
        opening = await self.send(target, self._bearer(CONTROL, target))
        outcome.control_body = opening.body if opening.accepted else ""
        if opening.status == judge.NOT_FOUND:
            return self._not_served(target, opening)
        pending: list[tuple[Check, Attack, list[Exchange]]] = []
        if opening.accepted:
            for check in CHECKS:
                if check is CONTROL or target.kind not in check.kinds or check.build is None:
                    continue
                attack = check.build(self.forge, target)
                exchanges = [await self.send(target, a) for a in attack.authorizations]
                pending.append((check, attack, exchanges))
            closing = await self.send(target, self._bearer(CONTROL, target))
        else:
            closing = opening
        control_ok = opening.accepted and closing.accepted
        outcome.results.append(self._result(target, CONTROL, *_control_verdict(opening, closing)))
        for check, attack, exchanges in pending:
            verdict, detail = self._judge(check, attack, exchanges)
            if not control_ok:
                verdict, detail = "inconclusive", "the positive control failed"
            if attack.bait is not None:
                outcome.baits[len(outcome.results)] = attack.bait
            outcome.results.append(self._result(target, check, verdict, detail))
            last = exchanges[-1]
            if last.status is not None and not last.accepted:
                outcome.refusals.append((check.id, last, judge.token_parts(attack.authorizations[-1])))
        if not opening.accepted:
            for check in CHECKS:
                if check is not CONTROL and target.kind in check.kinds:
                    outcome.results.append(self._result(target, check, "inconclusive", "the positive control failed"))
        for check in LEAK_CHECKS:
            outcome.results.append(self._leaks(target, check, outcome.refusals, control_ok))
        return outcome

    def _not_served(self, target: Target, opening: Exchange) -> _Outcome:
        """A 404 to a correctly signed request: nothing is there to attack, so nothing is judged.

        A service without feedback has no feedback URL; a discovery URL or a listed service that
        is not there fails its control, since the service cannot be used at all."""
        verdict: Verdict = "skipped" if target.kind == "feedback" else "fail"
        detail = f"{NOT_SERVED}: {opening.describe()} to a correctly signed request, so its checks were skipped"
        outcome = _Outcome(served=False)
        outcome.results.append(self._result(target, CONTROL, verdict, detail))
        for check in (*CHECKS, *LEAK_CHECKS):
            if check is not CONTROL and target.kind in check.kinds:
                outcome.results.append(self._result(target, check, "skipped", f"{NOT_SERVED}: {target.name}"))
        return outcome

    def _bearer(self, check: Check, target: Target) -> str | None:
        if check.build is None:  # the catalogue's control always has a builder
            raise TypeError(f"check {check.id} sends nothing")
        return check.build(self.forge, target).authorizations[-1]

    @staticmethod
    def _judge(check: Check, attack: Attack, exchanges: list[Exchange]) -> tuple[Verdict, str]:
        for first in exchanges[:-1]:  # earlier uses of the token must have been accepted
            if not first.accepted:
                return "inconclusive", f"the first use was refused ({first.describe()}), so the replay proves nothing"
        if check.expect == "accept":
            return judge.judge_acceptance(exchanges[-1])
        return judge.judge_refusal(exchanges[-1])

    def _leaks(
        self, target: Target, check: Check, refusals: list[tuple[str, Exchange, list[str]]], control_ok: bool
    ) -> Result:
        if not control_ok:
            return self._result(target, check, "inconclusive", "the positive control failed")
        if not refusals:
            return self._result(
                target, check, "inconclusive", "the service refused nothing, so there was nothing to examine"
            )
        for check_id, exchange, secrets in refusals:
            if check.id == "leak-reason":
                found = judge.leaked_reason(exchange)
            elif check.id == "leak-stack-trace":
                found = judge.stack_trace(exchange)
            else:
                found = judge.echoed(exchange, secrets)
            if found:
                return self._result(target, check, "fail", f"{check_id}: {exchange.describe()}, {found}")
        return self._result(target, check, "pass", f"{len(refusals)} refusals examined")


def _control_verdict(opening: Exchange, closing: Exchange) -> tuple[Verdict, str]:
    if opening.accepted and closing.accepted:
        return "pass", f"accepted before and after the checks (HTTP {opening.status}, {closing.status})"
    if not opening.accepted:
        return "fail", _control_hint(opening)
    return "fail", f"accepted first, then {closing.describe()} after the checks (a lockout?)"


def _control_hint(exchange: Exchange) -> str:
    """Why the positive control may have failed, in the words a user can act on."""
    detail = judge.judge_acceptance(exchange)[1]
    if exchange.status is None:
        return (
            f"{detail}: is the service running at this URL with a certificate the system store or the dev CA verifies?"
        )
    if exchange.status in (401, 403):
        return f"{detail}: is the probe's issuer trusted, and can the service fetch its JWKS (docs/probe.md)?"
    return detail


def _services(body: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(body)
    except ValueError:
        return []
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, list):
        return []
    return [s for s in services if isinstance(s, dict) and isinstance(s.get("id"), str) and s["id"]]


def _cards_uuid(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return str(uuid.uuid4())
    for card in (data.get("cards") if isinstance(data, dict) else None) or []:
        if isinstance(card, dict) and isinstance(card.get("uuid"), str):
            return str(card["uuid"])
    return str(uuid.uuid4())


async def probe(options: ProbeOptions) -> Report:
    """Run every check against the CDS Service whose discovery URL is `options.discovery_url`.

    Outbound calls verify TLS against the system store plus the dev CA of the data directory.
    """
    discovery_url = options.discovery_url.rstrip("/")
    key = load_or_create_key(options.data_dir / KEY_FILE)
    async with (
        serve_jwks(options.data_dir, key, options.jwks_port) as jwks,
        make_http_client(ca_file=options.data_dir / "ca.pem", timeout=options.timeout) as client,
    ):
        return await _probe(options, discovery_url, client, Forge(key, jwks, options.clock), jwks)


async def _probe(
    options: ProbeOptions, discovery_url: str, http: httpx.AsyncClient, forge: Forge, jwks: JwksEndpoints
) -> Report:
    report = Report(discovery_url, jwks.issuer, jwks.jwks_url, started_at=time.time())
    runner = _Runner(http, forge)
    outcomes: list[_Outcome] = []
    # Discovery is probed first; its positive control is also how the services are found.
    found = await runner.send(_discovery(discovery_url, discovery_url), f"Bearer {forge.token(discovery_url)}")
    services = _services(found.body) if found.accepted else []
    if found.accepted and not services:
        report.notes.append("discovery listed no services: only the discovery endpoint was probed")
    if options.only:
        missing = sorted(set(options.only) - {s["id"] for s in services})
        if found.accepted and missing:
            report.notes.append(f"discovery does not list {', '.join(missing)}")
        services = [s for s in services if s["id"] in options.only]
    urls = [f"{discovery_url}/{quote(s['id'], safe='')}" for s in services]
    outcomes.append(
        await runner.endpoint(_discovery(discovery_url, urls[0] if urls else discovery_url + "/probe-unknown-service"))
    )
    for index, (service, url) in enumerate(zip(services, urls, strict=True)):
        other = urls[(index + 1) % len(urls)] if len(urls) > 1 else url + "/feedback"
        name = service["id"]
        call = Target("service", name, url, "POST", discovery_url, other, _call_body(service))
        outcome = await runner.endpoint(call)
        outcomes.append(outcome)
        card = _cards_uuid(outcome.control_body)
        feedback = Target(
            "feedback",
            f"{name} feedback",
            url + "/feedback",
            "POST",
            discovery_url,
            url,
            _feedback_body(card, options.clock),
        )
        outcomes.append(await runner.endpoint(feedback))
    # A jku fetch fails its check whenever it happened, even after the response was sent.
    for outcome in outcomes:
        for index, nonce in outcome.baits.items():
            fetched = jwks.log.of(f"/untrusted/{nonce}/jwks.json")
            if fetched:
                r = outcome.results[index]
                outcome.results[index] = Result(
                    r.endpoint,
                    r.kind,
                    r.url,
                    r.check,
                    "fail",
                    f"fetched the untrusted JWKS ({fetched[0].scheme}) — SSRF; response: {r.detail}",
                )
        report.results.extend(outcome.results)
        if not outcome.served:
            first = outcome.results[0]
            skipped = sum(1 for r in outcome.results if r.verdict == "skipped")
            report.notes.append(f"{first.endpoint} ({first.url}) is {NOT_SERVED}: {skipped} checks skipped")
    report.finished_at = time.time()
    return report


def _call_body(service: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    return lambda: service_request(service)


def _feedback_body(card: str, clock: Clock) -> Callable[[], dict[str, Any]]:
    return lambda: feedback_request(card, clock())


def _discovery(url: str, other: str) -> Target:
    return Target("discovery", "discovery", url, "GET", url, other)
