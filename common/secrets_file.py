"""Secrets kept in the data directory in development mode (admin token, key-encryption key).

Files are created with mode 0600 using O_EXCL, so that several processes starting at once
(the services of `mockehr up`, replicas) agree on one value: the first creator wins and the
others read what it wrote.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from common.errors import ConfigError


def read_or_create_secret(path: Path, nbytes: int = 32) -> str:
    """Return the secret stored at `path`, creating a random URL-safe one if absent."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    value = secrets.token_urlsafe(nbytes)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(value + "\n")
    return value


def _read_secret(path: Path) -> str:
    # Another process may have created the file an instant ago and not yet written it.
    for _ in range(50):
        value = path.read_text(encoding="ascii").strip()
        if value:
            return value
        time.sleep(0.02)
    raise ConfigError(f"{path} is empty; delete it to have a new secret generated")
