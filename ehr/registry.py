"""The CDS Service registry: the allow-list and what an administrator approved per service.

Adding a discovery URL (CDS Hooks 2.0 §Discovery) records one row per announced (id, hook) and
what was approved for it:

- hooks: the announced hooks the administrator chose (default: every announced hook this EHR
  fires; others are skipped with a reason);
- prefetch: a subset of the announced templates (minimum necessary, Argonaut R13). Templates
  outside the allowed query forms (CDS Hooks 2.0 §Prefetch template) are refused with a reason;
- scope, per service (least privilege, CDS Hooks 2.0 §Security: "the scopes the CDS Service
  needs for its logic and no more"): the read scopes for the resource types ITS approved prefetch
  reads, plus the scopes approved for every service of the URL (`scope`) and for that service
  alone (`service_scopes`). A per-call `fhirAuthorization` token for a service asks for exactly
  its own scope, never a sibling's; a service with no scope gets no token at all;
- the provider's OAuth client at the authorization server (one per discovery URL: its client_id
  is `fhirAuthorization.subject`) is registered with the union of its services' scopes, the
  ceiling the token exchange narrows from;
- deadline, systemActions allowed, plain http (loopback only) allowed, mutual TLS certificate.

Only enabled rows are ever called (`enabled_for`). Disabling keeps the record (and its log);
removing deletes the record (its id can be registered again), keeps its exchange log rows (the
audit trail of what was sent and received), and shrinks the provider's client to the union of
the services left, or disables it when none is left.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.clock import Clock
from common.http import check_outbound_url
from common.scopes import InvalidScopeError, parse_scopes
from ehr.authserver_admin import AuthserverAdmin
from ehr.client_jwt import ClientJwtSigner
from ehr.discovery import DiscoveredService, discover
from ehr.errors import InvalidRequest, NotFound
from ehr.exchange import ServiceConfig
from ehr.models import CdsServiceRow

# Returns why a prefetch template is not an allowed query form, or None when it is.
TemplateCheck = Callable[[str], str | None]

MIN_DEADLINE, MAX_DEADLINE = 0.1, 60.0
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")


@dataclass(frozen=True)
class Approval:
    """What the administrator approves when adding a discovery URL."""

    hooks: tuple[str, ...] = ()  # empty: every announced hook this EHR fires
    prefetch: tuple[str, ...] = ()  # prefetch keys to approve
    approve_all_prefetch: bool = False
    scope: tuple[str, ...] = ()  # approved for every service of the URL, beside its prefetch's read scopes
    service_scopes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # by announced id: for it alone
    client_id: str | None = None  # default: derived from the discovery host and port
    deadline_seconds: float = 5.0
    allow_system_actions: bool = False
    allow_http_loopback: bool = False
    client_cert_file: str | None = None
    client_key_file: str | None = None


@dataclass
class Registration:
    """What `add` did: the services saved, what was skipped or refused and why, the client."""

    services: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    refused_prefetch: list[dict[str, str]] = field(default_factory=list)
    client: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "services": self.services,
            "skipped": self.skipped,
            "refusedPrefetch": self.refused_prefetch,
            "client": self.client,
        }


def service_json(row: CdsServiceRow) -> dict[str, Any]:
    """The API's view of a registry row (no secrets live in it; file paths only)."""
    return {
        "id": row.id,
        "cdsId": row.cds_id,
        "hook": row.hook,
        "url": row.url,
        "discoveryUrl": row.discovery_url,
        "title": row.title,
        "description": row.description,
        "announcedPrefetch": json.loads(row.announced_prefetch),
        "approvedPrefetch": json.loads(row.approved_prefetch),
        "scope": row.scope,
        "clientId": row.client_id,
        "deadlineSeconds": row.deadline_seconds,
        "allowSystemActions": row.allow_system_actions,
        "allowHttpLoopback": row.allow_http_loopback,
        "clientCertFile": row.client_cert_file,
        "clientKeyFile": row.client_key_file,
        "enabled": row.enabled,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
    }


def service_config(row: CdsServiceRow) -> ServiceConfig:
    return ServiceConfig(
        service_id=row.id,
        cds_id=row.cds_id,
        hook=row.hook,
        url=row.url,
        discovery_url=row.discovery_url,
        client_id=row.client_id,
        scope=row.scope,
        prefetch=dict(json.loads(row.approved_prefetch)),
        deadline_seconds=row.deadline_seconds,
        allow_system_actions=row.allow_system_actions,
        allow_http_loopback=row.allow_http_loopback,
        client_cert_file=row.client_cert_file,
        client_key_file=row.client_key_file,
        enabled=row.enabled,
        title=row.title,
    )


