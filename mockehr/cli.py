"""The `mockehr` command line (typer + rich).

A contract: scripts and CI jobs depend on these commands and flags (docs/cli.md, generated from this module).
Every subcommand takes --data-dir (env MOCKEHR_DATA_DIR); listings take --json. Errors are one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from common.errors import ConfigError, MockEhrError
from mockehr.settings import CliSettings
from mockehr.stack import MAX_REPLICAS, SIGNING_SERVICES, Stack

if TYPE_CHECKING:  # imported lazily at run time: `mockehr --help` stays fast
    from mockehr import supervisor as supervisor_types
    from mockehr.running import DataDirLock

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="The trusted EHR side of CDS Hooks and SMART on FHIR."
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
keys_app = typer.Typer(no_args_is_help=True, help="Signing keys.")
ca_app = typer.Typer(no_args_is_help=True, help="The development certificate authority.")
clients_app = typer.Typer(no_args_is_help=True, help="OAuth clients registered at the authorization server.")
services_app = typer.Typer(no_args_is_help=True, help="CDS Services the running EHR calls (its allow-list).")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(ca_app, name="ca")
app.add_typer(clients_app, name="clients")
app.add_typer(services_app, name="services")

out = Console()
err = Console(stderr=True)


@app.callback()
def _output_width() -> None:
    """Piped (CI logs, `| grep`), tables keep their natural width instead of being cut at 80
    columns; COLUMNS still decides when set. Decided per invocation, not at import."""
    if "COLUMNS" in os.environ:
        out.width = int(os.environ["COLUMNS"]) if os.environ["COLUMNS"].isdigit() else 80
    elif not out.is_terminal:
        out.width = 4096


DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory (env MOCKEHR_DATA_DIR; default ./.mockehr)")
]
Db = Annotated[
    str | None, typer.Option("--db", help="Database URL (env MOCKEHR_DATABASE_URL; default SQLite in the data dir)")
]
Redis = Annotated[str | None, typer.Option("--redis", help="Redis URL (env MOCKEHR_REDIS_URL)")]
BasePort = Annotated[
    int | None,
    typer.Option(
        "--base-port",
        min=1,
        max=65530,
        help="The EHR's port; the others use +1 to +5 (env MOCKEHR_BASE_PORT; default: the running stack's, else 9000)",
    ),
]
Host = Annotated[
    str | None, typer.Option("--host", help="Interface to listen on (env MOCKEHR_HOST; default 127.0.0.1)")
]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output")]
Patients = Annotated[int, typer.Option("--patients", min=1, max=100000, help="Synthetic patients to seed")]

T = TypeVar("T")


def _stack(
    data_dir: Path | None = None,
    db: str | None = None,
    redis: str | None = None,
    base_port: int | None = None,
    host: str | None = None,
    *,
    creates: bool = False,
) -> Stack:
    """The stack a command works on: flags, then MOCKEHR_* variables, then what the `mockehr up`
    running on the data dir recorded (stack.json), then the defaults.

    Only `up` and `init` (creates=True) may work on a data dir that does not exist yet.
    """
    from mockehr import preflight
    from mockehr.running import read_record

    try:
        cfg = CliSettings()
    except ValueError as exc:
        raise ConfigError(f"invalid MOCKEHR_* environment: {str(exc).splitlines()[0]}") from None
    directory = data_dir or cfg.data_dir
    record = None
    if not creates:
        preflight.require_data_dir(directory)
        record = read_record(directory)
    return Stack(
        data_dir=directory,
        host=host or cfg.host or (record.host if record else "127.0.0.1"),
        base_port=base_port or cfg.base_port or (record.base_port if record else 9000),
        database_url=db or cfg.database_url or (record.database_url if record else None),
        redis_url=redis or cfg.redis_url or (record.redis_url if record else None),
        public_host=record.public_host if record else "localhost",
        kek_value=cfg.key_encryption_key.get_secret_value() if cfg.key_encryption_key else None,
    )


def _run(fn: Callable[[], T]) -> T:
    """Run a command body; whatever goes wrong is one line on stderr and exit code 2."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return fn()
    except MockEhrError as exc:
        message = str(exc)
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc
        message = f"database error: {type(reason).__name__}: {_first_line(reason)}"
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        message = f"{exc.strerror or exc}{':' if where else ''}{where}"
    except Exception as exc:  # the contract: never a traceback (MOCKEHR_TRACEBACK=1 shows it)
        if os.environ.get("MOCKEHR_TRACEBACK"):
            raise
        message = f"unexpected {type(exc).__name__}: {_first_line(exc)} (MOCKEHR_TRACEBACK=1 shows where)"
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no detail"


