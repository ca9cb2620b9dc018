"""`mockehr services …` and `mockehr hook …`: the running EHR's admin API from the command line.

The commands talk to `https://localhost:<base port>` (the EHR), verify its certificate against
the data dir's CA, and authenticate with the data dir's admin token (or MOCKEHR_ADMIN_TOKEN).
They never touch the database directly: the EHR does discovery, approvals and the
authorization server registration, exactly as the admin UI does.
"""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from common.errors import ConfigError
from common.tls import client_ssl_context
from mockehr.stack import Stack

HOOK_TIMEOUT_SECONDS = 60.0


class EhrApi:
    """A small synchronous client of the EHR's JSON API, as the administrator."""

    def __init__(self, stack: Stack, *, timeout: float = HOOK_TIMEOUT_SECONDS) -> None:
        self.base_url = stack.base_url("ehr")
        token = os.environ.get("MOCKEHR_ADMIN_TOKEN") or _read_token(stack.data_dir / "admin-token")
        try:
            verify = client_ssl_context(stack.data_dir / "ca.pem")
        except ssl.SSLError as exc:
            raise ConfigError(f"cannot load the CA {stack.data_dir / 'ca.pem'}: {exc.reason or exc}") from None
        self._client = httpx.Client(
            base_url=self.base_url,
            verify=verify,
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )

    def __enter__(self) -> EhrApi:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._client.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ConfigError(
                f"cannot reach the EHR at {self.base_url} ({type(exc).__name__}); is `mockehr up` running?"
            ) from None
        if response.status_code == 401:
            raise ConfigError("the EHR refused the admin token (is this the data dir `mockehr up` uses?)")
        try:
            data = response.json()
        except ValueError:
            raise ConfigError(f"the EHR answered {response.status_code} without JSON") from None
        if response.status_code >= 400:
            message = data.get("message") if isinstance(data, dict) else None
            raise ConfigError(str(message or f"the EHR answered {response.status_code}"))
        return data


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        raise ConfigError(f"no admin token at {path} (run `mockehr up` or `mockehr init` first)") from None
    # A header value must be one line of visible ASCII (RFC 9110 §5.5); never send a broken one.
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(f"the admin token in {path} is empty or not one printable word")
    return token


def _absolute(path: Path | None) -> str | None:
    if path is None:
        return None
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    return str(path.resolve())


def add_body(
    discovery_url: str,
    *,
    approve_all_prefetch: bool,
    prefetch: list[str],
    scope: list[str],
    client_id: str | None,
    service_scope: list[str] | None = None,
    hooks: list[str],
    deadline: float,
    allow_system_actions: bool,
    allow_http_loopback: bool,
    client_cert: Path | None,
    client_key: Path | None,
) -> dict[str, Any]:
    if (client_cert is None) != (client_key is None):
        raise ConfigError("--client-cert and --client-key go together")
    body: dict[str, Any] = {
        "discoveryUrl": discovery_url,
        "approveAllPrefetch": approve_all_prefetch,
        "prefetch": prefetch,
        "scope": scope,
        "serviceScopes": service_scopes(service_scope or []),
        "hooks": hooks,
        "deadlineSeconds": deadline,
        "allowSystemActions": allow_system_actions,
        "allowHttpLoopback": allow_http_loopback,
        "clientCertFile": _absolute(client_cert),
        "clientKeyFile": _absolute(client_key),
    }
    if client_id:
        body["clientId"] = client_id
    return body


def service_scopes(values: list[str]) -> dict[str, list[str]]:
    """`--service-scope ID=SCOPE` (repeat): scopes approved for one announced service alone."""
    scopes: dict[str, list[str]] = {}
    for value in values:
        service_id, sep, scope = value.partition("=")
        if not sep or not service_id.strip() or not scope.strip():
            raise ConfigError(f"--service-scope {value!r}: give ID=SCOPE, e.g. vitals=patient/Observation.rs")
        scopes.setdefault(service_id.strip(), []).extend(scope.split())
    return scopes


def print_registration(out: Console, registration: dict[str, Any]) -> None:
    print_services(out, registration.get("services", []))
    for service in registration.get("services", []):
        if not service.get("scope"):
            out.print(
                f"{service['id']}: no scope approved, so it is called without fhirAuthorization "
                f"(approve one with --service-scope {service['cdsId']}=SCOPE)",
                highlight=False,
            )
    for skipped in registration.get("skipped", []):
        out.print(f"skipped {skipped['id']} ({skipped['hook']}): {skipped['reason']}", highlight=False)
    for refused in registration.get("refusedPrefetch", []):
        out.print(
            f"prefetch {refused['key']} of {refused['service']} not approved ({refused['template']}): "
            f"{refused['reason']}",
            highlight=False,
        )
    client = registration.get("client") or {}
    if client:
        out.print(f"client {client.get('client_id')} at the authorization server, scope: {client.get('scope')}")


def print_services(out: Console, services: list[dict[str, Any]]) -> None:
    table = Table("id", "hook", "url", "enabled", "approved prefetch", "scope", "client")
    for s in services:
        table.add_row(
            s["id"],
            s["hook"],
            s["url"],
            "yes" if s["enabled"] else "no",
            ", ".join(sorted(s["approvedPrefetch"])) or "-",
            s["scope"] or "- (no fhirAuthorization)",
            s["clientId"],
        )
    out.print(table)


