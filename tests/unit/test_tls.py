"""common.tls: the dev CA, the stack's server certificate, and SSL contexts that never skip verification."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from common.errors import ConfigError
from common.tls import (
    STACK_HOSTS,
    CertPaths,
    client_ssl_context,
    ensure_ca,
    ensure_server_certificate,
    issue_certificate,
    server_ssl_context,
)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def san_names(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return dns, ips


# --- the CA -----------------------------------------------------------------------------------


def test_ensure_ca_is_idempotent(tmp_path: Path) -> None:
    first = ensure_ca(tmp_path)
    cert_bytes, key_bytes = first.cert.read_bytes(), first.key.read_bytes()

    second = ensure_ca(tmp_path)

    assert second == first == CertPaths(cert=tmp_path / "ca.pem", key=tmp_path / "ca-key.pem")
    assert second.cert.read_bytes() == cert_bytes
    assert second.key.read_bytes() == key_bytes


def test_the_ca_private_key_file_is_mode_0600(tmp_path: Path) -> None:
    paths = ensure_ca(tmp_path)

    assert mode(paths.key) == 0o600
    assert b"PRIVATE KEY" in paths.key.read_bytes()
    assert b"PRIVATE KEY" not in paths.cert.read_bytes()


def test_the_ca_is_a_self_signed_ca_limited_to_signing_leaves(tmp_path: Path) -> None:
    ca = load(ensure_ca(tmp_path).cert)

    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    assert (usage.key_cert_sign, usage.crl_sign, usage.digital_signature) == (True, True, False)
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)


def test_two_data_dirs_get_two_different_cas(tmp_path: Path) -> None:
    a = load(ensure_ca(tmp_path / "a").cert)
    b = load(ensure_ca(tmp_path / "b").cert)

    assert a.subject != b.subject
    assert a.public_key() != b.public_key()


# --- the server certificate ---------------------------------------------------------------------


def test_the_server_certificate_is_issued_by_the_ca(tmp_path: Path) -> None:
    paths = ensure_server_certificate(tmp_path)
    ca = load(ensure_ca(tmp_path).cert)
    cert = load(paths.cert)

    assert paths == CertPaths(cert=tmp_path / "tls" / "server.pem", key=tmp_path / "tls" / "server-key.pem")
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)


def test_the_server_certificate_names_loopback_and_the_compose_services(tmp_path: Path) -> None:
    cert = load(ensure_server_certificate(tmp_path).cert)

    dns, ips = san_names(cert)

    assert dns == {"localhost", "ehr", "authserver", "fhirserver", "cds-example", "smart-example"}
    assert ips == {"127.0.0.1", "::1"}
    assert {*dns, *ips} == set(STACK_HOSTS)


def test_the_server_certificate_is_a_leaf_for_server_auth(tmp_path: Path) -> None:
    cert = load(ensure_server_certificate(tmp_path).cert)

    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert constraints.critical
    assert constraints.value.ca is False
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= dt.timedelta(days=397, minutes=5)


def test_the_server_private_key_file_is_mode_0600(tmp_path: Path) -> None:
    paths = ensure_server_certificate(tmp_path)

    assert mode(paths.key) == 0o600


def test_ensure_server_certificate_reuses_a_certificate_that_still_fits(tmp_path: Path) -> None:
    first = ensure_server_certificate(tmp_path)
    cert_bytes, key_bytes = first.cert.read_bytes(), first.key.read_bytes()

    second = ensure_server_certificate(tmp_path)
    subset = ensure_server_certificate(tmp_path, hosts=("localhost", "127.0.0.1"))

    assert second == subset == first
    assert first.cert.read_bytes() == cert_bytes
    assert first.key.read_bytes() == key_bytes


@pytest.mark.parametrize("extra", ["new-service.internal", "10.0.0.7", "fd00::7"])
def test_ensure_server_certificate_reissues_when_the_requested_hosts_are_not_covered(
    extra: str, tmp_path: Path
) -> None:
    first = ensure_server_certificate(tmp_path)
    old = first.cert.read_bytes()

    again = ensure_server_certificate(tmp_path, hosts=(*STACK_HOSTS, extra))

    assert again.cert.read_bytes() != old
    dns, ips = san_names(load(again.cert))
    if extra[0].isdigit() or ":" in extra:
        assert str(ipaddress.ip_address(extra)) in ips
    else:
        assert extra in dns


def test_ensure_server_certificate_reissues_one_signed_by_another_ca(tmp_path: Path) -> None:
    foreign = ensure_server_certificate(tmp_path / "other")
    out = CertPaths(cert=tmp_path / "tls" / "server.pem", key=tmp_path / "tls" / "server-key.pem")
    out.cert.parent.mkdir(parents=True)
    out.cert.write_bytes(foreign.cert.read_bytes())
    out.key.write_bytes(foreign.key.read_bytes())

    ensure_server_certificate(tmp_path)

    load(out.cert).verify_directly_issued_by(load(ensure_ca(tmp_path).cert))


def test_issue_certificate_refuses_an_empty_host_list(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one host name"):
        issue_certificate(tmp_path, [], CertPaths(cert=tmp_path / "c.pem", key=tmp_path / "k.pem"))


def test_a_corrupt_ca_is_a_config_error(tmp_path: Path) -> None:
    paths = ensure_ca(tmp_path)
    paths.key.write_bytes(b"not a key")

    with pytest.raises(ConfigError, match="cannot read the dev CA"):
        issue_certificate(tmp_path, ["localhost"], CertPaths(cert=tmp_path / "c.pem", key=tmp_path / "k.pem"))


# --- SSL contexts -----------------------------------------------------------------------------


def test_client_ssl_context_requires_a_verified_certificate_and_a_matching_hostname(tmp_path: Path) -> None:
    ctx = client_ssl_context(ensure_ca(tmp_path).cert)

    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is True
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_client_ssl_context_without_a_ca_file_still_verifies(tmp_path: Path) -> None:
    for ca_file in (None, tmp_path / "missing.pem"):
        ctx = client_ssl_context(ca_file)
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.check_hostname is True


def test_server_ssl_context_refuses_tls_below_1_2(tmp_path: Path) -> None:
    paths = ensure_server_certificate(tmp_path)

    ctx = server_ssl_context(paths.cert, paths.key)

    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str) -> bytes:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello over tls")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname=server_hostname), timeout=10
        )
        try:
            return await asyncio.wait_for(reader.read(), timeout=10)
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_real_tls_handshake_succeeds_against_the_dev_ca(tmp_path: Path) -> None:
    paths = ensure_server_certificate(tmp_path)

    data = await _handshake(
        server_ssl_context(paths.cert, paths.key), client_ssl_context(ensure_ca(tmp_path).cert), "localhost"
    )

    assert data == b"hello over tls"


async def test_a_tls_handshake_fails_when_the_client_trusts_a_different_ca(tmp_path: Path) -> None:
    paths = ensure_server_certificate(tmp_path / "stack")
    other_ca = ensure_ca(tmp_path / "elsewhere").cert

    with pytest.raises(ssl.SSLCertVerificationError) as info:
        await _handshake(server_ssl_context(paths.cert, paths.key), client_ssl_context(other_ca), "localhost")

    assert info.value.verify_message == "unable to get local issuer certificate"


async def test_a_tls_handshake_fails_for_a_hostname_the_certificate_does_not_name(tmp_path: Path) -> None:
    paths = ensure_server_certificate(tmp_path)

    with pytest.raises(ssl.SSLCertVerificationError) as info:
        await _handshake(
            server_ssl_context(paths.cert, paths.key),
            client_ssl_context(ensure_ca(tmp_path).cert),
            "attacker.example",
        )

    assert "Hostname mismatch" in info.value.verify_message