async def _with_sessions(stack: Stack, body: Callable[[Any], Any]) -> Any:
    from common.db import make_engine, make_sessionmaker
    from mockehr import preflight

    engine = make_engine(stack.db_url)
    try:
        await preflight.check_schema(engine, stack.db_url)
        return await body(make_sessionmaker(engine))
    finally:
        await engine.dispose()


# --- up / init ---------------------------------------------------------------------------------


@app.command()
def init(
    data_dir: DataDir = None,
    base_port: BasePort = None,
    db: Db = None,
    redis: Redis = None,
    patients: Patients = 30,
    seed: Annotated[int, typer.Option(help="Seed of the generator")] = 1,
    compose_names: Annotated[
        bool,
        typer.Option(
            "--compose-names", help="Services reach each other by their compose names (https://ehr.localhost:9000, …)"
        ),
    ] = False,
) -> None:
    """Create the CA, certificates, secrets, schema, keys, clients and demo data (what compose's init runs)."""

    def body() -> None:
        import dataclasses

        from mockehr import setup

        stack = dataclasses.replace(_stack(data_dir, db, redis, base_port, creates=True), compose_names=compose_names)
        setup.check(stack, ports=False)
        report = setup.prepare(stack, patients=patients, seed_value=seed)
        out.print(f"initialised {stack.data_dir} ({'seeded' if report.seeded_now else 'data kept'})")

    _run(body)


class RestartMode(StrEnum):
    no = "no"
    on_failure = "on-failure"


@app.command()
def up(
    data_dir: DataDir = None,
    base_port: BasePort = None,
    db: Db = None,
    redis: Redis = None,
    host: Host = None,
    patients: Patients = 30,
    replicas: Annotated[
        int,
        typer.Option(
            "--replicas",
            min=1,
            max=MAX_REPLICAS,
            help="Processes per service, behind HAProxy on the usual ports (needs PostgreSQL; docs/replicas.md)",
        ),
    ] = 1,
    restart: Annotated[
        RestartMode,
        typer.Option(
            "--restart",
            help="no: the stack stops when any process exits; on-failure: a crashed process is restarted "
            "(backoff 0.5–8 s, at most 5 times in 5 minutes)",
        ),
    ] = RestartMode.no,
) -> None:
    """Start the whole stack over HTTPS and keep it running until Ctrl-C or SIGTERM."""
    import dataclasses

    from mockehr import preflight, setup, supervisor
    from mockehr.running import DataDirLock
    from mockehr.summary import print_summary

    stack = _run(lambda: _stack(data_dir, db, redis, base_port, host, creates=True))
    stack = dataclasses.replace(stack, replicas=replicas)
    if replicas > 1:
        _run(lambda: _require_replica_needs(stack))
    started = time.monotonic()
    lock = DataDirLock(stack.data_dir)

    def prepare() -> setup.SetupReport:
        preflight.check_data_dir(stack.data_dir)
        # Before anything else touches the data dir or the database: one stack per data dir.
        lock.acquire()
        setup.check(stack, ports=True)
        return setup.prepare(stack, patients=patients)

    try:
        report = _run(prepare)
        running = _run(lambda: supervisor.start(stack))
    except BaseException:
        lock.release()
        raise
    lock.record(stack, _processes(running))
    policy = supervisor.RestartPolicy(on_failure=restart is RestartMode.on_failure)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # Both explicitly: a shell starts background jobs with SIGINT ignored, and Python keeps that.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        # N replicas are N times the processes starting at once on the same cores.
        _run(lambda: supervisor.wait_ready(stack, running, timeout=60.0 * replicas))
        _register_example_service(stack)
        print_summary(out, stack, report.users, time.monotonic() - started)
        _supervise(stack, lock, running, policy)
    except KeyboardInterrupt:
        out.print("stopping…")
    finally:
        supervisor.stop(running)
        lock.release()
    out.print("stopped")


def _require_replica_needs(stack: Stack) -> None:
    """--replicas: PostgreSQL and HAProxy, both checked before anything starts."""
    from mockehr.balancer import haproxy_binary

    if not stack.db_url.startswith("postgresql"):
        raise ConfigError(
            "--replicas needs PostgreSQL (--db postgresql://… or MOCKEHR_DATABASE_URL): "
            "replicas on one SQLite file would contend for its single writer"
        )
    haproxy_binary()


