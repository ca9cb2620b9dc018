"""The FHIR RESTful API's routes (http://hl7.org/fhir/R4/http.html), at module level.

Only /fhir/metadata and /fhir/.well-known/smart-configuration answer without a token. Every other
route — batch and transaction included — takes the guard as a dependency (`Guarded`): the Accept
header, then the bearer token, are judged before anything of the request is read, and the
handler gets a `FhirCall` that runs its interaction in a database session and records it. The
work itself is in fhirserver.rest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from fhirserver import rest
from fhirserver.capability import capability_statement, smart_configuration
from fhirserver.compartments import COMPARTMENT_TYPES
from fhirserver.errors import FhirError
from fhirserver.guard import ForbiddenError
from fhirserver.negotiation import check_accept
from fhirserver.state import FhirState, StateDep, fhir_state

__all__ = ["FhirCall", "Guarded", "guarded", "install_routes", "router"]

Interaction = Callable[[AsyncSession, rest.Context], Awaitable[Response]]
router = APIRouter()


@dataclass(frozen=True)
class FhirCall:
    """A request that passed the guard: who asks (`ctx`), and the state to serve it from."""

    state: FhirState
    ctx: rest.Context

    async def run(self, interaction: Interaction, *, name: str, target: str, read_only: bool = False) -> Response:
        """`interaction` in one database session (a transaction unless `read_only`), recorded as
        an AuditEvent for a CDS Service's token whatever its outcome."""
        status = 500
        try:
            if read_only:
                async with self.state.read_sessions() as session:
                    response = await interaction(session, self.ctx)
            else:
                async with self.state.runtime.sessions() as session, session.begin():
                    response = await interaction(session, self.ctx)
            status = response.status_code
            return response
        except FhirError as exc:
            status = exc.status
            raise
        except ForbiddenError:
            status = 403
            raise
        finally:
            self.ctx.record(name, target, status)

    async def batch(self, bundle: dict[str, Any]) -> Response:
        """A batch: each entry in its own transaction, each through the guard (rest.batch)."""
        response = await rest.batch(self.state.runtime.sessions, self.ctx, bundle, self.state.cursor_key)
        self.ctx.record("batch", f"Bundle ({len(bundle.get('entry') or [])} entries)", response.status_code)
        return response


async def guarded(request: Request, state: StateDep) -> FhirCall:
    """The guard as a dependency: 406 for an Accept the server cannot answer, 401 without a valid
    token, 503 when revocations are not known to be current; else the caller's context."""
    check_accept(request)
    principal = await state.guard.principal(request.headers.get("authorization"))
    ctx = rest.Context(request, principal, state.guard, state.settings, state.audit, state.clock())
    return FhirCall(state, ctx)


Guarded = Annotated[FhirCall, Depends(guarded)]


def _query(request: Request) -> list[tuple[str, str]]:
    return [(k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True) if k != "_format"]


# --- public: what a client reads before it has a token ------------------------------------------


@router.get("/fhir/metadata")
async def metadata(state: StateDep) -> Response:
    return rest.fhir_response(capability_statement(state.settings, state.started))


@router.get("/fhir/.well-known/smart-configuration")
async def smart(state: StateDep) -> JSONResponse:
    return JSONResponse(smart_configuration(state.settings), headers={"Cache-Control": "public, max-age=300"})


# --- behind the guard (route order matters: literal segments before {rid}) ---------------------


@router.post("/fhir")
async def bundle(request: Request, call: Guarded) -> Response:
    body = await rest.json_body(request, call.state.settings.max_json_depth)
    if rest.bundle_kind(body, call.state.settings.max_bundle_entries) == "batch":
        return await call.batch(body)
    return await call.run(lambda s, c: rest.transaction(s, c, body), name="transaction", target="Bundle")


@router.get("/fhir/Patient/{rid}/$everything")
async def everything(rid: str, call: Guarded) -> Response:
    return await call.run(
        lambda s, c: rest.everything(s, c, rid, COMPARTMENT_TYPES),
        name="operation",
        target=f"Patient/{rid}/$everything",
        read_only=True,
    )


