"""The one way a service accepts a JWT it received: kid → keys → verify → replay.

Every JWT the stack accepts (access tokens at the FHIR guard and the authorization server,
client and user assertions, id_tokens, CDS Hooks JWTs at the example service) goes through
`verify`:

1. the header alone is checked first (pinned algorithm, `typ`, no key-bearing header, trusted
   `jku`, a `kid`: RFC 8725 §3.1, §3.10, §3.11), so a token refused by its header costs no key
   fetch;
2. the keys for that `kid` are asked of the caller's key source (a JWKS cache, a client's
   registered keys, the server's own key set), which may refetch on an unknown kid;
3. `common/jose.py:verify_jwt` checks the signature and claims;
4. with `JwtRules.subject`, `sub` must be that value (RFC 7523 §3 item 2);
5. with a replay record, the `jti` is recorded and a second use refused (RFC 7523 §3 item 7,
   CDS Hooks 2.0 `jti`) for as long as the token would still verify (exp + leeway).

Separate from common/jose.py on purpose: jose.py is the synchronous primitive over the JOSE
library (the only module importing it); this is the asynchronous sequence around it, which
awaits key sources and replay stores that jose.py knows nothing of.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from common.clock import Clock, system_clock
from common.errors import TokenInvalidError
from common.jose import KeySet, VerifiedToken, check_header, unverified_header, verify_jwt

# kid → the key set to verify with (raises TokenInvalidError when no keys can be had).
KeySource = Callable[[str], Awaitable[KeySet]]
# (key, remember until) → True on first use only: common/replay.py:ReplayStore.first_use.
FirstUse = Callable[[str, int], Awaitable[bool]]


class TokenReplayedError(TokenInvalidError):
    """A valid JWT whose `jti` was used before; callers may answer it differently."""


@dataclass(frozen=True)
class JwtRules:
    """What one kind of JWT must be: the arguments of verify_jwt, plus an expected `sub`."""

    algorithms: Collection[str]
    typ: str
    issuer: str | Collection[str]
    audience: str
    clock: Clock = system_clock
    leeway: int = 30
    max_lifetime: int | None = None
    require: Collection[str] = ("exp", "iat", "jti")
    allowed_jku: Collection[str] = ()
    subject: str | None = None


@dataclass(frozen=True)
class Replay:
    """Where a token kind's `jti`s are recorded: the key is `{namespace}|{jti}`."""

    first_use: FirstUse
    namespace: str


async def verify(token: str, keys: KeySource, rules: JwtRules, replay: Replay | None = None) -> VerifiedToken:
    """Verify `token` under `rules`; raise TokenInvalidError (TokenReplayedError on a replay)."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise TokenInvalidError("not a compact JWS")
    kid = check_header(
        unverified_header(token), algorithms=rules.algorithms, typ=rules.typ, allowed_jku=rules.allowed_jku
    )
    verified = verify_jwt(
        token,
        await keys(kid),
        algorithms=rules.algorithms,
        typ=rules.typ,
        issuer=rules.issuer,
        audience=rules.audience,
        clock=rules.clock,
        leeway=rules.leeway,
        max_lifetime=rules.max_lifetime,
        require=rules.require,
        allowed_jku=rules.allowed_jku,
    )
    claims = verified.claims
    if rules.subject is not None and claims.get("sub") != rules.subject:
        raise TokenInvalidError("sub differs from the expected subject")
    if replay is not None:
        if not isinstance(claims.get("jti"), str) or not claims["jti"]:
            raise TokenInvalidError("jti missing")
        if not await replay.first_use(f"{replay.namespace}|{claims['jti']}", int(claims["exp"]) + rules.leeway):
            raise TokenReplayedError("jti replayed")
    return verified


def fixed_keys(key_set: KeySet) -> KeySource:
    """A key source that always answers the same key set (keys already in hand)."""

    async def keys(_kid: str) -> KeySet:
        return key_set

    return keys
