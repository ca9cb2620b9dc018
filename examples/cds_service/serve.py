"""Serving the example over TLS, optionally requiring a client certificate (mutual TLS).

CDS Hooks 2.0 §Security, "Mutual TLS": mTLS may be used alongside the JWT to establish trust of
the CDS Client. The application cannot see the peer certificate (ASGI servers do not pass it on),
so the requirement is enforced in the TLS handshake: with `client_cert_required`, uvicorn is
started with `ssl_cert_reqs=CERT_REQUIRED` and `ssl_ca_certs` = the client CA (the dev CA by
default), so a client without a certificate from that CA never reaches the app.
`mockehr up` passes the same options on uvicorn's command line (mockehr/supervisor.py).
"""

from __future__ import annotations

import ssl
from typing import Any

from examples.cds_service.settings import CdsSettings

FACTORY = "examples.cds_service.app:create_app"


def uvicorn_ssl_options(settings: CdsSettings) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for this service's TLS (none when TLS is off)."""
    if not settings.tls:
        return {}
    options: dict[str, Any] = {"ssl_certfile": str(settings.cert_path), "ssl_keyfile": str(settings.key_path)}
    if settings.client_cert_required:
        options["ssl_ca_certs"] = str(settings.client_ca_path)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def main() -> None:
    import uvicorn

    from common.settings import load_settings

    settings = load_settings(CdsSettings)
    uvicorn.run(
        FACTORY,
        factory=True,
        host=settings.host,
        port=settings.port,
        proxy_headers=False,
        server_header=False,
        **uvicorn_ssl_options(settings),
    )