async def _guarded_get(request: Request) -> FhirCall:
    """The hottest routes are plain Starlette routes: FastAPI's per-request dependency solving
    costs more than the guard (docs/performance.md). They resolve the same dependency, first."""
    if request.method != "GET":  # Starlette routes also take HEAD for GET; answered as before: 405
        raise StarletteHTTPException(status_code=405)
    return await guarded(request, fhir_state(request.app))


async def search_get(request: Request) -> Response:
    call = await _guarded_get(request)
    rtype: str = request.path_params["rtype"]
    params = _query(request)
    return await call.run(
        lambda s, c: rest.search_type(s, c, rtype, params, call.state.cursor_key),
        name="search-type",
        target=f"{rtype}?{request.url.query}",
        read_only=True,
    )


router.add_route("/fhir/{rtype}", search_get, methods=["GET"])


@router.post("/fhir/{rtype}/_search")
async def search_post(rtype: str, request: Request, call: Guarded) -> Response:
    form = await request.form()
    params = _query(request) + [(k, str(v)) for k, v in form.multi_items()]
    return await call.run(
        lambda s, c: rest.search_type(s, c, rtype, params, call.state.cursor_key),
        name="search-type",
        target=f"{rtype}/_search",
        read_only=True,
    )


@router.get("/fhir/{rtype}/_history")
async def history_type(rtype: str, call: Guarded) -> Response:
    return await call.run(
        lambda s, c: rest.type_history(s, c, rtype), name="history-type", target=f"{rtype}/_history", read_only=True
    )


async def read(request: Request) -> Response:
    call = await _guarded_get(request)
    rtype: str = request.path_params["rtype"]
    rid: str = request.path_params["rid"]
    return await call.run(
        lambda s, c: rest.read(s, c, rtype, rid), name="read", target=f"{rtype}/{rid}", read_only=True
    )


router.add_route("/fhir/{rtype}/{rid}", read, methods=["GET"])


@router.get("/fhir/{rtype}/{rid}/_history")
async def history_instance(rtype: str, rid: str, call: Guarded) -> Response:
    return await call.run(
        lambda s, c: rest.instance_history(s, c, rtype, rid),
        name="history-instance",
        target=f"{rtype}/{rid}/_history",
        read_only=True,
    )


@router.get("/fhir/{rtype}/{rid}/_history/{vid}")
async def vread(rtype: str, rid: str, vid: str, call: Guarded) -> Response:
    return await call.run(
        lambda s, c: rest.vread(s, c, rtype, rid, vid),
        name="vread",
        target=f"{rtype}/{rid}/_history/{vid}",
        read_only=True,
    )


@router.post("/fhir/{rtype}")
async def create(rtype: str, request: Request, call: Guarded) -> Response:
    body = await rest.json_body(request, call.state.settings.max_json_depth)
    return await call.run(lambda s, c: rest.create(s, c, rtype, body), name="create", target=rtype)


@router.put("/fhir/{rtype}/{rid}")
async def update(rtype: str, rid: str, request: Request, call: Guarded) -> Response:
    body = await rest.json_body(request, call.state.settings.max_json_depth)
    return await call.run(lambda s, c: rest.update(s, c, rtype, rid, body), name="update", target=f"{rtype}/{rid}")


@router.delete("/fhir/{rtype}/{rid}")
async def delete(rtype: str, rid: str, call: Guarded) -> Response:
    return await call.run(lambda s, c: rest.delete(s, c, rtype, rid), name="delete", target=f"{rtype}/{rid}")


def install_routes(app: FastAPI) -> None:
    """The routes above, in their order, on the app's own router. Not `include_router`: FastAPI
    matches an included router's routes through one more layer per request (~0.1 ms measured on
    a trivial route), as much as the plain Starlette routes above save."""
    for route in router.routes:
        if isinstance(route, APIRoute):
            app.router.add_api_route(route.path, route.endpoint, methods=sorted(route.methods or ()), name=route.name)
        elif isinstance(route, Route):
            methods = sorted((route.methods or set()) - {"HEAD"})  # Starlette adds HEAD to GET itself
            app.router.add_route(route.path, route.endpoint, methods=methods, name=route.name)
