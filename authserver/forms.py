"""Reading OAuth form parameters (application/x-www-form-urlencoded bodies)."""

from __future__ import annotations

from typing import Any

from authserver.errors import InvalidRequestError


def one(form: Any, name: str) -> str:
    """The single value of a parameter, "" when absent (RFC 6749 §3.1, §3.2: parameters must not
    be repeated). A file part is no value."""
    values = form.getlist(name)
    if len(values) > 1:
        raise InvalidRequestError(f"{name} is repeated")
    return values[0] if values and isinstance(values[0], str) else ""
