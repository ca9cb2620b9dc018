"""The requests Session under fhirclient: verified TLS against the dev CA only, a timeout, no redirects.

fhirclient talks HTTP through `FHIRServer.session` (requests) and never passes a timeout nor
any TLS setting, so the session itself carries them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests
from requests.adapters import BaseAdapter, HTTPAdapter


class TimeoutSession(requests.Session):
    """A Session that gives every request a timeout (requests' default is to wait forever, which
    would pin a worker thread on a silent server; fhirclient never passes one)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = (min(timeout, 5.0), timeout)  # (connect, read)

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().request(*args, **kwargs)


def smart_session(*, ca_file: Path, timeout: float, adapter: BaseAdapter | None = None) -> requests.Session:
    """A Session for fhirclient: https only, verified against `ca_file`, no redirects, no environment.

    - `verify` is the dev CA's path: only certificates it issued are accepted (never False).
    - `trust_env = False`: with it on, requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace
      the session's `verify` on every request and proxy variables reroute calls that carry tokens.
    - `max_redirects = 0`: a redirect is an error, so the app only talks to the URLs it chose.
    - plain http has no adapter at all: such a URL fails before anything is sent.
    - every request has a timeout (TimeoutSession).
    `adapter` replaces the network in tests (it still receives `verify` and `timeout`).
    """
    session = TimeoutSession(timeout)
    session.verify = str(ca_file)
    session.trust_env = False
    session.max_redirects = 0
    session.adapters.clear()
    session.mount("https://", adapter if adapter is not None else HTTPAdapter(max_retries=0))
    return session
