"""Registering the stack's own clients at the authorization server (`mockehr init` / `up`).

- `ehr`: the EHR, first-party, private_key_jwt with the EHR's published JWKS URL — it obtains
  per-call tokens for CDS Services by token exchange.
- `cds-example`: the example CDS Service, approved for the read scopes its prefetch needs.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from authserver import clients
from authserver.clients import Client
from mockehr.stack import Stack

EHR_CLIENT_ID = "ehr"
CDS_EXAMPLE_CLIENT_ID = "cds-example"
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
            scope="",
            first_party=True,
            active=True,
            jwks_uri=f"{stack.base_url('ehr')}/.well-known/jwks.json",
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
    ]


async def register_stack_clients(sessions: async_sessionmaker[AsyncSession], stack: Stack) -> None:
    """Create the stack's clients once; an administrator's later changes are kept."""
    async with sessions() as session, session.begin():
        for client in stack_clients(stack):
            if await clients.get(session, client.client_id) is None:
                await clients.register(session, client)
