"""Encryption at rest of private keys (AES-256-GCM under the key-encryption key).

The KEK comes from settings (production) or `<data_dir>/kek` (development). The associated
data binds each ciphertext to its key id and service, so a row's private part cannot be
swapped onto another row.
"""

from __future__ import annotations

import base64
import binascii
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.errors import ConfigError, KeyDecryptionError

_NONCE_BYTES = 12
_VERSION = b"\x01"


_BASE64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def decode_kek(value: str) -> bytes:
    """Decode a base64url KEK (RFC 4648 §5, strictly); it must be exactly 32 bytes (AES-256)."""
    text = value.strip()
    # The stdlib decoder silently drops characters outside the alphabet: check the alphabet first.
    if not _BASE64URL.fullmatch(text):
        raise ConfigError("key_encryption_key is not base64url")
    try:
        raw = base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise ConfigError("key_encryption_key is not base64url") from None
    if len(raw) != 32:
        raise ConfigError("key_encryption_key must decode to 32 bytes")
    return raw


def encrypt(kek: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return _VERSION + nonce + AESGCM(kek).encrypt(nonce, plaintext, aad)


def decrypt(kek: bytes, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _VERSION:
        raise KeyDecryptionError("stored key has an unknown format")
    nonce = blob[1 : 1 + _NONCE_BYTES]
    try:
        return AESGCM(kek).decrypt(nonce, blob[1 + _NONCE_BYTES :], aad)
    except InvalidTag:
        raise KeyDecryptionError(
            "stored key does not decrypt: the key-encryption key differs from the one it was stored with"
        ) from None
