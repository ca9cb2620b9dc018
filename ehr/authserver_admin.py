"""The EHR registers each approved CDS Service as an OAuth client at the authorization server
(its admin API, `PUT /admin/clients/{id}` with the admin token).

CDS Hooks 2.0 "Passing the Access Token to the CDS Service": a service must be pre-registered
at the authorization server before it gets any data, and its client_id becomes
`fhirAuthorization.subject`. The scopes registered are the most any per-call token for that
service can carry (the token exchange narrows further to the user).
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx

from common.clock import Clock
from ehr.errors import Conflict, UpstreamFailed

SMART_URLS_TTL_SECONDS = 5.0


class RegistrationRefused(Exception):
    """The admin API refused a registration; the message is its error_description."""


def smart_apps(registered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Active SMART apps with a launch URL, by name (the chart's Apps menu). Read from the
    registry at each request, never cached, so a disabled app disappears at once."""
    found = [c for c in registered if c.get("kind") == "smart-app" and c.get("active") and c.get("launch_url")]
    return sorted(found, key=lambda c: str(c.get("name") or c.get("client_id")).lower())


class AuthserverAdmin:
    def __init__(self, http: httpx.AsyncClient, base_url: str, admin_token: str, *, clock: Clock) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._token = admin_token
        self._clock = clock
        self._smart_urls: tuple[float, frozenset[str]] | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            return await self._http.request(method, f"{self._base}{path}", json=body, headers=self._headers())
        except httpx.HTTPError as exc:
            raise UpstreamFailed(f"the authorization server is unreachable ({type(exc).__name__})") from None

    async def get_client(self, client_id: str) -> dict[str, Any] | None:
        return next((c for c in await self.list_clients() if c.get("client_id") == client_id), None)

    async def list_clients(self) -> list[dict[str, Any]]:
        response = await self._call("GET", "/admin/clients")
        if response.status_code != 200:
            raise UpstreamFailed(f"the authorization server's admin API answered {response.status_code}")
        body = response.json()
        return [c for c in body if isinstance(c, dict)] if isinstance(body, list) else []

    async def smart_launch_urls(self) -> frozenset[str]:
        """The launch URLs of active SMART apps: a card's smart link must name one,
        cached briefly so a hook call costs no admin round trip in the common case."""
        now = self._clock()
        if self._smart_urls is not None and now - self._smart_urls[0] < SMART_URLS_TTL_SECONDS:
            return self._smart_urls[1]
        urls = frozenset(
            str(c["launch_url"])
            for c in await self.list_clients()
            if c.get("kind") == "smart-app" and c.get("active") and c.get("launch_url")
        )
        self._smart_urls = (now, urls)
        return urls

    async def register_smart_app(self, body: dict[str, Any]) -> dict[str, Any]:
        """A new SMART app, validated by the authorization server itself (the admin API's rules,
        its message passed on). An existing client_id is refused, never overwritten."""
        client_id = str(body.get("client_id") or "")
        if await self.get_client(client_id) is not None:
            raise Conflict(f"client {client_id!r} is already registered")
        response = await self._call("PUT", f"/admin/clients/{client_id}", {**body, "kind": "smart-app"})
        if response.status_code == 400:
            detail = ""
            with contextlib.suppress(ValueError, AttributeError):
                detail = str(response.json().get("error_description", ""))
            raise RegistrationRefused(detail or "the authorization server refused the registration")
        if response.status_code != 200:
            raise UpstreamFailed(f"the authorization server's admin API answered {response.status_code}")
        saved: dict[str, Any] = response.json()
        return saved

    async def register_cds_service(self, client_id: str, name: str, scope: str) -> dict[str, Any]:
        """Create the service's client, or update the scope of an existing one (keys kept)."""
        existing = await self.get_client(client_id)
        body: dict[str, Any] = {
            "client_id": client_id,
            "kind": "cds-service",
            "name": name,
            "auth_method": "none",
            "scope": scope,
            "active": True,
        }
        if existing is not None:
            if existing.get("kind") != "cds-service":
                kind = existing.get("kind")
                raise Conflict(f"client {client_id!r} is registered at the authorization server as {kind}")
            if existing.get("auth_method") == "client_secret_basic":
                # The admin API never returns a secret, so a PUT would drop it: leave it to the admin.
                raise Conflict(
                    f"client {client_id!r} authenticates with a secret; update its scope with `mockehr clients add`"
                )
            body.update(
                name=existing.get("name") or name,
                auth_method=existing.get("auth_method", "none"),
                jwks=existing.get("jwks"),
                jwks_uri=existing.get("jwks_uri"),
            )
        response = await self._call("PUT", f"/admin/clients/{client_id}", body)
        if response.status_code != 200:
            detail = ""
            with contextlib.suppress(ValueError, AttributeError):
                detail = str(response.json().get("error_description", ""))
            raise UpstreamFailed(
                f"the authorization server refused client {client_id!r} ({response.status_code})"
                + (f": {detail}" if detail else "")
            )
        saved: dict[str, Any] = response.json()
        return saved

    async def disable_client(self, client_id: str) -> dict[str, Any]:
        """Deactivate a CDS Service's client once no service of its provider is registered (the
        admin API keeps the record, so a later `add` re-enables the same client_id)."""
        existing = await self.get_client(client_id)
        if existing is None or existing.get("kind") != "cds-service":
            return {"client_id": client_id, "active": False}
        response = await self._call("POST", f"/admin/clients/{client_id}/disable")
        if response.status_code not in (200, 204):
            raise UpstreamFailed(f"the authorization server's admin API answered {response.status_code}")
        return {**existing, "active": False}
