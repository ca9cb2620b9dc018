"""HTTP clients that present a client certificate (mutual TLS) to CDS Services, shared per
certificate and closed once no service uses them.

A client holds its certificate for its lifetime (the TLS context is built once, with the
connection pool), so one is kept per (certificate path, key path) and shared by the services
configured with that pair. A client is retired when no service uses its paths any more: its
service was given other paths (seen at the service's next call), was forgotten (disabled or
changed by the administrator), or the pool is full (least recently used first). A retired
client is closed as soon as no request is running through it, so a change of certificate never
cuts off a hook call in flight; `aclose` (app shutdown) closes every client.

A certificate renewed in place (new files under the same paths) is presented from the next
exchange on: each use compares the files' identity (inode, size, modification time) with what
they were when the client was made — two `stat` calls, no reading — and replaces a client whose
files changed. Every EHR replica does this by itself, so a renewal needs no restart anywhere.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx

CertKey = tuple[str, str]  # (certificate file, key file)
Stamp = tuple[tuple[int, int, int], ...] | None
MAX_CLIENTS = 32


def files_stamp(key: CertKey) -> Stamp:
    """The identity of the files behind `key` now (None if one cannot be read: the factory says why)."""
    try:
        return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in (os.stat(key[0]), os.stat(key[1])))
    except OSError:
        return None


class MtlsClients:
    def __init__(self, factory: Callable[[CertKey], httpx.AsyncClient], *, max_clients: int = MAX_CLIENTS) -> None:
        self._factory = factory
        self._max = max_clients
        self._clients: OrderedDict[CertKey, httpx.AsyncClient] = OrderedDict()  # least recently used first
        self._paths_of: dict[str, CertKey] = {}  # service id → the paths it last used
        self._busy: dict[httpx.AsyncClient, int] = {}  # requests running through each client
        self._retired: set[httpx.AsyncClient] = set()  # to close once idle
        self._stamps: dict[CertKey, Stamp] = {}  # the files each kept client was made from

    def current(self, key: CertKey) -> httpx.AsyncClient | None:
        """The live client for these paths, if one is kept."""
        return self._clients.get(key)

    @asynccontextmanager
    async def use(self, service_id: str, key: CertKey) -> AsyncIterator[httpx.AsyncClient]:
        """The client presenting `key`, for one exchange of `service_id`."""
        stamp = files_stamp(key)
        client = self._clients.get(key)
        if client is not None and self._stamps.get(key) != stamp:
            await self._retire(key)  # renewed in place: this exchange presents the new certificate
            client = None
        if client is None:
            client = self._clients[key] = self._factory(key)
            self._stamps[key] = stamp
        self._clients.move_to_end(key)
        self._busy[client] = self._busy.get(client, 0) + 1
        previous = self._paths_of.get(service_id)
        self._paths_of[service_id] = key
        try:
            if previous is not None and previous != key:
                await self._retire_if_unused(previous)
            while len(self._clients) > self._max:
                oldest = next(iter(self._clients))
                self._paths_of = {s: k for s, k in self._paths_of.items() if k != oldest}
                await self._retire(oldest)
            yield client
        finally:
            self._busy[client] -= 1
            if not self._busy[client]:
                del self._busy[client]
                if client in self._retired:
                    await self._close(client)

    async def forget(self, service_id: str) -> None:
        """The service was disabled or reconfigured: its client goes unless another uses it."""
        previous = self._paths_of.pop(service_id, None)
        if previous is not None:
            await self._retire_if_unused(previous)

    async def _retire_if_unused(self, key: CertKey) -> None:
        if key not in self._paths_of.values():
            await self._retire(key)

    async def _retire(self, key: CertKey) -> None:
        client = self._clients.pop(key, None)
        self._stamps.pop(key, None)
        if client is None:
            return
        self._retired.add(client)
        if client not in self._busy:
            await self._close(client)

    async def _close(self, client: httpx.AsyncClient) -> None:
        self._retired.discard(client)
        await client.aclose()

    async def aclose(self) -> None:
        """Close every client (app shutdown, after the hook calls have ended)."""
        clients = [*self._clients.values(), *self._retired]
        self._clients.clear()
        self._stamps.clear()
        self._retired.clear()
        self._paths_of.clear()
        for client in clients:
            await client.aclose()