def _processes(running: list[supervisor_types.Running]) -> list[tuple[str, str, int, int]]:
    return [(r.name, r.label, r.port, r.process.pid) for r in running]


def _supervise(
    stack: Stack, lock: DataDirLock, running: list[supervisor_types.Running], policy: supervisor_types.RestartPolicy
) -> None:
    """Watch every process until a signal; without --restart, the first exit stops the stack (one
    line naming the process, exit code 1); with --restart on-failure, crashes are restarted."""
    from mockehr import supervisor

    while True:
        try:
            said = supervisor.supervise(running, policy, time.monotonic())
        except supervisor.ServiceExited as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        for line in said:
            err.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)
        if said:
            lock.record(stack, _processes(running))  # the new pids
        time.sleep(0.2)


def _register_example_service(stack: Stack) -> None:
    """Allow-list the example CDS Service at the running EHR; a failure is a warning, not fatal."""
    from mockehr.cds import register_example_service

    try:
        out.print(register_example_service(stack), highlight=False)
    except MockEhrError as exc:
        err.print(f"[yellow]warning:[/yellow] the example CDS Service was not registered: {exc}", highlight=False)


# --- db, seed, load ----------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None, base_port: BasePort = None, db: Db = None) -> None:
    """Apply the migrations (alembic upgrade head)."""

    def body() -> None:
        from mockehr import migrate, preflight

        stack = _stack(data_dir, db, base_port=base_port)
        preflight.check_data_dir(stack.data_dir)
        asyncio.run(preflight.check_database(stack.db_url))
        migrate.upgrade(stack.db_url)
        out.print(f"schema at {migrate.head_revision()}")

    _run(body)


@app.command()
def seed(
    data_dir: DataDir = None,
    base_port: BasePort = None,
    db: Db = None,
    patients: Patients = 30,
    seed: Annotated[int, typer.Option(help="Seed of the generator")] = 1,
) -> None:
    """Load the deterministic synthetic data set and its demo logins (idempotent)."""

    def body() -> None:
        from mockehr.demo import seed as do_seed

        stack = _stack(data_dir, db, base_port=base_port)
        users = asyncio.run(
            _with_sessions(stack, lambda s: do_seed(s, stack.data_dir, patients=patients, seed_value=seed))
        )
        out.print(f"seeded {patients} patients, {len(users)} practitioners")

    _run(body)


@app.command()
def load(
    files: Annotated[list[Path], typer.Argument(help="FHIR transaction Bundles (JSON)")],
    data_dir: DataDir = None,
    base_port: BasePort = None,
    db: Db = None,
    json_out: Json = False,
) -> None:
    """Import FHIR transaction Bundles, each all-or-nothing (load referenced bundles first)."""
    from mockehr.loader import load_files

    stack = _run(lambda: _stack(data_dir, db, base_port=base_port))
    results = _run(lambda: asyncio.run(_with_sessions(stack, lambda s: load_files(s, files))))
    if json_out:
        out.print_json(json.dumps([r.as_json() for r in results]))
    else:
        for r in results:
            style = "green" if r.ok else "red"
            out.print(f"[{style}]{'ok' if r.ok else 'failed'}[/{style}] {r.path}: {r.message}", highlight=False)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


# --- keys --------------------------------------------------------------------------------------


@keys_app.command("list")
def keys_list(data_dir: DataDir = None, base_port: BasePort = None, db: Db = None, json_out: Json = False) -> None:
    """List signing keys with their status (active, retiring until a time, retired)."""
    from common.keys import list_keys

    stack = _run(lambda: _stack(data_dir, db, base_port=base_port))
    rows = _run(lambda: asyncio.run(_with_sessions(stack, list_keys)))
    items = [
        {
            "service": r.service,
            "kid": r.kid,
            "alg": r.alg,
            "status": r.status,
            "created_at": r.created_at,
            "publish_until": r.publish_until,
        }
        for r in rows
    ]
    if json_out:
        out.print_json(json.dumps(items))
        return
    table = Table("service", "kid", "alg", "status", "published until")
    for i in items:
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(i["publish_until"])) + "Z" if i["publish_until"] else ""
        table.add_row(str(i["service"]), str(i["kid"]), str(i["alg"]), str(i["status"]), until)
    out.print(table)


