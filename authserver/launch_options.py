"""Launch options: how the EHR asks for one launch to misbehave, the way app developers test
the edge cases of their app (as smart-launcher-v2's "Simulate error" and token lifetime).

The first-party EHR sets them when it registers the launch (POST /launch, `launch_options`);
nobody else can (the endpoint authenticates the EHR). They travel with the launch context
(launch → authorization code → refresh token family, as JSON in `launch_options`) and so apply
to that launch's grant only:

- `access_token_lifetime`: seconds, from MIN_LIFETIME up to the server's default (never longer);
- `simulate_error`:
  - `access_denied`: /authorize answers as if the user had denied the app (RFC 6749 §4.1.2.1);
  - `invalid_scope`: /authorize answers invalid_scope (RFC 6749 §4.1.2.1);
  - `token_revoked`: every access token of the grant is revoked as it is issued, so the FHIR
    server refuses it (401) before its `exp` once the revocation feed reaches it (≤ its poll
    interval, 1 s by default) — as when a user's access is withdrawn mid-session;
  - `refresh_refused`: the refresh grant answers invalid_grant (RFC 6749 §5.2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from authserver.errors import InvalidRequestError

SimulatedError = Literal["access_denied", "invalid_scope", "token_revoked", "refresh_refused"]
SIMULATED_ERRORS: tuple[str, ...] = get_args(SimulatedError)
MIN_LIFETIME = 60
_KEYS = frozenset({"access_token_lifetime", "simulate_error"})


@dataclass(frozen=True)
class LaunchOptions:
    access_token_lifetime: int | None = None
    simulate_error: SimulatedError | None = None

    def __bool__(self) -> bool:
        return self.access_token_lifetime is not None or self.simulate_error is not None

    def lifetime(self, default: int) -> int:
        """The access-token lifetime for this launch: the option, never above the default."""
        return min(self.access_token_lifetime, default) if self.access_token_lifetime else default

    def json(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.access_token_lifetime is not None:
            found["access_token_lifetime"] = self.access_token_lifetime
        if self.simulate_error is not None:
            found["simulate_error"] = self.simulate_error
        return found

    def column(self) -> str | None:
        return json.dumps(self.json(), sort_keys=True) if self else None

    @classmethod
    def from_column(cls, value: str | None) -> LaunchOptions:
        """From a stored row (written by `column`, so trusted); an unreadable value means none."""
        if not value:
            return cls()
        try:
            return parse(json.loads(value), max_lifetime=None)
        except (ValueError, InvalidRequestError):
            return cls()


def parse(value: object, *, max_lifetime: int | None) -> LaunchOptions:
    """`launch_options` of POST /launch: an object of the known keys, or absent."""
    if value is None:
        return LaunchOptions()
    if not isinstance(value, dict) or not value.keys() <= _KEYS:
        raise InvalidRequestError("launch_options is an object of access_token_lifetime and simulate_error")
    lifetime = value.get("access_token_lifetime")
    if lifetime is not None:
        top = max_lifetime if max_lifetime is not None else 86400
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or not MIN_LIFETIME <= lifetime <= top:
            raise InvalidRequestError(
                f"launch_options.access_token_lifetime is a number of seconds from {MIN_LIFETIME} to {top}"
            )
    error = value.get("simulate_error")
    if error is not None and error not in SIMULATED_ERRORS:
        raise InvalidRequestError("launch_options.simulate_error is one of " + ", ".join(SIMULATED_ERRORS))
    return LaunchOptions(access_token_lifetime=lifetime, simulate_error=cast("SimulatedError | None", error))
