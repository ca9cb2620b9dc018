"""Where a service's data comes from: prefetch first, then the EHR's FHIR server.

CDS Hooks 2.0 §Prefetch: a key the CDS Client sent is used as is — a resource, `null` (a read
that found nothing) or a searchset Bundle. A key that is missing, or that carries an
OperationOutcome (the client's fetch failed), is fetched here from `fhirServer` with
`fhirAuthorization` (§FHIR Resource Access), using the same query the template describes, with
context values URL-encoded so a value such as `1&_id=2` cannot add a parameter.

Outbound calls go only to FHIR servers on this service's allow-list (`fhir_servers`): a request
naming any other `fhirServer` causes no outbound call at all (SSRF), and the service then
answers 412 if its prefetch was not enough. The access token is held as a SecretStr, sent only to
that server, and never logged.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from examples.cds_service.errors import DataUnavailable
from examples.cds_service.knowledge import items
from examples.cds_service.schemas import HookRequest
from examples.cds_service.settings import CdsSettings

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"
_TOKEN = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
Resource = dict[str, Any]


def render(template: str, context: dict[str, Any]) -> str:
    """Substitute `{{context.<name>}}` tokens with URL-encoded string values from the context."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        found = context.get(name.removeprefix("context.")) if name.startswith("context.") else None
        if not isinstance(found, str) or not found:
            raise DataUnavailable(f"prefetch token {{{{{name}}}}} cannot be filled")
        return quote(found, safe="")

    return _TOKEN.sub(value, template)


def allowed_fhir_server(request: HookRequest, settings: CdsSettings) -> str | None:
    """The request's fhirServer if it is on the allow-list, else None (and nothing will be called)."""
    if request.fhirServer is None:
        return None
    server = request.fhirServer.rstrip("/")
    if server in settings.fhir_servers:
        return server
    log.warning("fhirServer is not on this service's allow-list: no FHIR call will be made")
    return None


def _resource_type(template: str) -> str:
    return template.split("?", 1)[0].split("/", 1)[0]


def _is_outcome(value: object) -> bool:
    return isinstance(value, dict) and value.get("resourceType") == "OperationOutcome"


def _bundle_resources(bundle: object, rtype: str) -> list[Resource] | None:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return None
    found: list[Resource] = []
    for entry in items(bundle.get("entry")):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == rtype:
            found.append(resource)
    return found


class DataSource:
    """Prefetch plus FHIR fallback for one hook call."""

    def __init__(self, request: HookRequest, http: httpx.AsyncClient, settings: CdsSettings) -> None:
        self._prefetch = request.prefetch or {}
        self._context = request.context
        self._http = http
        self._settings = settings
        self._server = allowed_fhir_server(request, settings)
        auth = request.fhirAuthorization
        self._token: SecretStr | None = auth.access_token if auth is not None else None

    async def read(self, key: str, template: str) -> Resource | None:
        """A read template (`Type/{{context.x}}`): the resource, or None when it does not exist."""
        rtype = _resource_type(template)
        if key in self._prefetch:
            value = self._prefetch[key]
            if value is None:
                return None
            if isinstance(value, dict) and value.get("resourceType") == rtype:
                return value
            if not _is_outcome(value):
                log.info("prefetch %r is not a %s; fetching it", key, rtype)
        fetched = await self._get(key, template, read=True)
        if fetched is None:
            return None
        if fetched.get("resourceType") != rtype:
            raise DataUnavailable(f"{key}: the FHIR server did not return a {rtype}")
        return fetched

    async def search(self, key: str, template: str) -> list[Resource]:
        """A search template (`Type?...`): the matching resources of the searchset Bundle."""
        rtype = _resource_type(template)
        if key in self._prefetch:
            found = _bundle_resources(self._prefetch[key], rtype)
            if found is not None:
                return found
            if not _is_outcome(self._prefetch[key]):
                log.info("prefetch %r is not a Bundle; fetching it", key)
        resources = _bundle_resources(await self._get(key, template, read=False), rtype)
        if resources is None:
            raise DataUnavailable(f"{key}: the FHIR server did not return a Bundle")
        return resources

    async def _get(self, key: str, template: str, *, read: bool) -> Resource | None:
        if self._server is None or self._token is None:
            raise DataUnavailable(f"{key}: not prefetched and no usable fhirServer/fhirAuthorization")
        url = f"{self._server}/{render(template, self._context)}"
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}", "Accept": FHIR_JSON}
        limit = self._settings.max_fhir_response_bytes
        try:
            async with self._http.stream(
                "GET", url, headers=headers, timeout=self._settings.fhir_timeout_seconds
            ) as response:
                if read and response.status_code in (404, 410):
                    return None
                if response.status_code != 200:
                    raise DataUnavailable(f"{key}: the FHIR server answered {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise DataUnavailable(f"{key}: the FHIR response exceeds {limit} bytes")
        except httpx.HTTPError as exc:
            raise DataUnavailable(f"{key}: the FHIR server could not be reached ({type(exc).__name__})") from None
        try:
            data = json.loads(bytes(body))
        except ValueError:
            raise DataUnavailable(f"{key}: the FHIR response is not JSON") from None
        if not isinstance(data, dict):
            raise DataUnavailable(f"{key}: the FHIR response is not a resource")
        return data
