"""Base images for docker-compose.yml on a machine that cannot pull from a container registry.

docker-compose.yml builds `mockehr:dev` FROM `${MOCKEHR_PYTHON_IMAGE:-python:3.11-slim}` and runs
`${MOCKEHR_POSTGRES_IMAGE:-postgres:16}` and `${MOCKEHR_REDIS_IMAGE:-redis:7}`. For each of the
three, `base_images()` first tries a real `docker pull`; when that fails (a machine that reaches only
the PyPI, npm and Debian registries), it builds a stand-in from Debian packages and returns the
variables that point compose at it. Stand-ins get their own names (`mockehr-standin/…`), never the
real ones: a stand-in tagged `postgres:16` would be PostgreSQL 15 under a false name for every other
project on the machine, and the override variables say plainly what ran.

How a stand-in is made:
- `mockehr-standin/debian:bookworm`: `debootstrap --variant=minbase bookworm` from the machine's
  own Debian mirror (read from /etc/apt/sources.list*), imported with `docker import`;
- `mockehr-standin/python:bookworm`: Debian's python3 (3.11, the Dockerfile's default version) in a
  venv at /opt/python, first on PATH, so `python` and `pip` are what the official image offers.
  The machine's CA bundle is copied in and named by PIP_CERT: pip inside a container reaches the
  registry only through it. The machine's http(s) package indexes (pip config, PIP_INDEX_URL,
  PIP_EXTRA_INDEX_URL) are carried over as well;
- `mockehr-standin/postgres:bookworm`: Debian's postgresql-15 with an entrypoint that honours
  POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB on an empty data dir (scram-sha-256 over TCP, as
  the official image), listens on every interface of the container, and has `pg_isready` on PATH;
- `mockehr-standin/redis:bookworm`: Debian's redis-server on 0.0.0.0 in the container, without
  protected mode, as the official image (no port is published; compose's network is the boundary).

Each image carries a label with a hash of everything it is made from (the mirror, its Dockerfile and
files, the CA bundle, the indexes): an image already on the machine with the same hash is reused, so only the
first run pays for debootstrap. Run `python -m tests.compose.standins` to build them by hand; it
prints the variables to export before `docker-compose up --build`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
HASH_LABEL = "org.mockehr.standin.hash"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PULL_TIMEOUT = 60
BUILD_TIMEOUT = 600

BASE_TAG = f"mockehr-standin/debian:{SUITE}"

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_APT_INSTALL = (
    "apt-get update -qq"
    " && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {packages}"
    " && apt-get clean && rm -rf /var/lib/apt/lists/*"
)

PYTHON_DOCKERFILE = f"""\
FROM {BASE_TAG}
RUN {_APT_INSTALL.format(packages="python3 python3-venv ca-certificates")}
# The machine's CA bundle: pip reaches the registry only through it (a TLS-inspecting network).
COPY host-ca-bundle.crt /etc/ssl/certs/host-ca-bundle.crt
COPY pip.conf /etc/pip.conf
# A venv first on PATH: `python` and `pip` as in the official image, and pip may install into it
# (Debian's own python3 is externally managed, PEP 668).
RUN python3 -m venv /opt/python
ENV PATH=/opt/python/bin:{_PATH} \\
    VIRTUAL_ENV=/opt/python \\
    PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt \\
    LANG=C.UTF-8
CMD ["python3"]
"""

POSTGRES_DOCKERFILE = f"""\
FROM {BASE_TAG}
# No cluster of Debian's own: the entrypoint makes one in $PGDATA, as the official image does.
RUN mkdir -p /etc/postgresql-common/createcluster.d \\
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/standin.conf \\
    && {_APT_INSTALL.format(packages="postgresql-15")}
ENV PATH=/usr/lib/postgresql/15/bin:{_PATH} \\
    PGDATA=/var/lib/postgresql/data \\
    LANG=C.UTF-8
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 0755 /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
"""

# The part of the official image's docker-entrypoint.sh that docker-compose.yml relies on.
POSTGRES_ENTRYPOINT = r"""#!/bin/sh
set -eu
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 0700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
  user="${POSTGRES_USER:-postgres}"
  db="${POSTGRES_DB:-$user}"
  case "$user$db" in *'"'*) echo "POSTGRES_USER/POSTGRES_DB must not contain a double quote" >&2; exit 1;; esac
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  if [ "$db" != postgres ]; then
    echo "CREATE DATABASE \"$db\" OWNER \"$user\"" | postgres --single -j -D "$PGDATA" postgres >/dev/null
  fi
  echo "stand-in postgres: initialised $PGDATA (user $user, database $db)"
