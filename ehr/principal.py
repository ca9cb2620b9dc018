"""Who is calling the EHR's API (shared with the UI: a bearer admin token or a UI session).

Either the administrator, with `Authorization: Bearer <admin token>` (then the request body's
`userId` names the user a hook fires for), or a user signed in to the EHR UI, whose session the
UI's session resolver (`EhrState.session_resolver`, ehr/state.py) resolves (it enforces CSRF on unsafe methods itself).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request

from ehr.errors import Unauthenticated

SessionResolver = Callable[[Request], Awaitable["Principal | None"]]


@dataclass(frozen=True)
class Principal:
    user_ref: str | None  # "Practitioner/<id>"
    is_admin: bool
    session_token: str | None  # the user's own access token (client_id ehr) from the UI login


ADMIN = Principal(user_ref=None, is_admin=True, session_token=None)


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def resolve_principal(request: Request, admin_token: str, resolver: SessionResolver | None) -> Principal:
    """The admin (constant-time token comparison), else the UI session, else a bare 401."""
    presented = _bearer(request)
    if presented is not None:
        # A bearer credential is the admin's or nobody's: never fall through to the session.
        if admin_token and hmac.compare_digest(presented.encode(), admin_token.encode()):
            return ADMIN
        raise Unauthenticated
    if resolver is not None:
        principal = await resolver(request)
        if principal is not None:
            return principal
    raise Unauthenticated
