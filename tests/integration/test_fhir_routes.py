"""Every FHIR route but the two a client reads before it has a token is behind the guard.

The routes are taken from the app itself, so a route added later is covered too. A request
without a token is refused with the bare 401 of RFC 6750 §3 before anything of it is read: an
anonymous caller cannot make the server parse and judge a body, nor learn its limits from the
answers (before fhirserver/routes.py, POST /fhir judged the Bundle — type, entries, size — and
the create and update routes the body's media type and JSON before asking for a token).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from starlette.routing import BaseRoute, Route

from fhirserver.app import create_app as create_fhirserver
from fhirserver.settings import FhirSettings
from tests.integration.apps import serving

AUTH = "https://auth.test"
FHIR = "https://fhir.test"
PUBLIC = {("GET", "/fhir/metadata"), ("GET", "/fhir/.well-known/smart-configuration")}
GUARDED = {
    ("POST", "/fhir"),
    ("GET", "/fhir/Patient/{rid}/$everything"),
    ("GET", "/fhir/{rtype}"),
    ("POST", "/fhir/{rtype}/_search"),
    ("GET", "/fhir/{rtype}/_history"),
    ("GET", "/fhir/{rtype}/{rid}"),
    ("GET", "/fhir/{rtype}/{rid}/_history"),
    ("GET", "/fhir/{rtype}/{rid}/_history/{vid}"),
    ("POST", "/fhir/{rtype}"),
    ("PUT", "/fhir/{rtype}/{rid}"),
    ("DELETE", "/fhir/{rtype}/{rid}"),
}
# What an anonymous caller sends along: a batch past the entry limit (1 here) whose entry is not
# a list, as JSON the create and update routes would refuse by media type.
BODY = b'{"resourceType": "Bundle", "type": "batch", "entry": [1, 2]}'
PARAMS = {"rtype": "Patient", "rid": "p1", "vid": "1"}
MEDIA_TYPES = ("application/fhir+json", "text/plain")


def _fhir_routes(routes: list[BaseRoute]) -> set[tuple[str, str]]:
    """(method, path) of every /fhir route, those of included routers too."""
    found: set[tuple[str, str]] = set()
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's included router
        if included is not None:
            found |= _fhir_routes(included.routes)
        elif isinstance(route, Route) and route.path.startswith("/fhir"):
            found |= {(method, route.path) for method in route.methods or () if method != "HEAD"}
    return found


async def test_every_fhir_route_but_the_public_two_refuses_a_request_without_a_token_before_reading_it(
    tmp_path: Path, database_url: str
) -> None:
    settings = FhirSettings(
        data_dir=tmp_path, database_url=database_url, public_url=FHIR, authserver_url=AUTH, max_bundle_entries=1
    )
    app = create_fhirserver(settings)
    routes = _fhir_routes(app.routes)
    assert routes == GUARDED | PUBLIC
    async with serving(app, FHIR) as client:
        for (method, template), media_type in itertools.product(sorted(GUARDED), MEDIA_TYPES):
            path = re.sub(r"\{(\w+)\}", lambda m: PARAMS[m.group(1)], template)
            body = BODY if method in ("POST", "PUT") else None
            response = await client.request(method, path, content=body, headers={"Content-Type": media_type})
            assert response.status_code == 401, (method, template, media_type, response.status_code, response.text)
            assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"', (method, template)
            assert response.content == b"", (method, template, response.text)
        for method, path in sorted(PUBLIC):
            assert (await client.request(method, path)).status_code == 200, (method, path)
