"""The HAProxy configuration `mockehr up --replicas N` writes (mockehr/balancer.py), checked by
HAProxy itself when it is installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.tls import ensure_ca, ensure_server_certificate
from mockehr import balancer
from mockehr.stack import SERVICES, Stack
from tests.needs import missing


def _stack(tmp_path: Path, replicas: int = 3) -> Stack:
    return Stack(data_dir=tmp_path, base_port=9000, replicas=replicas)


def test_each_public_port_balances_over_every_replica_on_its_internal_loopback_port(tmp_path: Path) -> None:
    text = balancer.config(_stack(tmp_path), {})
    assert "    bind 127.0.0.1:9002 ssl crt " in text
    for offset, first in ((0, 9100), (1, 9110), (2, 9120), (3, 9130), (4, 9140)):
        name = next(s.name for s in SERVICES if s.port_offset == offset)
        for i in range(3):
            assert f"    server {name}-{i + 1} 127.0.0.1:{first + i}\n" in text
    # Re-encrypted to each replica, whose certificate must chain to the dev CA and name localhost.
    assert f"ssl verify required ca-file {tmp_path.resolve() / 'ca.pem'} verifyhost localhost" in text


def test_only_get_and_head_are_re_sent_once_they_reached_a_replica(tmp_path: Path) -> None:
    text = balancer.config(_stack(tmp_path), {})
    assert "retry-on conn-failure empty-response junk-response response-timeout" in text
    assert text.count("http-request disable-l7-retry unless METH_GET") == len(SERVICES)
    assert "retry-on all" not in text and " 503" not in text.split("retry-on", 1)[1].splitlines()[0]


def test_mutual_tls_to_the_cds_service_is_demanded_at_the_balancer_and_presented_to_replicas(tmp_path: Path) -> None:
    text = balancer.config(_stack(tmp_path), {"MOCKEHR_CDS_CLIENT_CERT_REQUIRED": "true"})
    cds = text.split("frontend cds-example", 1)[1].split("frontend ", 1)[0]
    assert "verify required" in cds.split("\n")[1] and f"ca-file {tmp_path.resolve() / 'ca.pem'}" in cds
    assert "server cds-example-1 127.0.0.1:9130 crt " in cds
    assert "verify required" not in text.split("frontend ehr", 1)[1].split("\n")[1]


def test_haproxy_accepts_the_configuration_and_its_private_files_are_mode_0600(tmp_path: Path) -> None:
    if shutil.which("haproxy", path="/usr/sbin:/usr/bin:/sbin") is None:
        missing("haproxy is not installed (Debian package haproxy)")
    ensure_ca(tmp_path)
    ensure_server_certificate(tmp_path)
    path = balancer.write_config(_stack(tmp_path), {})
    balancer.check_config(path)
    assert (path.stat().st_mode & 0o777, (tmp_path / "tls" / "haproxy.pem").stat().st_mode & 0o777) == (0o600, 0o600)


def test_a_broken_configuration_is_a_one_line_error(tmp_path: Path) -> None:
    if shutil.which("haproxy", path="/usr/sbin:/usr/bin:/sbin") is None:
        missing("haproxy is not installed (Debian package haproxy)")
    bad = tmp_path / "haproxy.cfg"
    bad.write_text("frontend x\n    bind 127.0.0.1:1 ssl crt /nonexistent.pem\n")
    with pytest.raises(ConfigError, match=r"^HAProxy refused .*haproxy.cfg: ") as refused:
        balancer.check_config(bad)
    assert "\n" not in str(refused.value)


def test_without_haproxy_replicas_are_refused_in_one_line_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(balancer, "_SEARCH_PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^--replicas needs HAProxy, which is not installed \(Debian: apt-get"):
        balancer.haproxy_binary()
