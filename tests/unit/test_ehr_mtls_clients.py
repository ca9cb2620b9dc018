"""The mutual-TLS client pool: one client per certificate, shared, closed once no service uses
it — but never under a request still running through it — and all closed at shutdown."""

from __future__ import annotations

from pathlib import Path

import httpx

from ehr.mtls_clients import CertKey, MtlsClients

A: CertKey = ("a.pem", "a-key.pem")
B: CertKey = ("b.pem", "b-key.pem")


def _pool(made: list[httpx.AsyncClient], max_clients: int = 32) -> MtlsClients:
    def factory(_key: CertKey) -> httpx.AsyncClient:
        made.append(httpx.AsyncClient())
        return made[-1]

    return MtlsClients(factory, max_clients=max_clients)


async def test_services_with_the_same_certificate_share_one_client_kept_while_one_still_uses_it() -> None:
    made: list[httpx.AsyncClient] = []
    pool = _pool(made)
    async with pool.use("one", A) as first, pool.use("two", A) as second:
        assert first is second
    async with pool.use("one", B):
        pass
    assert made[0].is_closed is False  # "two" still uses A
    await pool.forget("two")
    assert made[0].is_closed and pool.current(A) is None
    await pool.aclose()
    assert all(c.is_closed for c in made)


async def test_a_retired_client_is_closed_only_after_the_request_running_through_it() -> None:
    made: list[httpx.AsyncClient] = []
    pool = _pool(made)
    async with pool.use("one", A) as in_flight, pool.use("one", B):
        assert pool.current(A) is None
        assert not in_flight.is_closed  # the earlier request is not cut off
    assert in_flight.is_closed
    assert pool.current(B) is not None and not made[1].is_closed
    await pool.aclose()
    assert made[1].is_closed


async def test_the_pool_is_bounded_and_closes_the_least_recently_used_client() -> None:
    made: list[httpx.AsyncClient] = []
    pool = _pool(made, max_clients=2)
    keys: list[CertKey] = [(f"{n}.pem", f"{n}-key.pem") for n in range(3)]
    for n, key in enumerate(keys):
        async with pool.use(f"s{n}", key):
            pass
    assert [c.is_closed for c in made] == [True, False, False]
    assert pool.current(keys[0]) is None
    await pool.aclose()


async def test_a_certificate_renewed_in_place_is_presented_from_the_next_exchange_without_a_restart(
    tmp_path: Path,
) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client-key.pem"
    cert.write_text("first certificate")
    key.write_text("first key")
    paths: CertKey = (str(cert), str(key))
    made: list[httpx.AsyncClient] = []
    pool = _pool(made)
    async with pool.use("one", paths) as first:
        pass
    async with pool.use("one", paths) as unchanged:
        assert unchanged is first  # the files did not change: the client is kept
    renewed = tmp_path / "renewed.pem"
    renewed.write_text("renewed certificate, longer than the first")
    renewed.replace(cert)  # as certbot and friends do: a new file moved over the old path
    async with pool.use("one", paths) as second:
        assert second is not first
        assert first.is_closed
    assert len(made) == 2
    await pool.aclose()