@keys_app.command("rotate")
def keys_rotate(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(SIGNING_SERVICES)}")],
    data_dir: DataDir = None,
    base_port: BasePort = None,
    db: Db = None,
    alg: Annotated[str, typer.Option(help="ES384, RS384 or ES256")] = "ES384",
    overlap: Annotated[
        int,
        typer.Option(help="Seconds the old key stays published (≥ publish-ahead + longest token lifetime + leeway)"),
    ] = 340,
) -> None:
    """Publish a new signing key; running services sign with it once it has been published for
    their key_publish_ahead_seconds (default 5 s). The old key stays published for --overlap seconds."""

    def body() -> None:
        from common.keys import ALGORITHMS, rotate

        if service not in SIGNING_SERVICES:
            raise ConfigError(f"unknown service {service!r}: one of {', '.join(SIGNING_SERVICES)}")
        if alg not in ALGORITHMS:
            raise ConfigError(f"unsupported algorithm {alg!r}: one of {', '.join(ALGORITHMS)}")
        if overlap < 0:
            raise ConfigError("--overlap must be ≥ 0")
        stack = _stack(data_dir, db, base_port=base_port)
        kek = stack.kek()
        new, old = asyncio.run(_with_sessions(stack, lambda s: rotate(s, service, alg, kek, int(time.time()), overlap)))
        out.print(f"{service}: new key {new} active" + (f"; {old} published for {overlap} s more" if old else ""))

    _run(body)


# --- clients -----------------------------------------------------------------------------------


@clients_app.command("add")
def clients_add(
    client_id: Annotated[str, typer.Argument(help="The client_id (for a CDS Service: fhirAuthorization.subject)")],
    kind: Annotated[str, typer.Option(help="ehr, cds-service, smart-app or backend")],
    data_dir: DataDir = None,
    base_port: BasePort = None,
    db: Db = None,
    name: Annotated[str, typer.Option(help="A display name")] = "",
    scope: Annotated[list[str] | None, typer.Option("--scope", help="An approved scope (repeat)")] = None,
    jwks_uri: Annotated[str | None, typer.Option(help="The client's JWKS URL (https)")] = None,
    jwks_file: Annotated[Path | None, typer.Option(help="A file with the client's public JWK Set")] = None,
    redirect_uri: Annotated[
        list[str] | None, typer.Option("--redirect-uri", help="An exact redirect URI (repeat)")
    ] = None,
    launch_url: Annotated[str | None, typer.Option(help="A SMART app's launch URL")] = None,
    auth_method: Annotated[str | None, typer.Option(help="private_key_jwt, client_secret_basic or none")] = None,
    first_party: Annotated[
        bool, typer.Option("--first-party", help="May obtain tokens for CDS Services (the EHR)")
    ] = False,
    secret_env: Annotated[
        str | None,
        typer.Option(help="Name of an environment variable holding the client secret (never on the command line)"),
    ] = None,
    json_out: Json = False,
) -> None:
    """Register (or replace) a client."""

    def body() -> dict[str, Any]:
        import os

        from authserver import clients
        from authserver.clients import Client, ClientError
        from common.scopes import InvalidScopeError

        jwks = json.loads(jwks_file.read_text()) if jwks_file else None
        method = auth_method or ("private_key_jwt" if (jwks or jwks_uri) else "none")
        secret = os.environ.get(secret_env) if secret_env else None
        if secret_env and not secret:
            raise ConfigError(f"environment variable {secret_env} is empty or unset")
        client = Client(
            client_id=client_id,
            kind=kind,  # type: ignore[arg-type]
            name=name or client_id,
            auth_method=method,  # type: ignore[arg-type]
            scope=" ".join(scope or []),
            first_party=first_party,
            active=True,
            jwks=jwks,
            jwks_uri=jwks_uri,
            redirect_uris=tuple(redirect_uri or []),
            launch_url=launch_url,
        )

        async def save(sessions: Any) -> dict[str, Any]:
            async with sessions() as session, session.begin():
                return (await clients.register(session, client, secret)).public_json()

        try:
            return dict(asyncio.run(_with_sessions(_stack(data_dir, db, base_port=base_port), save)))
        except (ClientError, InvalidScopeError) as exc:
            raise ConfigError(str(exc)) from None

    saved = _run(body)
    if json_out:
        out.print_json(json.dumps(saved))
    else:
        out.print(
            f"registered {saved['client_id']} ({saved['kind']}, {saved['auth_method']}) scope: {saved['scope'] or '-'}"
        )