def check_hook(hook: str) -> None:
    from ehr.hooks import HOOKS

    if hook not in HOOKS:
        raise ConfigError(f"unknown hook {hook!r}: one of {', '.join(HOOKS)}")


def user_reference(stack: Stack, user: str) -> str:
    """`Practitioner/<id>` (or another user reference) as given, or a demo login looked up in the
    data dir's demo-users.json (what `up` printed)."""
    from ehr.hooks import USER_TYPES

    if "/" in user:
        if user.split("/", 1)[0] not in USER_TYPES:
            raise ConfigError(f"--user {user!r}: a reference must start with one of {', '.join(USER_TYPES)}")
        return user
    path = stack.data_dir / "demo-users.json"
    try:
        users = json.loads(path.read_text())
    except (OSError, ValueError):
        users = {}
    found = users.get(user) if isinstance(users, dict) else None
    if not isinstance(found, dict) or not isinstance(found.get("fhirUser"), str):
        logins = ", ".join(sorted(users)) if isinstance(users, dict) and users else "none"
        raise ConfigError(f"--user {user!r} is neither Practitioner/<id> nor a login in {path} (logins: {logins})")
    return str(found["fhirUser"])


def logical_id(resource_type: str, value: str) -> str:
    """`<id>` or `<resource_type>/<id>` → `<id>`; a reference to another type is refused."""
    kind, slash, rest = value.partition("/")
    if not slash:
        return value
    if kind != resource_type or "/" in rest:
        raise ConfigError(f"{value!r}: give <id> or {resource_type}/<id>")
    return rest


def hook_body(
    user: str, patient: str, encounter: str | None, services: list[str], context: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"userId": user, "patientId": patient}
    if encounter:
        body["encounterId"] = encounter
    if services:
        body["services"] = services
    if context:
        try:
            extra = json.loads(context)
        except ValueError:
            raise ConfigError("--context must be a JSON object") from None
        if not isinstance(extra, dict):
            raise ConfigError("--context must be a JSON object")
        body["context"] = extra
    return body


def _links(card: dict[str, Any]) -> str:
    parts = [f"{s.get('label', '')}" for s in card.get("suggestions") or []]
    parts += [f"{link.get('label', '')} ({link.get('type', 'absolute')})" for link in card.get("links") or []]
    return "\n".join(parts) or "-"


def print_hook_result(out: Console, result: dict[str, Any], exchange: dict[str, Any] | None) -> None:
    out.print(f"hookInstance {result['hookInstance']} ({result['hook']})", highlight=False)
    if exchange is not None:
        for service in exchange.get("services", []):
            out.print(f"request to {service['serviceId']} (secrets redacted):", highlight=False)
            out.print_json(json.dumps(service.get("request")))
    if not result["services"]:
        out.print("no enabled CDS Service is registered for this hook")
        return
    table = Table("service", "indicator", "summary", "source", "suggestions / links")
    for service in result["services"]:
        for card in service.get("cards", []):
            table.add_row(
                service["serviceId"],
                str(card.get("indicator", "")),
                str(card.get("summary", "")),
                str((card.get("source") or {}).get("label", "")),
                _links(card),
            )
    out.print(table)
    for service in result["services"]:
        sid = service["serviceId"]
        if service["status"] != "ok":
            out.print(f"[red]{sid}: error[/red] {service.get('reason', '')}", highlight=False)
        elif not service.get("cards"):
            out.print(f"{sid}: no cards", highlight=False)
        for dropped in service.get("dropped", []):
            out.print(f"{sid}: card {dropped['index']} dropped: {dropped['reason']}", highlight=False)
        for note in service.get("notes", []):
            out.print(f"{sid}: {note}", highlight=False)
        applied = service.get("systemActionsResult")
        if applied is not None:
            state = "applied" if applied.get("applied") else f"not applied: {applied.get('reason')}"
            out.print(f"{sid}: systemActions {state}", highlight=False)


def register_example_service(stack: Stack) -> str:
    """`mockehr up`: allow-list the example CDS Service once the stack is ready (idempotent).

    Discovery URL `https://localhost:<base+3>/cds-services`, client `cds-example`, every announced
    prefetch template that is an allowed query form, the scopes `init` registered the client
    with. A later `up` leaves an existing registration alone, so an administrator's changes
    (a disabled service, a narrower prefetch) are kept.
    """
    from mockehr.registry import CDS_EXAMPLE_CLIENT_ID, CDS_EXAMPLE_SCOPE

    discovery_url = stack.url("cds-example")
    with EhrApi(stack) as api:
        existing = api.call("GET", "/api/services")["services"]
        if any(s["discoveryUrl"] == discovery_url for s in existing):
            return f"example CDS Service already registered ({discovery_url})"
        registration = api.call(
            "POST",
            "/api/services",
            {
                "discoveryUrl": discovery_url,
                "clientId": CDS_EXAMPLE_CLIENT_ID,
                "approveAllPrefetch": True,
                "scope": CDS_EXAMPLE_SCOPE.split(),
            },
        )
    ids = ", ".join(s["id"] for s in registration["services"])
    return f"example CDS Service registered: {ids}"
