"""The CDS Hooks engine: one hook call fanned out to its services (docs/cds-client.md, "One hook call").

Per service, in parallel, under the service's deadline (and never beyond the hook's total
deadline): exchange a per-call token (ehr.fhir_token) → prefetch the *approved* templates with it
(ehr.prefetch) → POST the request to the exact service URL with a fresh CDS Client JWT whose
`aud` is that URL (ehr.client_jwt) → validate and sanitize the answer (ehr.cards) → revoke the
token. One service's failure never blocks the others; each fault yields status "error", no
cards and a recorded reason:

- down (connection refused), slow (deadline; it covers reading the body, so a service that
  trickles its answer is cut off too), 5xx and other 4xx, 401/403, invalid JSON, a content type
  other than application/json, a body over the size cap (streamed; reading stops at the cap);
- a redirect is never followed (the client has redirects off), so neither the JWT nor
  fhirAuthorization is ever sent to where it points;
- 412 (CDS Hooks 2.0 §Prefetch: the service "lacks data it needs"): recorded as "service lacks
  data it needs (412)". Not retried: hook calls are never blindly retried (a retry would mint a
  second token and repeat a possibly non-idempotent call), and the EHR already sent every
  prefetch the administrator approved — the remedy is approving the template or scope the
  service needs, which the record points at.

Plain http is used only when the service has the per-service loopback opt-in and the host is
loopback (common.http.check_outbound_url). With a client certificate configured, the call goes
through a client that presents it (mutual TLS), kept per certificate and closed once no service
uses it (ehr/mtls_clients.py). Nothing is cached across hook calls
except HTTP connection pools: prefetch, tokens and JWTs are made fresh for every call (R3).

Revocation happens after the service answered (or failed) and before the hook returns, within
what is left of the total deadline; if that is not enough it finishes in the background (the
hook never waits past its deadline; the token is revoked regardless). A token exchange that the
deadline interrupts keeps running shielded, and the token it yields is revoked on arrival, so a
token issued "too late" is never left live.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from common.clock import Clock, system_clock
from common.http import check_outbound_url, make_http_client
from common.tls import client_ssl_context
from ehr.cards import CardValidator, ResponseError, needs_smart_urls
from ehr.cds_request import CdsRequestError, parse_request
from ehr.client_jwt import ClientJwtSigner, SignerSource
from ehr.exchange import HookCall, HookOutcome, ServiceConfig, ServiceResult
from ehr.fhir_token import ExchangedToken, TokenExchangeClient, TokenExchangeError
from ehr.hooks import HookContextError, validate_context
from ehr.markdown import MarkdownRenderer, https_host
from ehr.mtls_clients import MtlsClients
from ehr.prefetch import TokenValues, fetch
from ehr.settings import EhrSettings

log = logging.getLogger(__name__)

SmartLaunchUrls = Callable[[], Awaitable[Collection[str]]]
REDACTED = "[redacted]"
ERROR_BODY_BYTES = 4096  # how much of an error answer is kept for the record
# A credential signed ahead (while the exchange waits on I/O) is used only this soon after its
# signing began; older, a fresh one is signed. Either way it is used once (its own jti).
SIGNED_AHEAD_MAX_AGE = 1.0


class ServiceFault(Exception):
    """A service's exchange failed; `reason` is what the record and the API show."""

    def __init__(self, reason: str, *, http_status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.http_status = http_status


def redact(body: dict[str, Any]) -> dict[str, Any]:
    """The request as recorded: the access token never leaves the exchange."""
    recorded = dict(body)
    if isinstance(recorded.get("fhirAuthorization"), dict):
        recorded["fhirAuthorization"] = {**recorded["fhirAuthorization"], "access_token": REDACTED}
    return recorded


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


def _scrub(raw: bytes, secrets: list[bytes]) -> bytes:
    for secret in secrets:
        if secret and secret in raw:
            raw = raw.replace(secret, REDACTED.encode())
    return raw


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json"


@dataclass
class _SignedAhead:
    """A JWT signed while the exchange waits on I/O (the prefetch queries, the service's answer),
    so the signature is off the critical path; `take` hands it out at most once and only while
    fresh (SIGNED_AHEAD_MAX_AGE), else None (the caller signs a fresh one)."""

    task: asyncio.Future[str]
    started: float
    taken: bool = False

    @classmethod
    def start(cls, signing: Awaitable[str]) -> _SignedAhead:
        return cls(asyncio.ensure_future(signing), asyncio.get_running_loop().time())

    async def take(self) -> str | None:
        if self.taken:
            return None
        self.taken = True
        try:
            value = await self.task
        except Exception:  # noqa: BLE001 - signing ahead failed: the caller signs in line
            return None
        if asyncio.get_running_loop().time() - self.started > SIGNED_AHEAD_MAX_AGE:
            return None
        return value

    def discard(self) -> None:
        self.taken = True
        self.task.cancel()


@dataclass
class _Progress:
    """How far one service's exchange got: the phase (for a deadline's reason) and the token
    (revoked whatever happens next, with the assertion signed ahead for that when there is one)."""

    phase: str = "start"
    token: ExchangedToken | None = None
    revoke_assertion: _SignedAhead | None = None
    client_jwt: _SignedAhead | None = None

    def secrets(self) -> list[bytes]:
        return [self.token.access_token.encode()] if self.token else []


@dataclass
class _CallState:
    """Per-hook-call state shared by its services: the SMART launch URLs, fetched at most once."""

    provider: SmartLaunchUrls | None
    urls: Collection[str] | None = None
    lock: asyncio.Lock | None = None

    async def smart_urls(self) -> tuple[Collection[str], str | None]:
        if self.provider is None:
            return (), None
        if self.lock is None:
            self.lock = asyncio.Lock()
        async with self.lock:
            if self.urls is None:
                try:
                    self.urls = frozenset(await self.provider())
                except Exception as exc:  # noqa: BLE001 - any failure means "no app is known"
                    log.warning("SMART app registry unavailable: %s", type(exc).__name__)
                    self.urls = frozenset()
                    return self.urls, "SMART app registry unavailable: smart links removed"
            return self.urls, None


class CdsEngine:
    """Runs hook calls; built once per app lifespan (`aclose` on shutdown)."""

    def __init__(
        self,
        settings: EhrSettings,
        *,
        http: httpx.AsyncClient,
        keys: SignerSource,
        clock: Clock = system_clock,
        smart_launch_urls: SmartLaunchUrls | None = None,
        service_http: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._http = http
        self.jwt = ClientJwtSigner(
            keys,
            issuer=settings.base_url,
            jwks_url=settings.jwks_url,
            lifetime_seconds=settings.cds_jwt_lifetime_seconds,
            tenant=settings.cds_tenant,
            clock=clock,
        )
        self.tokens = TokenExchangeClient(
            http,
            keys,
            authserver_url=settings.authserver_url,
            client_id=settings.cds_oauth_client_id,
            fhir_base_url=settings.fhir_base_url,
            clock=clock,
        )
        self.cards = CardValidator(MarkdownRenderer(settings.cds_link_hosts), max_cards=settings.cds_max_cards)
        self._smart_launch_urls = smart_launch_urls
        self._owns_service_http = service_http is None
        self._service_http = service_http or self._new_service_client(None)
        self.mtls = MtlsClients(self._new_service_client)
        self._background: set[asyncio.Task[str | None]] = set()

    # --- clients -------------------------------------------------------------------------

    def _new_service_client(self, cert: tuple[str, str] | None) -> httpx.AsyncClient:
        if cert is None:
            return make_http_client(ca_file=self.settings.ca_path, timeout=self.settings.cds_total_deadline_seconds)
        context: ssl.SSLContext = client_ssl_context(self.settings.ca_path)
        context.load_cert_chain(certfile=cert[0], keyfile=cert[1])
        timeout = self.settings.cds_total_deadline_seconds
        return httpx.AsyncClient(
            verify=context,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            follow_redirects=False,
            trust_env=False,
        )

    @asynccontextmanager
    async def _client_for(self, service: ServiceConfig) -> AsyncIterator[httpx.AsyncClient]:
        if not (service.client_cert_file and service.client_key_file):
            await self.mtls.forget(service.service_id)  # it may have had a certificate before
            yield self._service_http
            return
        async with self.mtls.use(service.service_id, (service.client_cert_file, service.client_key_file)) as client:
            yield client

    async def forget_service(self, service_id: str) -> None:
        """The service was disabled or reconfigured: a client kept for its certificate is
        closed unless another service uses it (ehr/mtls_clients.py)."""
        await self.mtls.forget(service_id)

    async def settle(self) -> None:
        """Wait for revocations still running after their hook's deadline."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def aclose(self) -> None:
        await self.settle()
        await self.mtls.aclose()
        if self._owns_service_http:
            await self._service_http.aclose()

    # --- one hook call -------------------------------------------------------------------

    async def run_hook(
        self, call: HookCall, services: Sequence[ServiceConfig], *, user_token: str | None = None
    ) -> HookOutcome:
        """Fire `call` at every enabled service registered for its hook; never raises for a
        service's fault. Raises HookContextError when the call itself is malformed."""
        try:
            uuid.UUID(call.hook_instance)
        except ValueError:
            raise HookContextError("hookInstance must be a UUID") from None
        context = validate_context(call.hook, call.context)
        if context.get("patientId") != call.patient_id:
            raise HookContextError("context.patientId must be the patient of the call")
        started_at = self._clock()
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        total_deadline = loop.time() + self.settings.cds_total_deadline_seconds
        state = _CallState(self._smart_launch_urls)
        chosen = [s for s in services if s.enabled and s.hook == call.hook]
        results = await asyncio.gather(
            *(self._run_service(call, context, s, user_token, total_deadline, state) for s in chosen)
        )
        return HookOutcome(call=call, results=list(results), started_at=started_at, total_ms=_ms(start))

    async def _run_service(
        self,
        call: HookCall,
        context: dict[str, Any],
        service: ServiceConfig,
        user_token: str | None,
        total_deadline: float,
        state: _CallState,
    ) -> ServiceResult:
        result = ServiceResult(service_id=service.service_id, status="error")
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        own_deadline = loop.time() + service.deadline_seconds
        deadline = min(own_deadline, total_deadline)
        which = (
            f"the service deadline ({service.deadline_seconds:g} s)"
            if own_deadline <= total_deadline
            else f"the hook's total deadline ({self.settings.cds_total_deadline_seconds:g} s)"
        )
        progress = _Progress()
        try:
            async with asyncio.timeout_at(deadline):
                await self._exchange(call, context, service, user_token, state, result, progress)
            result.status = "ok"
        except TimeoutError:
            result.reason = f"no answer within {which} (during {progress.phase})"
        except ServiceFault as fault:
            result.reason = fault.reason
            result.http_status = fault.http_status or result.http_status
        except Exception as exc:  # one service's fault never breaks the hook
            log.exception("CDS exchange with %s failed unexpectedly", service.service_id)
            result.reason = f"internal error ({type(exc).__name__})"
        finally:
            if progress.token is not None:
                await self._revoke(progress.token.access_token, result, total_deadline, progress.revoke_assertion)
            elif progress.revoke_assertion is not None:
                progress.revoke_assertion.discard()
            if progress.client_jwt is not None:
                progress.client_jwt.discard()  # unused when the exchange ended before the call
            result.timings.total_ms = _ms(start)
        if result.status == "error":
            result.cards = []
            result.system_actions = []
            result.system_actions_result = None
        return result

    async def _exchange(
        self,
        call: HookCall,
        context: dict[str, Any],
        service: ServiceConfig,
        user_token: str | None,
        state: _CallState,
        result: ServiceResult,
        progress: _Progress,
    ) -> None:
        try:
            url = check_outbound_url(service.url, allow_loopback_http=service.allow_http_loopback)
        except ValueError as exc:
            raise ServiceFault(f"service URL refused: {exc}") from None
        # fhirServer must be https whenever a token goes with it (2.0 §HTTP Request); checked
        # before a token exists. Plain http only for a loopback FHIR server of a TLS-off dev stack.
        try:
            check_outbound_url(self.settings.fhir_base_url, allow_loopback_http=not self.settings.tls)
        except ValueError:
            raise ServiceFault("the EHR's FHIR base URL is not https: no token is sent over it") from None
        body: dict[str, Any] = {"hook": call.hook, "hookInstance": call.hook_instance}
        if (call.user_ref or user_token) and service.scope:
            progress.phase = "token exchange"
            t0 = time.perf_counter()
            try:
                token = await self._exchange_token(call, service, user_token)
            except TokenExchangeError as exc:
                raise ServiceFault(f"no FHIR token for this service: {exc.reason}") from None
            finally:
                result.timings.token_ms = _ms(t0)
            progress.token = token
            result.token_scope = token.scope
            # 2.0 §HTTP Request: fhirServer goes with fhirAuthorization (and only then: without
            # a token the service has nothing to present there, and the EHR names no server).
            body["fhirServer"] = self.settings.fhir_base_url
            body["fhirAuthorization"] = token.fhir_authorization(service.client_id)
            body["context"] = context
            if service.prefetch:
                progress.phase = "prefetch"
                # The CDS Client JWT is signed while the prefetch queries are in flight.
                progress.client_jwt = _SignedAhead.start(self.jwt.sign(url, in_thread=True))
                t0 = time.perf_counter()
                values = TokenValues(context=context, user_ref=call.user_ref, today=self._today())
                prefetched = await fetch(
                    self._http, self.settings.fhir_base_url, token.access_token, service.prefetch, values
                )
                result.timings.prefetch_ms = _ms(t0)
                result.notes.extend(f"prefetch {k}: {v}" for k, v in prefetched.notes.items())
                if prefetched.data:
                    body["prefetch"] = prefetched.data
        elif not service.scope:
            # Never ask with an empty scope: the token exchange would grant the provider's whole
            # ceiling (authserver/token_exchange.py). No scope approved: no token, no prefetch.
            body["context"] = context
            result.notes.append("no scope approved for this service: sent without fhirAuthorization or prefetch")
        else:
            body["context"] = context
            result.notes.append("no user in this hook call: sent without fhirAuthorization or prefetch")
        try:
            parse_request(body, outbound=self.settings.tls, context_checked=True)
        except CdsRequestError as exc:
            raise ServiceFault(f"the EHR refused to send an invalid request: {exc.reason}") from None
        result.request = redact(body)
        progress.phase = "service call"
        if progress.token is not None:
            # The revocation's client assertion is signed while the service answers.
            progress.revoke_assertion = _SignedAhead.start(self.tokens.client_assertion(in_thread=True))
        t0 = time.perf_counter()
        try:
            answer = await self._post(service, url, body, result, progress.secrets(), progress.client_jwt)
        finally:
            result.timings.call_ms = _ms(t0)
        smart_urls: Collection[str] = ()
        if needs_smart_urls(answer):
            smart_urls, note = await state.smart_urls()
            if note:
                result.notes.append(note)
        try:
            own_host = https_host(url)
            validated = self.cards.validate(answer, smart_urls=smart_urls, link_hosts=(own_host,) if own_host else ())
        except ResponseError as exc:
            raise ServiceFault(f"invalid CDS response: {exc.reason}") from None
        result.cards = validated.cards
        result.dropped = validated.dropped
        result.notes.extend(validated.notes)
        if validated.system_actions and not service.allow_system_actions:
            # Recorded (and shown) as refused, with why; never applied.
            refused = "systemActions are not allowed for this service"
            result.system_actions_result = {"applied": False, "reason": refused}
        else:
            result.system_actions = validated.system_actions

    async def _exchange_token(self, call: HookCall, service: ServiceConfig, user_token: str | None) -> ExchangedToken:
        """The per-call token, shielded from the deadline: when the deadline (or a cancelled
        request) interrupts the exchange, the authorization server may still issue the token;
        it is then revoked as soon as it arrives, so no live token is ever left unaccounted."""
        task = asyncio.create_task(
            self.tokens.exchange(
                service_client_id=service.client_id,
                patient=call.patient_id,
                scope=service.scope,
                user_ref=call.user_ref,
                user_token=user_token,
            )
        )
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self._revoke_when_issued(task)
            raise

    def _revoke_when_issued(self, task: asyncio.Task[ExchangedToken]) -> None:
        """Revoke the token of an exchange whose caller gave up, once (if) it is issued."""

        async def late() -> str | None:
            try:
                token = await task
            except Exception:  # noqa: BLE001 - no token was issued: nothing to revoke
                return None
            return await self._revoke_logged(token.access_token)

        self._track(asyncio.create_task(late()))

    def _track(self, task: asyncio.Task[str | None]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC).date()

    async def _post(
        self,
        service: ServiceConfig,
        url: str,
        body: dict[str, Any],
        result: ServiceResult,
        secrets: list[bytes],
        signed_ahead: _SignedAhead | None = None,
    ) -> Any:
        """POST the request; return the parsed JSON answer or raise ServiceFault.

        A service that echoes the credentials it was sent (its JWT, the access token) gets them
        replaced by "[redacted]" in what is recorded and shown.
        """
        client_jwt = (await signed_ahead.take() if signed_ahead else None) or await self.jwt.sign(url)
        secrets = [*secrets, client_jwt.encode()]
        headers = {
            "Authorization": f"Bearer {client_jwt}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        content = json.dumps(body, separators=(",", ":")).encode()
        cap = self.settings.cds_max_response_bytes
        try:
            async with (
                self._client_for(service) as client,
                client.stream("POST", url, content=content, headers=headers) as response,
            ):
                status = response.status_code
                result.http_status = status
                if 300 <= status < 400:
                    raise ServiceFault(f"service answered a redirect ({status}); not followed", http_status=status)
                if status >= 400:
                    error_body = _scrub(await self._read(response, ERROR_BODY_BYTES, truncate=True), secrets)
                    result.response = error_body.decode("utf-8", "replace")
                    if status in (401, 403):
                        raise ServiceFault(f"service refused the EHR's credentials ({status})", http_status=status)
                    if status == 412:
                        raise ServiceFault("service lacks data it needs (412)", http_status=status)
                    raise ServiceFault(f"service error (HTTP {status})", http_status=status)
                if status != 200:
                    raise ServiceFault(f"unexpected HTTP status {status}", http_status=status)
                if not _is_json(response.headers.get("content-type")):
                    kind = response.headers.get("content-type", "none")[:100]
                    raise ServiceFault(f"wrong content type ({kind}); expected application/json", http_status=status)
                raw = _scrub(await self._read(response, cap, truncate=False), secrets)
        except httpx.TimeoutException:
            raise ServiceFault("service timed out") from None
        except httpx.ConnectError as exc:
            raise ServiceFault(f"service unreachable ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise ServiceFault(f"service transport error ({type(exc).__name__})") from None
        try:
            answer = json.loads(raw)
        except (ValueError, RecursionError):
            result.response = raw[:ERROR_BODY_BYTES].decode("utf-8", "replace")
            raise ServiceFault("invalid JSON in the response", http_status=200) from None
        result.response = answer
        return answer

    async def _read(self, response: httpx.Response, cap: int, *, truncate: bool) -> bytes:
        """Read at most `cap` bytes; over it, stop reading (and fail unless truncating)."""
        declared = response.headers.get("content-length")
        if not truncate and declared and declared.isdigit() and int(declared) > cap:
            raise ServiceFault(f"response larger than {cap} bytes", http_status=response.status_code)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                if truncate:
                    break
                raise ServiceFault(f"response larger than {cap} bytes", http_status=response.status_code)
        return b"".join(chunks)[:cap]

    async def _revoke(
        self, access_token: str, result: ServiceResult, total_deadline: float, signed_ahead: _SignedAhead | None
    ) -> None:
        t0 = time.perf_counter()
        task = asyncio.create_task(self._revoke_logged(access_token, signed_ahead))
        self._track(task)
        remaining = total_deadline - asyncio.get_running_loop().time()
        try:
            failure = await asyncio.wait_for(asyncio.shield(task), timeout=max(remaining, 0.0))
        except TimeoutError:
            result.notes.append("token revocation finishing after the hook's deadline")
        else:
            if failure:
                result.notes.append(failure)
        result.timings.revoke_ms = _ms(t0)

    async def _revoke_logged(self, access_token: str, signed_ahead: _SignedAhead | None = None) -> str | None:
        try:
            assertion = await signed_ahead.take() if signed_ahead else None
            await self.tokens.revoke(access_token, client_assertion=assertion)
        except TokenExchangeError as exc:
            log.warning("revoking a CDS token failed: %s", exc.reason)
            return exc.reason
        return None