@clients_app.command("list")
def clients_list(data_dir: DataDir = None, base_port: BasePort = None, db: Db = None, json_out: Json = False) -> None:
    """List registered clients (never their secrets)."""
    from authserver import clients

    async def load(sessions: Any) -> list[dict[str, Any]]:
        async with sessions() as session:
            return [c.public_json() for c in await clients.list_all(session)]

    stack = _run(lambda: _stack(data_dir, db, base_port=base_port))
    items = _run(lambda: asyncio.run(_with_sessions(stack, load)))
    if json_out:
        out.print_json(json.dumps(items))
        return
    table = Table("client_id", "kind", "auth", "active", "scope")
    for c in items:
        table.add_row(c["client_id"], c["kind"], c["auth_method"], "yes" if c["active"] else "no", c["scope"])
    out.print(table)


@clients_app.command("disable")
def clients_disable(client_id: str, data_dir: DataDir = None, base_port: BasePort = None, db: Db = None) -> None:
    """Disable a client: it can no longer authenticate or be named in a token exchange."""
    from authserver import clients

    async def disable(sessions: Any) -> bool:
        async with sessions() as session, session.begin():
            return await clients.set_active(session, client_id, False)

    stack = _run(lambda: _stack(data_dir, db, base_port=base_port))
    if not _run(lambda: asyncio.run(_with_sessions(stack, disable))):
        err.print(f"[red]error:[/red] no client {client_id!r}", highlight=False)
        raise typer.Exit(2)
    out.print(f"disabled {client_id}")


# --- ca ----------------------------------------------------------------------------------------


def _check_ca(stack: Stack) -> Path:
    """The data dir's CA certificate, checked to be one."""
    from cryptography import x509

    path = stack.data_dir / "ca.pem"
    try:
        x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise ConfigError(f"{path} is not a PEM certificate; run `mockehr init` on a new data dir") from None
    return path


@ca_app.command("issue")
def ca_issue(
    hosts: Annotated[list[str], typer.Argument(help="Host names and IP addresses (SANs)")],
    data_dir: DataDir = None,
    base_port: BasePort = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write HOST.pem and HOST-key.pem")] = Path("."),
) -> None:
    """Issue a certificate signed by the dev CA, e.g. for your own CDS Service on localhost."""

    def body() -> None:
        from common.tls import CertPaths, issue_certificate

        stack = _stack(data_dir, base_port=base_port)
        _check_ca(stack)
        paths = CertPaths(cert=out_dir / f"{hosts[0]}.pem", key=out_dir / f"{hosts[0]}-key.pem")
        issue_certificate(stack.data_dir, hosts, paths)
        out.print(
            f"certificate {paths.cert}\nkey         {paths.key} (mode 0600)\n"
            f"CA          {(stack.data_dir / 'ca.pem').resolve()}"
        )

    _run(body)


@ca_app.command("path")
def ca_path(data_dir: DataDir = None, base_port: BasePort = None) -> None:
    """Print the path of the dev CA certificate (made by `mockehr init` or `up`)."""

    def body() -> None:
        stack = _stack(data_dir, base_port=base_port)
        out.print(str(_check_ca(stack).resolve()), highlight=False, soft_wrap=True)

    _run(body)


# --- probe -------------------------------------------------------------------------------------


