"""The services this CDS Service offers (CDS Hooks 2.0 §Discovery) and the logic behind each.

Prefetch templates use only the query forms the spec allows (§Prefetch Template): an instance
read, or a type search by reference and token with `_sort` and `_count`, filled from
`{{context.patientId}}`. The same logic may sit behind several ids (one per hook).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from examples.cds_service import greeting, medication_safety, results
from examples.cds_service.cards import CallEnv
from examples.cds_service.fhir_data import DataSource
from examples.cds_service.schemas import Card, HookRequest, ServiceDefinition

Logic = Callable[[DataSource, CallEnv, HookRequest], Awaitable[list[Card]]]


@dataclass(frozen=True)
class Service:
    definition: ServiceDefinition
    logic: Logic

    @property
    def id(self) -> str:
        return self.definition.id

    @property
    def hook(self) -> str:
        return self.definition.hook


async def _greeting(data: DataSource, env: CallEnv, _request: HookRequest) -> list[Card]:
    return await greeting.patient_greeting(data, env)


async def _results(data: DataSource, env: CallEnv, _request: HookRequest) -> list[Card]:
    return await results.abnormal_results(data, env)


async def _order_sign(data: DataSource, env: CallEnv, request: HookRequest) -> list[Card]:
    return await medication_safety.medication_safety(data, env, request.context, selected_only=False)


async def _order_select(data: DataSource, env: CallEnv, request: HookRequest) -> list[Card]:
    return await medication_safety.medication_safety(data, env, request.context, selected_only=True)


_ALL = (
    Service(
        ServiceDefinition(
            hook="patient-view",
            id="patient-greeting",
            title="Patient greeting",
            description="Shows the patient's name and age.",
            prefetch=greeting.PREFETCH,
        ),
        _greeting,
    ),
    Service(
        ServiceDefinition(
            hook="patient-view",
            id="abnormal-results",
            title="Abnormal recent results",
            description="Flags a high latest HbA1c, LDL cholesterol or blood pressure, says when a repeat is "
            "overdue, and suggests ordering the follow-up test.",
            prefetch=results.PREFETCH,
        ),
        _results,
    ),
    Service(
        ServiceDefinition(
            hook="order-sign",
            id="medication-safety",
            title="Medication safety at signing",
            description="Checks draft medication orders against the patient's allergies (same drug or class) "
            "and active medications (duplicate therapy); suggests removing the draft.",
            prefetch=medication_safety.PREFETCH,
        ),
        _order_sign,
    ),
    Service(
        ServiceDefinition(
            hook="order-select",
            id="medication-safety-select",
            title="Medication safety at selection",
            description="The medication-safety checks, for the draft orders just selected.",
            prefetch=medication_safety.PREFETCH,
        ),
        _order_select,
    ),
)
SERVICES: dict[str, Service] = {s.id: s for s in _ALL}
