"""TLS for the stack: a development CA, server certificates, and SSL contexts.

Every service serves HTTPS with a certificate signed by the dev CA (`<data_dir>/ca.pem`); every
client in the stack trusts that CA *in addition to* the system store. Nothing ever turns
verification off.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import ConfigError

# SANs of the stack's server certificate: loopback plus the docker-compose service names.
STACK_HOSTS: tuple[str, ...] = (
    "localhost",
    "127.0.0.1",
    "::1",
    "ehr",
    "authserver",
    "fhirserver",
    "cds-example",
    "smart-example",
)
CA_DAYS = 3650
LEAF_DAYS = 397  # the CA/Browser Forum ceiling for leaf certificates
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path


def ca_paths(data_dir: Path) -> CertPaths:
    return CertPaths(cert=data_dir / "ca.pem", key=data_dir / "ca-key.pem")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def ensure_ca(data_dir: Path) -> CertPaths:
    """Create the dev CA once; later calls reuse it (so clients keep trusting the stack)."""
    paths = ca_paths(data_dir)
    if paths.cert.exists() and paths.key.exists():
        return paths
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mockehr"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"mockehr dev CA {os.urandom(4).hex()}"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write_private(paths.key, _key_pem(key))
    _write_public(paths.cert, cert.public_bytes(serialization.Encoding.PEM))
    return paths


def _load_ca(paths: CertPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the dev CA in {paths.cert.parent}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the dev CA key is not an EC key")
    return cert, key


def _san(hosts: tuple[str, ...] | list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def issue_certificate(data_dir: Path, hosts: list[str] | tuple[str, ...], out: CertPaths) -> CertPaths:
    """Issue a leaf certificate (server and client auth) for `hosts`, signed by the dev CA."""
    if not hosts:
        raise ConfigError("at least one host name is required")
    ca_cert, ca_key = _load_ca(ensure_ca(data_dir))
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(_san(list(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(out.key, _key_pem(key))
    _write_public(out.cert, cert.public_bytes(serialization.Encoding.PEM))
    return out


def _covers(cert: x509.Certificate, hosts: tuple[str, ...]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    return all(str(ipaddress.ip_address(h)) in have if _is_ip(h) else h in have for h in hosts)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def ensure_server_certificate(
    data_dir: Path, hosts: tuple[str, ...] = STACK_HOSTS, out: CertPaths | None = None
) -> CertPaths:
    """The stack's server certificate; reissued when missing, expiring soon, or not covering `hosts`."""
    out = out or CertPaths(cert=data_dir / "tls" / "server.pem", key=data_dir / "tls" / "server-key.pem")
    ca = ensure_ca(data_dir)
    if out.cert.exists() and out.key.exists():
        cert = x509.load_pem_x509_certificate(out.cert.read_bytes())
        ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        fresh = cert.not_valid_after_utc - _now() > RENEW_BEFORE
        if fresh and cert.issuer == ca_cert.subject and _covers(cert, hosts):
            return out
    return issue_certificate(data_dir, hosts, out)


def client_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verify peers against the system store plus the dev CA. Hostname checking stays on."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file is not None and ca_file.exists():
        ctx.load_verify_locations(cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return ctx
