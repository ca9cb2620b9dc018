"""The probe's tokens: correct CDS Hooks JWTs and deliberately broken ones. Probe/test use only.

Compact JWS (RFC 7515 §7.1) is assembled by hand with `cryptography` and `hmac`, because a JOSE
library refuses — rightly — to produce most of these tokens: `alg: none`, HS256 keyed with a public
key, a key carried in the header, a payload changed after signing. Nothing here verifies anything;
the well-formed tokens are checked against `common.jose.verify_jwt` in the tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from common.errors import ConfigError

ALG = "ES384"  # CDS Hooks 2.0 recommends ES384 or RS384 for the CDS Client's JWT
_COORDINATE_BYTES = 48  # P-384


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ProbeKey:
    """A P-384 key pair with its RFC 7638 thumbprint as kid."""

    private: ec.EllipticCurvePrivateKey

    def public_jwk(self) -> dict[str, str]:
        numbers = self.private.public_key().public_numbers()
        return {
            "kty": "EC",
            "crv": "P-384",
            "x": b64url(numbers.x.to_bytes(_COORDINATE_BYTES, "big")),
            "y": b64url(numbers.y.to_bytes(_COORDINATE_BYTES, "big")),
        }

    @property
    def kid(self) -> str:
        # RFC 7638 §3: the required members in lexicographic order, no whitespace, SHA-256.
        jwk = self.public_jwk()
        canonical = _json({k: jwk[k] for k in ("crv", "kty", "x", "y")})
        return b64url(hashlib.sha256(canonical).digest())

    def published_jwk(self) -> dict[str, str]:
        return {**self.public_jwk(), "kid": self.kid, "alg": ALG, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, signing_input: bytes) -> bytes:
        # RFC 7518 §3.4: ECDSA signatures are R || S, each left-padded to the coordinate size.
        r, s = decode_dss_signature(self.private.sign(signing_input, ec.ECDSA(hashes.SHA384())))
        return r.to_bytes(_COORDINATE_BYTES, "big") + s.to_bytes(_COORDINATE_BYTES, "big")


def generate_key() -> ProbeKey:
    return ProbeKey(ec.generate_private_key(ec.SECP384R1()))


def load_or_create_key(path: Path) -> ProbeKey:
    """The probe's own signing key, kept in the data directory (mode 0600) so its JWKS is stable.

    Created with O_EXCL, so two probes starting at once agree on one key.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    key = generate_key()
    pem = key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def _read_key(path: Path) -> ProbeKey:
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path} is readable by other users; chmod 600 it (it is the probe's private key)")
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the probe key {path}: {exc}") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp384r1":
        raise ConfigError(f"{path} is not a P-384 key; delete it to have a new one generated")
    return ProbeKey(private)


def _signing_input(header: dict[str, Any], claims: dict[str, Any]) -> bytes:
    return f"{b64url(_json(header))}.{b64url(_json(claims))}".encode("ascii")


def signed(header: dict[str, Any], claims: dict[str, Any], key: ProbeKey) -> str:
    """An ES384 JWS with exactly `header` (alg forced to ES384) over `claims`."""
    signing_input = _signing_input({**header, "alg": ALG}, claims)
    return f"{signing_input.decode('ascii')}.{b64url(key.sign(signing_input))}"


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """An Unsecured JWS (RFC 7515 Appendix A.5): whatever `alg` the header names, an empty signature."""
    return f"{_signing_input(header, claims).decode('ascii')}."


def hmac_signed(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 JWS keyed with `secret` (the algorithm-confusion attack keys it with a public key)."""
    signing_input = _signing_input({**header, "alg": "HS256"}, claims)
    mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode('ascii')}.{b64url(mac)}"


def with_payload(token: str, claims: dict[str, Any]) -> str:
    """`token` with its payload replaced and its original signature kept (a tampered token)."""
    head, _, signature = token.split(".")
    return f"{head}.{b64url(_json(claims))}.{signature}"