@app.command()
def probe(
    url: Annotated[
        str, typer.Argument(help="The CDS Service's discovery URL, e.g. https://localhost:9003/cds-services")
    ],
    data_dir: DataDir = None,
    base_port: Annotated[
        int | None, typer.Option("--base-port", help="The probe's issuer listens on base + 5 (env MOCKEHR_BASE_PORT)")
    ] = None,
    issuer_port: Annotated[
        int | None,
        typer.Option("--issuer-port", min=1, max=65535, help="The probe's issuer/JWKS port (overrides base + 5)"),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.5, max=120, help="Seconds to wait for each response")] = 10.0,
    services: Annotated[
        list[str] | None, typer.Option("--service", help="Probe only this discovered service id (repeat)")
    ] = None,
    per_endpoint: Annotated[bool, typer.Option("--per-endpoint", help="One table row per endpoint and check")] = False,
    json_out: Json = False,
    html_file: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained HTML report here")
    ] = None,
) -> None:
    """Probe a CDS Service's authentication: exit 0 only if every check passes (docs/probe.md)."""
    from mockehr.probe.report import as_html, as_json, print_table
    from mockehr.probe.runner import ProbeOptions
    from mockehr.probe.runner import probe as run_probe

    def body() -> Any:
        from common.http import check_outbound_url

        stack = _stack(data_dir, base_port=base_port)
        _check_ca(stack)
        try:
            check_outbound_url(url)
        except ValueError as exc:
            raise ConfigError(f"{exc}: CDS Services are served over TLS") from None
        options = ProbeOptions(
            url, stack.data_dir, issuer_port or stack.base_port + 5, timeout=timeout, only=tuple(services or ())
        )
        return asyncio.run(run_probe(options))

    report = _run(body)
    if html_file is not None:
        try:
            html_file.write_text(as_html(report), encoding="utf-8")
        except OSError as exc:
            err.print(f"[red]error:[/red] cannot write {html_file}: {exc.strerror}", highlight=False)
            raise typer.Exit(2) from None
    if json_out:
        out.print_json(json.dumps(as_json(report)))
    else:
        print_table(out, report, per_endpoint=per_endpoint)
        if html_file is not None:
            out.print(f"HTML report: {html_file}", highlight=False)
    if not report.passed:
        raise typer.Exit(1)


# --- services, hook (the running EHR's admin API; bodies in mockehr/cds.py) -----------------------


@services_app.command("add")
def services_add(
    discovery_url: Annotated[
        str, typer.Argument(help="The CDS Service's discovery URL, e.g. https://host/cds-services")
    ],
    approve_all_prefetch: Annotated[
        bool, typer.Option("--approve-all-prefetch", help="Approve every announced prefetch template that is allowed")
    ] = False,
    prefetch: Annotated[list[str] | None, typer.Option("--prefetch", help="Approve this prefetch key (repeat)")] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="A scope approved for every service of this URL (repeat), beside each one's own prefetch read scopes",
        ),
    ] = None,
    service_scope: Annotated[
        list[str] | None,
        typer.Option("--service-scope", help="ID=SCOPE: a scope approved for that one service alone (repeat)"),
    ] = None,
    client_id: Annotated[
        str | None, typer.Option("--client-id", help="The service's client at the authorization server")
    ] = None,
    hook: Annotated[list[str] | None, typer.Option("--hook", help="Approve only this hook (repeat)")] = None,
    deadline: Annotated[float, typer.Option("--deadline", help="Seconds the service has to answer")] = 5.0,
    allow_system_actions: Annotated[
        bool, typer.Option("--allow-system-actions", help="Apply the service's systemActions (as the user)")
    ] = False,
    allow_http_loopback: Annotated[
        bool, typer.Option("--allow-http-loopback", help="Allow plain http, to a loopback host only")
    ] = False,
    client_cert: Annotated[
        Path | None, typer.Option("--client-cert", help="Mutual TLS: the certificate the EHR presents")
    ] = None,
    client_key: Annotated[Path | None, typer.Option("--client-key", help="Mutual TLS: its private key")] = None,
    keep_existing: Annotated[
        bool, typer.Option("--keep-existing", help="Change nothing if this discovery URL is already registered")
    ] = False,
    compose_names: Annotated[
        bool, typer.Option("--compose-names", help="Reach the EHR by its compose name (https://ehr.localhost:9000)")
    ] = False,
    base_port: BasePort = None,
    data_dir: DataDir = None,
    json_out: Json = False,
) -> None:
    """Discover a CDS Service and allow-list it with what you approve (non-interactive)."""
    import dataclasses

    from mockehr.cds import EhrApi, add_body, print_registration

    def body() -> Any:
        payload = add_body(
            discovery_url,
            approve_all_prefetch=approve_all_prefetch,
            prefetch=prefetch or [],
            scope=scope or [],
            service_scope=service_scope or [],
            client_id=client_id,
            hooks=hook or [],
            deadline=deadline,
            allow_system_actions=allow_system_actions,
            allow_http_loopback=allow_http_loopback,
            client_cert=client_cert,
            client_key=client_key,
        )
        stack = dataclasses.replace(_stack(data_dir, base_port=base_port), compose_names=compose_names)
        with EhrApi(stack) as api:
            if keep_existing and any(
                s["discoveryUrl"] == discovery_url.rstrip("/") for s in api.call("GET", "/api/services")["services"]
            ):
                return None
            return api.call("POST", "/api/services", payload)

    registration = _run(body)
    if registration is None:
        if json_out:
            out.print_json(json.dumps({"unchanged": True, "discoveryUrl": discovery_url}))
        else:
            out.print(f"{discovery_url} is already registered; nothing changed", highlight=False)
    elif json_out:
        out.print_json(json.dumps(registration))
    else:
        print_registration(out, registration)