fi
exec "$@"
"""

REDIS_DOCKERFILE = f"""\
FROM {BASE_TAG}
RUN {_APT_INSTALL.format(packages="redis-server")}
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no"]
"""


@dataclass(frozen=True)
class BaseImage:
    variable: str  # what docker-compose.yml reads
    real: str  # the default in docker-compose.yml / Dockerfile
    standin: str
    dockerfile: str
    files: tuple[tuple[str, str], ...] = ()


IMAGES = (
    BaseImage("MOCKEHR_PYTHON_IMAGE", "python:3.11-slim", f"mockehr-standin/python:{SUITE}", PYTHON_DOCKERFILE),
    BaseImage(
        "MOCKEHR_POSTGRES_IMAGE",
        "postgres:16",
        f"mockehr-standin/postgres:{SUITE}",
        POSTGRES_DOCKERFILE,
        (("docker-entrypoint.sh", POSTGRES_ENTRYPOINT),),
    ),
    BaseImage("MOCKEHR_REDIS_IMAGE", "redis:7", f"mockehr-standin/redis:{SUITE}", REDIS_DOCKERFILE),
)


class StandinError(RuntimeError):
    pass


def docker_env() -> dict[str, str]:
    # The classic builder: Debian's docker.io ships no buildx, and a newer client would ask for it.
    return {**os.environ, "DOCKER_BUILDKIT": "0"}


def _run(args: list[str], timeout: float, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        result = subprocess.run(args, input=stdin, capture_output=True, timeout=timeout, env=docker_env(), check=False)
    except subprocess.TimeoutExpired as exc:
        raise StandinError(f"{' '.join(args[:3])} … did not finish within {timeout} s") from exc
    return result


def _check(result: subprocess.CompletedProcess[bytes], what: str) -> None:
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).decode(errors="replace")[-3000:]
        raise StandinError(f"{what} failed (exit {result.returncode}):\n{tail}")


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses for the main archive (not security)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        if not source.is_file():
            continue
        text = source.read_text(encoding="utf-8", errors="replace")
        # deb822 (.sources): URIs: … followed by Suites: … in the same stanza.
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.MULTILINE)
            if uris and suites and SUITE in suites.group(1).split() and not uris.group(1).endswith("-security"):
                return uris.group(1).rstrip("/")
        # one-line form: deb [options] URI SUITE COMPONENTS…
        for line in text.splitlines():
            match = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
            if match and match.group(2) == SUITE and not match.group(1).endswith("-security"):
                return match.group(1).rstrip("/")
    return DEFAULT_MIRROR


def pip_conf() -> str:
    """The machine's http(s) package indexes as a pip.conf (file:// ones exist only on the host)."""
    index: str | None = os.environ.get("PIP_INDEX_URL")
    extra: list[str] = os.environ.get("PIP_EXTRA_INDEX_URL", "").split()
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        value = value.strip().strip("'\"")
        if key.endswith(".index-url") and index is None:
            index = value
        elif key.endswith(".extra-index-url"):
            extra.extend(value.split())
    web = ("http://", "https://")
    lines = ["[global]"]
    if index and index.startswith(web):
        lines.append(f"index-url = {index}")
    extras = [url for url in dict.fromkeys(extra) if url.startswith(web)]
    if extras:
        lines.append(f"extra-index-url = {' '.join(extras)}")
    return "\n".join(lines) + "\n"


def _ca_bundle() -> bytes:
    return CA_BUNDLE.read_bytes() if CA_BUNDLE.is_file() else b""


def base_hash() -> str:
    """What the debootstrapped base is made from."""
    return hashlib.sha256(f"debootstrap --variant=minbase {SUITE} {debian_mirror()}".encode()).hexdigest()[:16]


def standin_hash(image: BaseImage) -> str:
    """What a stand-in is made from: its base, its Dockerfile and files, the CA bundle, the indexes."""
    digest = hashlib.sha256(base_hash().encode())
    digest.update(image.dockerfile.encode())
    for name, text in image.files:
        digest.update(name.encode() + b"\0" + text.encode())
    digest.update(_ca_bundle())
    digest.update(pip_conf().encode())
    return digest.hexdigest()[:16]


