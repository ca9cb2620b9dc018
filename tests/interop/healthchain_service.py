"""A CDS Service written the way HealthChain's documentation writes one, run by the HealthChain
venv (never the project's: HealthChain pins its own fhir.resources and FastAPI).

`HealthChainAPI` + `CDSHooksService` with `@cds.hook(...)` handlers. HealthChain's defaults put
discovery at /cds/cds-discovery; CDS Hooks 2.0 §Discovery wants `{baseUrl}/cds-services` and each
service at `{baseUrl}/cds-services/{id}`, so the config says so. HealthChain has no client for the
CDS Client's FHIR server, so the handler reads the Patient with httpx and the `fhirAuthorization`
bearer token (CDS Hooks 2.0 §FHIR Resource Access), trusting the dev CA named by
HEALTHCHAIN_FHIR_CA. It verifies no JWT: HealthChain has no support for the CDS Client's
Authorization header, which is what `mockehr probe` is expected to find.

Run: uvicorn tests.interop.healthchain_service:app --ssl-certfile … --ssl-keyfile …
"""

from __future__ import annotations

import os
from typing import Any

import httpx

# HealthChain lives only in its own venv (see above), so mypy, run from the project's, cannot see it.
from healthchain.gateway import CDSHooksService, HealthChainAPI  # type: ignore[import-not-found]
from healthchain.gateway.cds import CDSHooksConfig  # type: ignore[import-not-found]
from healthchain.models import CDSRequest, CDSResponse  # type: ignore[import-not-found]
from healthchain.models.responses.cdsresponse import Card  # type: ignore[import-not-found]

SOURCE = {"label": "HealthChain interop service"}

app = HealthChainAPI(title="HealthChain interop service")
cds = CDSHooksService(config=CDSHooksConfig(base_path="", discovery_path="/cds-services", service_path="/cds-services"))


def _patient_name(request: CDSRequest) -> str:
    """The Patient's name as read from fhirServer with the call's own token: the card proves the read."""
    if request.fhirServer is None or request.fhirAuthorization is None:
        return "(no fhirAuthorization)"
    url = f"{str(request.fhirServer).rstrip('/')}/Patient/{request.context.patientId}"
    response = httpx.get(
        url,
        headers={
            "Authorization": f"Bearer {request.fhirAuthorization.access_token}",
            "Accept": "application/fhir+json",
        },
        verify=os.environ.get("HEALTHCHAIN_FHIR_CA") or True,
        timeout=5,
    )
    if response.status_code != 200:
        return f"(FHIR read answered {response.status_code})"
    patient: dict[str, Any] = response.json()
    name = (patient.get("name") or [{}])[0]
    return " ".join([*name.get("given", []), name.get("family", "")]).strip()


@cds.hook("patient-view", id="healthchain-patient-view", title="HealthChain patient-view")  # type: ignore[untyped-decorator]
def patient_view(request: CDSRequest) -> CDSResponse:
    name = _patient_name(request)
    return CDSResponse(cards=[Card(summary=f"HealthChain read {name}", indicator="info", source=SOURCE)])


@cds.hook("order-sign", id="healthchain-order-sign", title="HealthChain order-sign")  # type: ignore[untyped-decorator]
def order_sign(request: CDSRequest) -> CDSResponse:
    name = _patient_name(request)
    return CDSResponse(
        cards=[Card(summary=f"HealthChain checked the order for {name}", indicator="warning", source=SOURCE)]
    )


app.register_service(cds)
