"""The admin API (admin token): the client registry.

`Authorization: Bearer <admin token>` (the value in `<data_dir>/admin-token` in development, or
MOCKEHR_AUTH_ADMIN_TOKEN). Anything else gets a bare 401 (error_responses.py).
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError

from authserver import clients
from authserver.clients import Client, ClientError
from authserver.deps import RuntimeDep, SettingsDep, StateDep
from authserver.errors import AdminUnauthorizedError, InvalidRequestError
from common.bodies import parse_json
from common.errors import TokenInvalidError
from common.scopes import InvalidScopeError


class ClientIn(BaseModel):
    client_id: str
    kind: str
    name: str = ""
    auth_method: str = "private_key_jwt"
    scope: str = ""
    first_party: bool = False
    active: bool = True
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    redirect_uris: list[str] = Field(default_factory=list)
    launch_url: str | None = None
    client_secret: str | None = None


def _client_in(raw: bytes, max_depth: int) -> ClientIn:
    try:
        return ClientIn.model_validate(parse_json(raw, max_depth=max_depth))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequestError(f"{where}: {first['msg']}") from None
    except ValueError:
        raise InvalidRequestError("the body must be a JSON object") from None


def require_admin(request: Request, state: StateDep) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), state.admin_secret.encode()):
        raise AdminUnauthorizedError


# A router-level dependency runs before the body is validated: no field list for strangers.
router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


@router.get("/clients")
async def list_clients(runtime: RuntimeDep) -> JSONResponse:
    async with runtime.sessions() as session:
        return JSONResponse([c.public_json() for c in await clients.list_all(session)])


def _client_of(body: ClientIn) -> Client:
    return Client(
        client_id=body.client_id,
        kind=body.kind,  # type: ignore[arg-type]
        name=body.name or body.client_id,
        auth_method=body.auth_method,  # type: ignore[arg-type]
        scope=body.scope,
        first_party=body.first_party,
        active=body.active,
        jwks=body.jwks,
        jwks_uri=body.jwks_uri,
        redirect_uris=tuple(body.redirect_uris),
        launch_url=body.launch_url,
    )


@router.put("/clients/{client_id}")
async def put_client(client_id: str, request: Request, runtime: RuntimeDep, settings: SettingsDep) -> JSONResponse:
    # Parsed here, after require_admin: as a Body parameter FastAPI would parse it first, and
    # answer a stranger's malformed body with 422 and the parser's findings.
    body = _client_in(await request.body(), settings.max_json_depth)
    if body.client_id != client_id:
        raise InvalidRequestError("client_id in the path and the body differ")
    try:
        async with runtime.sessions() as session, session.begin():
            saved = await clients.register(session, _client_of(body), body.client_secret)
    except (ClientError, InvalidScopeError, TokenInvalidError) as exc:
        raise InvalidRequestError(str(exc)) from None
    return JSONResponse(saved.public_json())


@router.post("/clients/{client_id}/disable")
async def disable(client_id: str, runtime: RuntimeDep) -> Response:
    async with runtime.sessions() as session, session.begin():
        found = await clients.set_active(session, client_id, False)
    return Response(status_code=204 if found else 404)