def _label(docker: str, tag: str) -> str | None:
    result = _run([docker, "image", "inspect", "--format", f'{{{{ index .Config.Labels "{HASH_LABEL}" }}}}', tag], 60)
    return result.stdout.decode().strip() if result.returncode == 0 else None


def _build_base(docker: str, wanted: str, say: Callable[[str], None]) -> None:
    if _label(docker, BASE_TAG) == wanted:
        say(f"reusing {BASE_TAG} ({HASH_LABEL}={wanted})")
        return
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise StandinError("debootstrap is not installed (apt-get install debootstrap)")
    mirror = debian_mirror()
    say(f"building {BASE_TAG}: debootstrap --variant=minbase {SUITE} from {mirror}")
    with tempfile.TemporaryDirectory(prefix="mockehr-debootstrap-") as root:
        _check(_run([debootstrap, "--variant=minbase", SUITE, root, mirror], BUILD_TIMEOUT), f"debootstrap {SUITE}")
        for cache in (Path(root) / "var/cache/apt/archives").glob("*.deb"):
            cache.unlink()
        # docker import reads a tarball of the root file system from stdin.
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(root, arcname=".")
        _check(
            _run(
                [
                    docker,
                    "import",
                    "--change",
                    f"ENV PATH={_PATH}",
                    "--change",
                    f"LABEL {HASH_LABEL}={wanted}",
                    "--change",
                    'CMD ["/bin/bash"]',
                    "-",
                    BASE_TAG,
                ],
                BUILD_TIMEOUT,
                stdin=buffer.getvalue(),
            ),
            f"docker import {BASE_TAG}",
        )


def _build_standin(docker: str, image: BaseImage, wanted: str, say: Callable[[str], None]) -> None:
    if _label(docker, image.standin) == wanted:
        say(f"reusing {image.standin} ({HASH_LABEL}={wanted})")
        return
    say(f"building {image.standin} (Debian packages)")
    with tempfile.TemporaryDirectory(prefix="mockehr-standin-") as context:
        directory = Path(context)
        (directory / "Dockerfile").write_text(image.dockerfile, encoding="utf-8")
        for name, text in image.files:
            (directory / name).write_text(text, encoding="utf-8")
        (directory / "host-ca-bundle.crt").write_bytes(_ca_bundle())
        (directory / "pip.conf").write_text(pip_conf(), encoding="utf-8")
        result = _run(
            [docker, "build", "--quiet", "--label", f"{HASH_LABEL}={wanted}", "-t", image.standin, context],
            BUILD_TIMEOUT,
        )
        _check(result, f"docker build {image.standin}")


def pulled(docker: str, name: str) -> bool:
    """Whether the real image is here: already on the machine, or pulled now."""
    if _run([docker, "image", "inspect", name], 60).returncode == 0:
        return True
    try:
        return _run([docker, "pull", "--quiet", name], PULL_TIMEOUT).returncode == 0
    except StandinError:
        return False


def base_images(docker: str, say: Callable[[str], None] = print) -> dict[str, str]:
    """The MOCKEHR_*_IMAGE variables for docker-compose: empty when every real image is here."""
    overrides: dict[str, str] = {}
    missing = [image for image in IMAGES if not pulled(docker, image.real)]
    for image in IMAGES:
        if image not in missing:
            say(f"{image.real}: the real image (pulled or already present)")
    if not missing:
        return overrides
    say(
        f"cannot pull {', '.join(i.real for i in missing)} from a container registry: "
        "using stand-in base images built from Debian packages"
    )
    _build_base(docker, base_hash(), say)
    for image in missing:
        _build_standin(docker, image, standin_hash(image), say)
        overrides[image.variable] = image.standin
        say(f"{image.real}: stand-in {image.standin} (export {image.variable}={image.standin})")
    return overrides


def main() -> int:
    docker = shutil.which("docker")
    if docker is None:
        print("docker is not installed (apt-get install docker.io)", file=sys.stderr)
        return 2
    try:
        overrides = base_images(docker, lambda line: print(line, file=sys.stderr))
    except StandinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, value in overrides.items():
        print(f"export {name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
