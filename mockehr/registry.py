"""Registering the stack's own clients at the authorization server (`mockehr init` / `up`).

- `ehr`: the EHR, first-party, private_key_jwt with the EHR's published JWKS URL — it obtains
  per-call tokens for CDS Services by token exchange.
  It is also the client of the EHR's own web UI: users sign in through `/authorize` (authorization
  code + PKCE, the EHR's redirect URI below); the user token it gets is the UI session's token.
- `cds-example`: the example CDS Service, approved for the read scopes its prefetch needs.
- `smart-example`: the example SMART app (examples/smart_app), a public client launched by the EHR
  from a card's smart link (its `launch_url` is what such a link must name).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from authserver import clients
from authserver.clients import Client
from mockehr.stack import Stack

EHR_CLIENT_ID = "ehr"
CDS_EXAMPLE_CLIENT_ID = "cds-example"
SMART_EXAMPLE_CLIENT_ID = "smart-example"
# The most the EHR UI's sign-in may be granted: who the user is (openid fhirUser profile), a refresh token
# tied to the user's sign-in at the authserver (online_access), and the user's patients with
# writes (accepting a suggestion creates resources as the user). Narrowed further to the role.
EHR_UI_SCOPE = "openid fhirUser profile online_access user/*.cruds"
EHR_UI_CALLBACK = "/oauth/callback"
_SMART_EXAMPLE_SCOPE_BEFORE = "launch openid fhirUser patient/Patient.rs patient/Observation.rs"
SMART_EXAMPLE_SCOPE = "launch openid fhirUser patient/Patient.rs patient/Observation.rs patient/MedicationRequest.rs"
CDS_EXAMPLE_SCOPE = (
    "patient/Patient.rs patient/Observation.rs patient/Condition.rs "
    "patient/MedicationRequest.rs patient/AllergyIntolerance.rs patient/Encounter.rs"
)


def stack_clients(stack: Stack) -> list[Client]:
    return [
        Client(
            client_id=EHR_CLIENT_ID,
            kind="ehr",
            name="mockehr EHR",
            auth_method="private_key_jwt",
            scope=EHR_UI_SCOPE,
            first_party=True,
            active=True,
            jwks_uri=f"{stack.base_url('ehr')}/.well-known/jwks.json",
            redirect_uris=(stack.base_url("ehr") + EHR_UI_CALLBACK,),
        ),
        Client(
            client_id=CDS_EXAMPLE_CLIENT_ID,
            kind="cds-service",
            name="mockehr example CDS Service",
            auth_method="none",
            scope=CDS_EXAMPLE_SCOPE,
            first_party=False,
            active=True,
        ),
        Client(
            client_id=SMART_EXAMPLE_CLIENT_ID,
            kind="smart-app",
            name="mockehr example SMART app",
            auth_method="none",
            scope=SMART_EXAMPLE_SCOPE,
            first_party=False,
            active=True,
            redirect_uris=(stack.base_url("smart-example") + "/callback",),
            launch_url=stack.base_url("smart-example") + "/launch",
        ),
    ]


async def register_stack_clients(sessions: async_sessionmaker[AsyncSession], stack: Stack) -> None:
    """Create the stack's clients once; an administrator's later changes are kept.

    Two exceptions: an `ehr` registration from before the EHR had a web UI (no redirect URI) gets
    the UI's redirect URI and scope, so an existing data directory can sign in to the UI; and a
    `smart-example` still at its scope from before the app listed medications gets the new one."""
    async with sessions() as session, session.begin():
        for client in stack_clients(stack):
            existing = await clients.get(session, client.client_id)
            if (
                existing is None
                or (client.client_id == EHR_CLIENT_ID and not existing.redirect_uris)
                or (client.client_id == SMART_EXAMPLE_CLIENT_ID and existing.scope == _SMART_EXAMPLE_SCOPE_BEFORE)
            ):
                await clients.register(session, client)
