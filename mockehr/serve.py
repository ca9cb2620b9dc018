"""`python -m mockehr.serve`: uvicorn's command line, with a stop that does not wait on idle peers.

On SIGTERM or Ctrl-C uvicorn closes every idle keep-alive connection and waits until each is gone.
Over TLS, asyncio's close sends close_notify and waits for the peer's (up to 30 s), and the peers
of the stack's services are each other's connection pools, which do not read an idle connection.
So every stop ran into --timeout-graceful-shutdown and logged `ERROR … graceful shutdown exceeded`.
Here idle connections (no request on them, so nothing to lose) are aborted at once; a connection
with a request in flight is left to uvicorn, which lets the response finish and then closes it.
Every other flag and behaviour is uvicorn's own; compose runs plain uvicorn.
"""

from __future__ import annotations

import importlib
import socket

from uvicorn.server import Server


class StackServer(Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for connection in list(self.server_state.connections):
            cycle = getattr(connection, "cycle", None)
            transport = getattr(connection, "transport", None)
            if transport is not None and (cycle is None or cycle.response_complete):
                transport.abort()
        await super().shutdown(sockets)


def main() -> None:
    # uvicorn.main.run() builds its server from the module-level name `Server`. (`uvicorn.main` as
    # an attribute is the click command the package re-exports, hence import_module.)
    cli = importlib.import_module("uvicorn.main")
    vars(cli)["Server"] = StackServer
    cli.main()


if __name__ == "__main__":
    main()