def default_client_id(discovery_url: str) -> str:
    parts = urlsplit(discovery_url)
    host = re.sub(r"[^A-Za-z0-9.-]", "-", parts.hostname or "service")
    return f"cds-{host}" + (f"-{parts.port}" if parts.port else "")


def template_resource_type(template: str) -> str | None:
    """The resource type a prefetch template reads (`Patient/{{…}}`, `Observation?…`)."""
    head = template.split("?", 1)[0].split("/", 1)[0]
    return head if _RESOURCE_TYPE.fullmatch(head) else None


def check_scope(scopes: Iterable[str], *, allow_empty: bool = False) -> str:
    text = " ".join(s.strip() for s in scopes if s.strip())
    if allow_empty and not text:
        return ""
    try:
        parsed = parse_scopes(text)
    except InvalidScopeError as exc:
        raise InvalidRequest(f"scope: {exc}") from None
    if parsed.other:
        others = " ".join(sorted(parsed.other))
        raise InvalidRequest(f"scope: only FHIR resource scopes are approved for a CDS Service, not {others}")
    if not parsed.resources:
        raise InvalidRequest("no scope: give at least one patient/ or user/ scope")
    if any(r.context == "system" for r in parsed.resources):
        raise InvalidRequest("scope: a CDS Service acts for a user; system/ scopes are never approved")
    return str(parsed)


def prefetch_scope(approved: Mapping[str, str]) -> list[str]:
    """The read scopes the approved prefetch templates need (`patient/<Type>.rs` per type read)."""
    types = sorted({t for t in map(template_resource_type, approved.values()) if t})
    return [f"patient/{t}.rs" for t in types]


def service_scope(approved: Mapping[str, str], extra: Iterable[str]) -> str:
    """One service's scope: its own prefetch's read scopes plus what was approved for it; may be
    empty (a service that reads nothing gets no `fhirAuthorization`)."""
    return check_scope([*prefetch_scope(approved), *extra], allow_empty=True)


def check_deadline(seconds: float) -> float:
    if not MIN_DEADLINE <= seconds <= MAX_DEADLINE:
        raise InvalidRequest(f"deadline must be between {MIN_DEADLINE} and {MAX_DEADLINE} seconds")
    return float(seconds)


def check_client_certificate(cert: str | None, key: str | None) -> tuple[str | None, str | None]:
    """Mutual TLS files named by the administrator: absolute paths to regular files that load as
    a PEM certificate chain and its private key. Anything else (a relative path, a directory, a
    device, /etc/passwd) is refused before it is stored, with a message that never quotes the
    file's content."""
    if (cert is None) != (key is None):
        raise InvalidRequest("mutual TLS needs both a client certificate and its key")
    if cert is None or key is None:
        return None, None
    for path in (cert, key):
        if not Path(path).is_absolute():
            raise InvalidRequest(f"the client certificate and key need absolute paths, not {path!r}")
        if not Path(path).is_file():
            raise InvalidRequest(f"no such file: {path}")
    try:
        ssl.create_default_context(ssl.Purpose.SERVER_AUTH).load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError, ValueError):
        raise InvalidRequest(
            "the client certificate and key do not load as a PEM certificate chain and its private key"
        ) from None
    return cert, key


def check_loopback_opt_in(url: str, allow_http_loopback: bool) -> None:
    try:
        check_outbound_url(url, allow_loopback_http=allow_http_loopback)
    except ValueError:
        raise InvalidRequest("a CDS Service URL must be https (plain http only to loopback, by opt-in)") from None


