"""Discovery over mutual TLS: with a client certificate configured for the service, the EHR
presents it (a real TLS server on loopback that requires one); without it, discovery fails."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import select

from common.tls import CertPaths, ensure_ca, issue_certificate
from ehr.models import CdsServiceRow
from tests.integration.ehr_engine_harness import serve
from tests.integration.ehrharness import ehr_harness, greeting_service


def _discovery_app(seen: list[str]) -> FastAPI:
    app = FastAPI()

    @app.get("/cds-services")
    async def discovery() -> JSONResponse:
        seen.append("discovery")
        return JSONResponse({"services": [greeting_service()]})

    return app


async def test_discovery_presents_the_configured_client_certificate(tmp_path: Path, database_url: str) -> None:
    ca = ensure_ca(tmp_path)  # the EHR's CA file is <data dir>/ca.pem
    server = issue_certificate(tmp_path, ["localhost"], CertPaths(tmp_path / "srv.pem", tmp_path / "srv-key.pem"))
    client = issue_certificate(tmp_path, ["ehr.test"], CertPaths(tmp_path / "ehr.pem", tmp_path / "ehr-key.pem"))
    seen: list[str] = []
    async with ehr_harness(tmp_path, database_url) as h:
        with serve(_discovery_app(seen), certfile=server.cert, keyfile=server.key, client_ca=ca.cert) as port:
            url = f"https://localhost:{port}/cds-services"
            without = await h.ehr.post(
                "/api/services", json={"discoveryUrl": url, "approveAllPrefetch": True}, headers=h.admin
            )
            assert without.status_code == 502
            assert without.json()["error"] == "discovery_failed"
            assert seen == []
            response = await h.ehr.post(
                "/api/services",
                json={
                    "discoveryUrl": url,
                    "approveAllPrefetch": True,
                    "clientCertFile": str(client.cert),
                    "clientKeyFile": str(client.key),
                },
                headers=h.admin,
            )
        assert response.status_code == 201, response.text
        assert seen == ["discovery"]
        async with h.ehr_app.state.runtime.sessions() as session:
            (row,) = (await session.execute(select(CdsServiceRow))).scalars().all()
        assert (row.client_cert_file, row.client_key_file) == (str(client.cert), str(client.key))
        assert json.loads(row.approved_prefetch) == {"patient": "Patient/{{context.patientId}}"}


async def test_a_client_certificate_without_its_key_is_refused(tmp_path: Path, database_url: str) -> None:
    async with ehr_harness(tmp_path, database_url) as h:
        response = await h.add_service(approveAllPrefetch=True, clientCertFile=str(tmp_path / "x.pem"))
        assert response.status_code == 400
        assert response.json()["message"] == "mutual TLS needs both a client certificate and its key"
        assert h.cds.received == []


async def test_client_certificate_paths_that_are_not_a_certificate_and_key_are_refused_without_their_content(
    tmp_path: Path, database_url: str
) -> None:
    ensure_ca(tmp_path)
    client = issue_certificate(tmp_path, ["ehr.test"], CertPaths(tmp_path / "ehr.pem", tmp_path / "ehr-key.pem"))
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:do-not-echo\n")
    cases = [
        ({"clientCertFile": str(secret), "clientKeyFile": str(secret)}, "do not load as a PEM certificate"),
        ({"clientCertFile": str(client.cert), "clientKeyFile": str(secret)}, "do not load as a PEM certificate"),
        ({"clientCertFile": str(client.key), "clientKeyFile": str(client.key)}, "do not load as a PEM certificate"),
        ({"clientCertFile": str(tmp_path), "clientKeyFile": str(client.key)}, "no such file"),
        ({"clientCertFile": "client/cert.pem", "clientKeyFile": "client/key.pem"}, "absolute paths"),
    ]
    async with ehr_harness(tmp_path, database_url) as h:
        for files, message in cases:
            response = await h.add_service(approveAllPrefetch=True, **files)
            assert response.status_code == 400, files
            assert message in response.json()["message"], files
            assert "do-not-echo" not in response.text
        assert h.cds.received == []  # nothing is discovered with a refused certificate
