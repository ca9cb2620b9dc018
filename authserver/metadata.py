"""Discovery and the public documents: RFC 8414 and OpenID Connect metadata (built from the facts
in common/discovery.py, with the FHIR server's smart-configuration), the JWK Set, the SMART style.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from authserver.deps import RuntimeDep, SettingsDep
from common import discovery
from common.web import jwks_response

# The SMART style document behind `smart_style_url` (SMART App Launch 2.2 "Styling").
SMART_STYLE = {
    "color_background": "#f4f6f8",
    "color_error": "#8a1c12",
    "color_highlight": "#2563a6",
    "color_modal_backdrop": "",
    "color_success": "#1e7a3c",
    "color_text": "#1d2733",
    "dim_border_radius": "0.5em",
    "dim_font_size": "1em",
    "dim_spacing_size": "1em",
    "font_family_body": "system-ui, sans-serif",
    "font_family_heading": "system-ui, sans-serif",
}
CACHE_METADATA = {"Cache-Control": "public, max-age=300"}
router = APIRouter()


@router.get("/jwks")
@router.get("/.well-known/jwks.json")
async def jwks(runtime: RuntimeDep) -> JSONResponse:
    return await jwks_response(runtime.keys)


@router.get("/.well-known/oauth-authorization-server")
async def oauth_metadata(settings: SettingsDep) -> JSONResponse:
    return JSONResponse(discovery.oauth_metadata(settings.discovery_facts()), headers=CACHE_METADATA)


@router.get("/.well-known/openid-configuration")
async def openid_configuration(settings: SettingsDep) -> JSONResponse:
    return JSONResponse(discovery.openid_configuration(settings.discovery_facts()), headers=CACHE_METADATA)


@router.get("/smart-style.json")
async def smart_style() -> JSONResponse:
    return JSONResponse(SMART_STYLE, headers={"Cache-Control": "public, max-age=3600"})
