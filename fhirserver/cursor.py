"""Paging cursors (FHIR R4 §3.1.1.6 paging): opaque, signed, and bound to who asked.

A next/previous link carries the search (type and parameters) and the offset, signed with
HMAC-SHA256 under the server's cursor key and bound to the token's subject, client and scope
and to an expiry. A link replayed with another token, edited, or too old is refused — so paging
can never widen what a token sees. The key is shared by replicas (from settings or the data
directory), so a link works on any replica.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

CURSOR_LIFETIME = 600


class CursorError(ValueError):
    """The cursor is malformed, forged, expired or belongs to another token."""


@dataclass(frozen=True)
class Cursor:
    resource_type: str
    params: list[tuple[str, str]]
    offset: int


def _binding(subject: str, client_id: str, scope: str) -> str:
    return hashlib.sha256(f"{subject}\x00{client_id}\x00{scope}".encode()).hexdigest()[:32]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode(key: bytes, cursor: Cursor, *, subject: str, client_id: str, scope: str, now: int) -> str:
    payload = json.dumps(
        {
            "t": cursor.resource_type,
            "p": cursor.params,
            "o": cursor.offset,
            "b": _binding(subject, client_id, scope),
            "e": now + CURSOR_LIFETIME,
        },
        separators=(",", ":"),
    ).encode()
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def decode(key: bytes, value: str, *, subject: str, client_id: str, scope: str, now: int) -> Cursor:
    try:
        payload_b64, mac_b64 = value.split(".")
        payload = base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4))
        mac = base64.urlsafe_b64decode(mac_b64 + "=" * (-len(mac_b64) % 4))
    except ValueError:
        raise CursorError("malformed cursor") from None
    if not hmac.compare_digest(mac, hmac.new(key, payload, hashlib.sha256).digest()):
        raise CursorError("cursor signature invalid")
    data = json.loads(payload)
    if data["e"] < now:
        raise CursorError("cursor expired")
    if not hmac.compare_digest(data["b"], _binding(subject, client_id, scope)):
        raise CursorError("cursor belongs to another token")
    return Cursor(str(data["t"]), [(str(k), str(v)) for k, v in data["p"]], int(data["o"]))