class Registry:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        http: httpx.AsyncClient,
        signer: ClientJwtSigner,
        authserver: AuthserverAdmin,
        *,
        check_template: TemplateCheck,
        supported_hooks: Iterable[str],
        clock: Clock,
        ca_file: Path | None = None,
    ) -> None:
        self._sessions = sessions
        self._http = http
        self._signer = signer
        self._authserver = authserver
        self._check_template = check_template
        self._hooks = frozenset(supported_hooks)
        self._clock = clock
        self._ca_file = ca_file

    # --- adding ---------------------------------------------------------------------------

    async def _discover(self, url: str, approval: Approval) -> list[DiscoveredService]:
        if approval.client_cert_file and approval.client_key_file:
            from ehr.discovery import ClientCertificate, mtls_context

            cert = ClientCertificate(Path(approval.client_cert_file), Path(approval.client_key_file))
            ctx = mtls_context(self._ca_file, cert)
            async with httpx.AsyncClient(
                verify=ctx, timeout=self._http.timeout, follow_redirects=False, trust_env=False
            ) as http:
                return await discover(http, self._signer, url, allow_http_loopback=approval.allow_http_loopback)
        return await discover(self._http, self._signer, url, allow_http_loopback=approval.allow_http_loopback)

    def _approve_prefetch(
        self, service: DiscoveredService, approval: Approval, registration: Registration
    ) -> dict[str, str]:
        wanted = set(service.prefetch)
        if not approval.approve_all_prefetch:
            wanted &= set(approval.prefetch)
        approved: dict[str, str] = {}
        for key in sorted(wanted):
            template = service.prefetch[key]
            reason = self._check_template(template)
            if reason is not None:
                if not approval.approve_all_prefetch:
                    raise InvalidRequest(f"prefetch {key!r} of {service.id} ({template}) is refused: {reason}")
                registration.refused_prefetch.append(
                    {"service": service.id, "hook": service.hook, "key": key, "template": template, "reason": reason}
                )
                continue
            approved[key] = template
        return approved

    async def add(self, discovery_url: str, approval: Approval) -> Registration:
        check_deadline(approval.deadline_seconds)
        check_client_certificate(approval.client_cert_file, approval.client_key_file)
        client_id = approval.client_id or default_client_id(discovery_url)
        if not _CLIENT_ID.fullmatch(client_id):
            raise InvalidRequest("client_id: 1–128 characters of A-Z a-z 0-9 . _ : -")
        unknown_hooks = sorted(set(approval.hooks) - self._hooks)
        if unknown_hooks:
            raise InvalidRequest(f"hook {unknown_hooks[0]!r} is not one this EHR fires")
        discovered = await self._discover(discovery_url, approval)
        base = discovery_url.rstrip("/")
        registration = Registration()
        chosen: list[DiscoveredService] = []
        for service in discovered:
            if service.hook not in self._hooks:
                registration.skipped.append(
                    {"id": service.id, "hook": service.hook, "reason": "this EHR does not fire that hook"}
                )
            elif approval.hooks and service.hook not in approval.hooks:
                registration.skipped.append({"id": service.id, "hook": service.hook, "reason": "hook not approved"})
            else:
                chosen.append(service)
        missing_hooks = sorted(set(approval.hooks) - {s.hook for s in chosen})
        if missing_hooks:
            raise InvalidRequest(f"no service at {base} announces hook {missing_hooks[0]!r}")
        if not chosen:
            raise InvalidRequest(f"nothing to register: {base} announces no service for a hook this EHR fires")
        announced_keys = {k for s in chosen for k in s.prefetch}
        not_announced = sorted(set(approval.prefetch) - announced_keys)
        if not_announced:
            raise InvalidRequest(f"no service at {base} announces prefetch key {not_announced[0]!r}")
        unknown_ids = sorted(set(approval.service_scopes) - {s.id for s in chosen})
        if unknown_ids:
            raise InvalidRequest(f"scope for {unknown_ids[0]!r}: no service at {base} by that id is being registered")
        prefetch = {(s.id, s.hook): self._approve_prefetch(s, approval, registration) for s in chosen}
        common_scope = check_scope(approval.scope, allow_empty=True)
        scopes = {
            (s.id, s.hook): service_scope(
                prefetch[(s.id, s.hook)], [common_scope, *approval.service_scopes.get(s.id, ())]
            )
            for s in chosen
        }
        for service in chosen:
            check_loopback_opt_in(f"{base}/{service.id}", approval.allow_http_loopback)

        replacing = {(base, s.id, s.hook): scopes[(s.id, s.hook)] for s in chosen}
        # The authserver first, outside any EHR transaction (the stack may share one SQLite
        # file): if it refuses, nothing is saved; a retry of `add` is idempotent.
        registration.client = await self._authserver.register_cds_service(
            client_id, chosen[0].title or client_id, await self._client_scope(client_id, replacing)
        )
        now = int(self._clock())
        async with self._sessions() as session, session.begin():
            rows: list[CdsServiceRow] = []
            for service in chosen:
                row = await self._upsert(session, base, service, prefetch[(service.id, service.hook)], now)
                row.scope, row.client_id = scopes[(service.id, service.hook)], client_id
                row.deadline_seconds = approval.deadline_seconds
                row.allow_system_actions = approval.allow_system_actions
                row.allow_http_loopback = approval.allow_http_loopback
                row.client_cert_file, row.client_key_file = approval.client_cert_file, approval.client_key_file
                row.enabled = True
                rows.append(row)
            # A service this discovery URL no longer announces is never called again.
            announced = {(s.id, s.hook) for s in discovered}
            for gone in (
                await session.execute(select(CdsServiceRow).where(CdsServiceRow.discovery_url == base))
            ).scalars():
                if (gone.cds_id, gone.hook) not in announced and gone.enabled:
                    gone.enabled, gone.updated_at = False, now
                    registration.skipped.append(
                        {"id": gone.id, "hook": gone.hook, "reason": "no longer announced; disabled"}
                    )
            await session.flush()
            registration.services = [service_json(r) for r in rows]
        return registration

    async def _upsert(
        self, session: AsyncSession, base: str, service: DiscoveredService, approved: dict[str, str], now: int
    ) -> CdsServiceRow:
        row = (
            await session.execute(
                select(CdsServiceRow).where(
                    CdsServiceRow.discovery_url == base,
                    CdsServiceRow.cds_id == service.id,
                    CdsServiceRow.hook == service.hook,
                )
            )
        ).scalar_one_or_none()
        if row is None:
            row = CdsServiceRow(
                id=await self._free_id(session, service),
                discovery_url=base,
                cds_id=service.id,
                hook=service.hook,
                created_at=now,
            )
            session.add(row)
        row.url = f"{base}/{service.id}"
        row.title = (service.title or "")[:255]
        row.description = service.description
        row.announced_prefetch = json.dumps(service.prefetch, sort_keys=True)
        row.approved_prefetch = json.dumps(approved, sort_keys=True)
        row.updated_at = now
        return row

    async def _free_id(self, session: AsyncSession, service: DiscoveredService) -> str:
        """The EHR's key: the announced id when free, else id.hook, else id.hook-N."""
        candidates = [service.id, f"{service.id}.{service.hook}"]
        candidates += [f"{service.id}.{service.hook}-{n}" for n in range(2, 100)]
        for candidate in candidates:
            if await session.get(CdsServiceRow, candidate[:128]) is None:
                return candidate[:128]
        raise InvalidRequest(f"too many registrations of service {service.id!r}")

    async def _client_scope(
        self, client_id: str, replacing: Mapping[tuple[str, str, str], str], removing: str | None = None
    ) -> str:
        """A client's scope is the union of what its registered services were approved (the
        ceiling of their tokens): the scope in `replacing` for those endpoints, what is recorded
        for the others, none for the service being removed."""
        async with self._sessions() as session:
            rows = (await session.execute(select(CdsServiceRow).where(CdsServiceRow.client_id == client_id))).scalars()
            kept = [r.scope for r in rows if (r.discovery_url, r.cds_id, r.hook) not in replacing and r.id != removing]
        return " ".join(sorted(set(str(parse_scopes(" ".join([*kept, *replacing.values()]))).split())))

    # --- reading and changing ----------------------------------------------------------------

    async def list_all(self) -> list[dict[str, Any]]:
        async with self._sessions() as session:
            rows = (await session.execute(select(CdsServiceRow).order_by(CdsServiceRow.id))).scalars()
            return [service_json(r) for r in rows]

    async def get(self, service_id: str) -> CdsServiceRow:
        async with self._sessions() as session:
            row = await session.get(CdsServiceRow, service_id)
        if row is None:
            raise NotFound(f"no CDS Service {service_id!r}")
        return row

    async def update(self, service_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change approvals of one registered service (keys as in the API's ServicePatch; a
        missing or null value keeps what is recorded). A new `scope` or `prefetch` gives the
        service the read scopes of its approved prefetch plus `scope` (or, when only the prefetch
        changes, plus what it held: to narrow, send `scope` too)."""
        row = await self.get(service_id)
        approved: str | None = None
        if changes.get("prefetch") is not None:
            announced: dict[str, str] = json.loads(row.announced_prefetch)
            chosen: dict[str, str] = {}
            for key in changes["prefetch"]:
                if key not in announced:
                    raise InvalidRequest(f"service {row.id!r} announced no prefetch key {key!r}")
                reason = self._check_template(announced[key])
                if reason is not None:
                    raise InvalidRequest(f"prefetch {key!r} ({announced[key]}) is refused: {reason}")
                chosen[key] = announced[key]
            approved = json.dumps(chosen, sort_keys=True)
        scope: str | None = None
        if changes.get("scope") is not None or approved is not None:
            extra = changes["scope"] if changes.get("scope") is not None else [row.scope]
            scope = service_scope(json.loads(approved or row.approved_prefetch), extra)
        deadline = check_deadline(changes["deadlineSeconds"]) if changes.get("deadlineSeconds") is not None else None
        loopback = row.allow_http_loopback
        if changes.get("allowHttpLoopback") is not None:
            loopback = bool(changes["allowHttpLoopback"])
        check_loopback_opt_in(row.url, loopback)
        cert_change = "clientCertFile" in changes or "clientKeyFile" in changes
        cert = check_client_certificate(changes.get("clientCertFile"), changes.get("clientKeyFile"))
        if scope is not None:
            endpoint = {(row.discovery_url, row.cds_id, row.hook): scope}
            await self._authserver.register_cds_service(
                row.client_id, row.title or row.client_id, await self._client_scope(row.client_id, endpoint)
            )
        async with self._sessions() as session, session.begin():
            current = await session.get(CdsServiceRow, service_id)
            if current is None:
                raise NotFound(f"no CDS Service {service_id!r}")
            if approved is not None:
                current.approved_prefetch = approved
            if scope is not None:
                current.scope = scope
            if deadline is not None:
                current.deadline_seconds = deadline
            if changes.get("allowSystemActions") is not None:
                current.allow_system_actions = bool(changes["allowSystemActions"])
            current.allow_http_loopback = loopback
            if cert_change:
                current.client_cert_file, current.client_key_file = cert
            if changes.get("enabled") is not None:
                current.enabled = bool(changes["enabled"])
            current.updated_at = int(self._clock())
            await session.flush()
            return service_json(current)

    async def disable(self, service_id: str) -> dict[str, Any]:
        return await self.update(service_id, {"enabled": False})

    async def remove(self, service_id: str) -> dict[str, Any]:
        """Delete one registration; its id is free again. The exchange log keeps its rows (the
        record of what was sent to and received from the service stays auditable). The
        provider's client shrinks to the union of the services left (no token for this service's
        scopes is issued again), or is disabled at the authorization server when none is left."""
        row = await self.get(service_id)
        left = await self._client_scope(row.client_id, {}, removing=row.id)
        async with self._sessions() as session:
            others = (
                await session.execute(
                    select(CdsServiceRow.id).where(CdsServiceRow.client_id == row.client_id, CdsServiceRow.id != row.id)
                )
            ).first()
        # The authserver first: if it cannot be told, the registration stays and `remove` can be retried.
        if others is not None:
            client = await self._authserver.register_cds_service(row.client_id, row.title or row.client_id, left)
        else:
            client = await self._authserver.disable_client(row.client_id)
        async with self._sessions() as session, session.begin():
            current = await session.get(CdsServiceRow, service_id)
            if current is not None:
                await session.delete(current)
        return {"removed": service_json(row), "client": client}

    async def enabled_for(self, hook: str, only: Sequence[str] | None = None) -> list[ServiceConfig]:
        """The allow-listed services to call for `hook` (restricted to `only` when given).

        Naming a service that is unknown, disabled or registered for another hook is an error,
        so a caller never believes a service was asked when it was not.
        """
        async with self._sessions() as session:
            query = select(CdsServiceRow).where(CdsServiceRow.hook == hook, CdsServiceRow.enabled.is_(True))
            if only:
                query = query.where(CdsServiceRow.id.in_(list(only)))
            rows = list((await session.execute(query.order_by(CdsServiceRow.id))).scalars())
        if only:
            missing = sorted(set(only) - {r.id for r in rows})
            if missing:
                raise InvalidRequest(f"service {missing[0]!r} is not an enabled CDS Service for hook {hook!r}")
        return [service_config(r) for r in rows]