@services_app.command("list")
def services_list(data_dir: DataDir = None, base_port: BasePort = None, json_out: Json = False) -> None:
    """List the registered CDS Services and what was approved for each."""
    from mockehr.cds import EhrApi, print_services

    def body() -> Any:
        with EhrApi(_stack(data_dir, base_port=base_port)) as api:
            return api.call("GET", "/api/services")["services"]

    services = _run(body)
    if json_out:
        out.print_json(json.dumps(services))
    else:
        print_services(out, services)


@services_app.command("disable")
def services_disable(service_id: str, data_dir: DataDir = None, base_port: BasePort = None) -> None:
    """Take a CDS Service off the allow-list: the EHR never calls it again (its log is kept)."""
    from urllib.parse import quote

    from mockehr.cds import EhrApi

    def body() -> Any:
        with EhrApi(_stack(data_dir, base_port=base_port)) as api:
            return api.call("POST", f"/api/services/{quote(service_id, safe='')}/disable")

    _run(body)
    out.print(f"disabled {service_id}")


@services_app.command("remove")
def services_remove(service_id: str, data_dir: DataDir = None, base_port: BasePort = None) -> None:
    """Delete a CDS Service's registration (its id can be registered again; its exchange log is
    kept; the provider's client keeps the scopes of its other services, or is disabled)."""
    from urllib.parse import quote

    from mockehr.cds import EhrApi

    def body() -> Any:
        with EhrApi(_stack(data_dir, base_port=base_port)) as api:
            return api.call("DELETE", f"/api/services/{quote(service_id, safe='')}")

    removed = _run(body)
    client = removed.get("client") or {}
    state = f"scope: {client.get('scope') or '-'}" if client.get("active") else "disabled (no service left)"
    out.print(f"removed {service_id}; client {client.get('client_id')} {state}", highlight=False)


@app.command("hook")
def hook_command(
    hook: Annotated[str, typer.Argument(help="patient-view, order-select, order-sign, order-dispatch, …")],
    user: Annotated[str, typer.Option("--user", help="The user: a demo login (dr.alvarez) or Practitioner/<id>")],
    patient: Annotated[str, typer.Option("--patient", help="The patient: <id> or Patient/<id>")],
    encounter: Annotated[str | None, typer.Option("--encounter", help="The encounter: <id> or Encounter/<id>")] = None,
    service: Annotated[list[str] | None, typer.Option("--service", help="Call only this service (repeat)")] = None,
    context: Annotated[
        str | None, typer.Option("--context", help="Extra context as a JSON object (e.g. draftOrders)")
    ] = None,
    show_request: Annotated[
        bool, typer.Option("--show-request", help="Also print each request as sent (secrets redacted)")
    ] = False,
    data_dir: DataDir = None,
    base_port: BasePort = None,
    json_out: Json = False,
) -> None:
    """Fire a hook at the running EHR and print the cards; exit 1 if a service failed."""
    from urllib.parse import quote

    from mockehr.cds import EhrApi, check_hook, hook_body, logical_id, print_hook_result, user_reference

    def body() -> tuple[Any, Any]:
        check_hook(hook)
        stack = _stack(data_dir, base_port=base_port)
        payload = hook_body(
            user_reference(stack, user),
            logical_id("Patient", patient),
            logical_id("Encounter", encounter) if encounter else None,
            service or [],
            context,
        )
        with EhrApi(stack) as api:
            result = api.call("POST", f"/api/hooks/{quote(hook, safe='')}", payload)
            exchange = None
            if show_request and result["services"]:
                exchange = api.call("GET", f"/api/exchanges/{quote(result['hookInstance'], safe='')}")
            return result, exchange

    result, exchange = _run(body)
    if json_out:
        out.print_json(json.dumps({**result, "exchange": exchange} if exchange is not None else result))
    else:
        print_hook_result(out, result, exchange)
    if any(s["status"] != "ok" for s in result["services"]):
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
