"""The stack's topology: which services run where, and the settings each receives.

One place computes every URL and environment variable, so `mockehr up`, `mockehr init`, the e2e
tests and docker-compose agree on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common.db import normalize_database_url


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # also the name its signing keys are stored under
    factory: str  # module:function for `uvicorn --factory`
    env_prefix: str
    port_offset: int
    path: str = ""  # the path users point at (e.g. /fhir)
    signs: bool = False


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("authserver", "authserver.app:create_app", "MOCKEHR_AUTH_", 1, signs=True),
    ServiceSpec("fhirserver", "fhirserver.app:create_app", "MOCKEHR_FHIR_", 2, "/fhir"),
    ServiceSpec("ehr", "ehr.app:create_app", "MOCKEHR_EHR_", 0, signs=True),
    ServiceSpec("cds-example", "examples.cds_service.app:create_app", "MOCKEHR_CDS_", 3, "/cds-services"),
    ServiceSpec("smart-example", "examples.smart_app.app:create_app", "MOCKEHR_SMART_", 4, "/launch"),
)
# Replicas listen on internal loopback ports from base + REPLICA_PORT_OFFSET (Stack.replica_port).
REPLICA_PORT_OFFSET = 100
# Replicas are reached only through the load balancer on the same machine: loopback, whatever --host says.
REPLICA_HOST = "127.0.0.1"
MAX_REPLICAS = 8
SIGNING_SERVICES: tuple[str, ...] = tuple(s.name for s in SERVICES if s.signs)


def compose_host(name: str) -> str:
    """The host name of service `name` under docker-compose (a network alias; RFC 6761 .localhost)."""
    return f"{name}.localhost"


def spec(name: str) -> ServiceSpec:
    for service in SERVICES:
        if service.name == name:
            return service
    raise KeyError(name)


@dataclass(frozen=True)
class Stack:
    data_dir: Path
    host: str = "127.0.0.1"
    base_port: int = 9000
    database_url: str | None = None
    redis_url: str | None = None
    public_host: str = "localhost"
    # docker-compose: each service is reached as <name>.localhost on its default port. A browser
    # resolves every *.localhost name to loopback by itself (RFC 6761 §6.3), where compose
    # publishes the same ports, and inside the compose network they are the services' aliases:
    # one URL works on both sides, with no hosts-file entry.
    compose_names: bool = False
    kek_value: str | None = None  # from MOCKEHR_KEY_ENCRYPTION_KEY; else <data_dir>/kek
    # Processes per service. Above 1, HAProxy holds the public ports and each replica listens on
    # an internal loopback port (replica_port); docs/replicas.md.
    replicas: int = 1

    def kek(self) -> bytes:
        """The key-encryption key: the configured one, or the data directory's (created once)."""
        from common.crypto import decode_kek
        from common.secrets_file import read_or_create_secret

        return decode_kek(self.kek_value or read_or_create_secret(self.data_dir / "kek"))

    @property
    def db_url(self) -> str:
        raw = self.database_url or f"sqlite:///{(self.data_dir / 'mockehr.db').resolve()}"
        return normalize_database_url(raw)

    def port(self, name: str) -> int:
        return self.base_port + spec(name).port_offset

    def replica_port(self, name: str, index: int) -> int:
        """The internal port of replica `index` (0-based) of service `name`: base + 100 + 10 × the
        service's offset + index (9100–9107 for the EHR, 9110… the authorization server, …)."""
        if not 0 <= index < MAX_REPLICAS:
            raise ValueError(f"replica index {index} out of range")
        return self.base_port + REPLICA_PORT_OFFSET + 10 * spec(name).port_offset + index

    def listen_ports(self, name: str) -> list[int]:
        """Where the processes of service `name` listen: its public port, or its replicas' ports."""
        if self.replicas <= 1:
            return [self.port(name)]
        return [self.replica_port(name, i) for i in range(self.replicas)]

    def base_url(self, name: str) -> str:
        if self.compose_names:
            return f"https://{compose_host(name)}:{9000 + spec(name).port_offset}"
        return f"https://{self.public_host}:{self.port(name)}"

    def url(self, name: str) -> str:
        """What a user points at: the base URL plus the service's path (e.g. the FHIR base)."""
        return self.base_url(name) + spec(name).path

    def env(self, name: str) -> dict[str, str]:
        """The MOCKEHR_<SVC>_* variables that configure service `name` in this stack."""
        service = spec(name)
        data = self.data_dir.resolve()
        values: dict[str, str] = {
            "DATA_DIR": str(data),
            "DATABASE_URL": self.db_url,
            "HOST": self.host,
            "PORT": str(self.port(name)),
            "PUBLIC_URL": self.base_url(name),
            "CA_FILE": str(data / "ca.pem"),
            "TLS_CERT_FILE": str(data / "tls" / "server.pem"),
            "TLS_KEY_FILE": str(data / "tls" / "server-key.pem"),
        }
        if self.redis_url:
            values["REDIS_URL"] = self.redis_url
        if self.kek_value:
            values["KEY_ENCRYPTION_KEY"] = self.kek_value
        if name == "authserver":
            values["FHIR_BASE_URL"] = self.url("fhirserver")
        elif name == "fhirserver":
            values["AUTHSERVER_URL"] = self.base_url("authserver")
        elif name == "ehr":
            values["AUTHSERVER_URL"] = self.base_url("authserver")
            values["FHIR_BASE_URL"] = self.url("fhirserver")
        elif name == "cds-example":
            values["EHR_ISSUER"] = self.base_url("ehr")
            values["EHR_JWKS_URL"] = self.base_url("ehr") + "/.well-known/jwks.json"
            # `mockehr probe` (base +5) is a second trusted CDS Client; its JWKS is fetched lazily.
            probe = f"https://{self.public_host}:{self.base_port + 5}"
            values["TRUSTED_CLIENTS"] = json.dumps([{"issuer": probe, "jwks_url": f"{probe}/.well-known/jwks.json"}])
            values["FHIR_SERVERS"] = json.dumps([self.url("fhirserver")])
            values["SMART_LAUNCH_URL"] = self.url("smart-example")
        elif name == "smart-example":
            values["FHIR_BASE_URL"] = self.url("fhirserver")
        return {service.env_prefix + k: v for k, v in values.items()}
