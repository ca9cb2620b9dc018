"""The catalogue: every check the probe runs, why it matters, and where the rule is written.

Each check builds the request(s) it sends from a `Forge` (the probe's keys and claims) and a
`Target` (the endpoint called). `expect` says what a careful CDS Service does: "reject" (a bare
401 or 403, no card) or "accept" (the positive controls). The leak checks (`LEAK_CHECKS`) send
nothing: they examine every refusal the endpoint gave to the other checks.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from common.access_token import TYP as ACCESS_TOKEN_TYP
from common.clock import Clock
from mockehr.probe import forge
from mockehr.probe.forge import ProbeKey
from mockehr.probe.jwks_server import JwksEndpoints

Kind = Literal["discovery", "service", "feedback"]
Expect = Literal["accept", "reject"]

CDS_TRUST = "CDS Hooks 2.0.1 §Security: Trusting CDS Clients"
# How long the probe's tokens live: short, like a real CDS Client's (the EHR's are 60 s too).
LIFETIME = 60


@dataclass(frozen=True)
class Target:
    """One endpoint of the service under test."""

    kind: Kind
    name: str
    url: str  # the exact URL called: the audience a correct token names
    method: Literal["GET", "POST"]
    discovery_url: str
    other_url: str  # another endpoint of the same service (a token for it must not work here)
    body: Callable[[], dict[str, Any]] | None = None

    @property
    def base_url(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"


@dataclass
class Forge:
    """The probe as a CDS Client: its key, issuer and clock, and the decoys it can sign with."""

    key: ProbeKey
    jwks: JwksEndpoints
    clock: Clock

    @property
    def issuer(self) -> str:
        return self.jwks.issuer

    def claims(self, aud: object, **changes: object) -> dict[str, Any]:
        """Correct claims for `aud`; a change to None removes the claim."""
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": aud,
            "iat": now,
            "exp": now + LIFETIME,
            "jti": str(uuid.uuid4()),
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def header(self, **changes: object) -> dict[str, Any]:
        header: dict[str, Any] = {"alg": forge.ALG, "typ": "JWT", "kid": self.key.kid}
        header.update(changes)
        return {k: v for k, v in header.items() if v is not None}

    def token(
        self, aud: object, *, key: ProbeKey | None = None, header: dict[str, Any] | None = None, **changes: object
    ) -> str:
        return forge.signed(header or self.header(), self.claims(aud, **changes), key or self.key)


@dataclass(frozen=True)
class Attack:
    """What a check sends: one Authorization value per request (None: no header).

    With several, every request but the last is a correct use that must be accepted (the replay
    check); the last is the one judged. `bait` names the untrusted JWKS whose fetch fails the check.
    """

    authorizations: tuple[str | None, ...]
    bait: str | None = None

    @staticmethod
    def bearer(token: str, bait: str | None = None) -> Attack:
        return Attack((f"Bearer {token}",), bait)


Build = Callable[[Forge, Target], Attack]


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    explanation: str
    reference: str
    expect: Expect
    build: Build | None = None
    kinds: frozenset[Kind] = field(default_factory=lambda: frozenset({"discovery", "service", "feedback"}))


def _jku_attack(origin: Callable[[JwksEndpoints], str]) -> Build:
    def build(f: Forge, t: Target) -> Attack:
        nonce = secrets.token_urlsafe(12)
        decoy = forge.generate_key()
        url = f.jwks.bait(origin(f.jwks), nonce, decoy)
        return Attack.bearer(f.token(t.url, key=decoy, header=f.header(kid=decoy.kid, jku=url)), bait=nonce)

    return build


def _alg_none(alg: str) -> Build:
    return lambda f, t: Attack.bearer(forge.unsigned(f.header(alg=alg), f.claims(t.url)))


def _tampered(f: Forge, t: Target) -> Attack:
    # Sign a token for another endpoint, then point its payload at this one: the signature no
    # longer covers what the service reads.
    original = f.claims(t.other_url)
    token = forge.signed(f.header(), original, f.key)
    return Attack.bearer(forge.with_payload(token, {**original, "aud": t.url}))


def _replay(f: Forge, t: Target) -> Attack:
    token = f.token(t.url)
    return Attack((f"Bearer {token}", f"Bearer {token}"))


def _jwk_header(f: Forge, t: Target) -> Attack:
    decoy = forge.generate_key()
    return Attack.bearer(f.token(t.url, key=decoy, header=f.header(kid=decoy.kid, jwk=decoy.public_jwk())))


def _garbage(_f: Forge, _t: Target) -> Attack:
    return Attack((f"Bearer {secrets.token_urlsafe(48)}",))


def _not_bearer(f: Forge, t: Target) -> Attack:
    # A correct token under another scheme: a service that takes whatever follows the first space
    # parses credentials loosely.
    return Attack((f"Basic {f.token(t.url)}",))


def _future(seconds: int) -> Callable[[Forge], int]:
    return lambda f: int(f.clock()) + seconds


CONTROL = Check(
    "control",
    "A correctly signed request is accepted",
    "The positive control: an ES384 JWT from the registered issuer, signed by the key in its JWKS, "
    "with a fresh jti and aud equal to the URL called, sent before and after the other checks. If it "
    "is refused, no refusal below means anything: every dependent check is inconclusive.",
    f"{CDS_TRUST}; CDS Hooks 2.0.1 §Discovery, §Calling a CDS Service, §Feedback",
    "accept",
    lambda f, t: Attack.bearer(f.token(t.url)),
)

CHECKS: tuple[Check, ...] = (
    CONTROL,
    Check(
        "aud-array",
        "aud as an array holding the URL called is accepted",
        "RFC 7519 allows aud to be a string or an array of strings and CDS Hooks shows both forms; a "
        "service that refuses the array form rejects conformant CDS Clients. A positive control.",
        f"{CDS_TRUST} (aud: string or array); RFC 7519 §4.1.3",
        "accept",
        lambda f, t: Attack.bearer(f.token([t.url])),
    ),
    Check(
        "no-authorization",
        "No Authorization header",
        "Every call, discovery included, must carry the CDS Client's JWT; a request without one is anonymous.",
        f"{CDS_TRUST}; RFC 6750 §3",
        "reject",
        lambda _f, _t: Attack((None,)),
    ),
    Check(
        "scheme-not-bearer",
        "A correct JWT under a scheme other than Bearer",
        "The header must be `Authorization: Bearer <JWT>`; a service that ignores the scheme parses "
        "credentials loosely.",
        f"{CDS_TRUST}; RFC 6750 §2.1",
        "reject",
        _not_bearer,
    ),
    Check(
        "garbage-token",
        "A Bearer value that is not a JWT",
        "Random bytes in place of a token must be refused, not crash the parser.",
        "RFC 7515 §5.2; RFC 7519 §7.2",
        "reject",
        _garbage,
    ),
    Check(
        "alg-none",
        'alg "none" (unsigned token)',
        "An unsecured JWS carries no signature: accepting it lets anyone write any claims.",
        "RFC 8725 §2.1, §3.1; RFC 7518 §3.6",
        "reject",
        _alg_none("none"),
    ),
    Check(
        "alg-none-capitalised",
        'alg "None" (case variant)',
        "Some libraries block only the exact string `none`; an algorithm allow-list blocks every spelling.",
        "RFC 8725 §3.1",
        "reject",
        _alg_none("None"),
    ),
    Check(
        "alg-none-uppercase",
        'alg "NONE" (case variant)',
        "Some libraries block only the exact string `none`; an algorithm allow-list blocks every spelling.",
        "RFC 8725 §3.1",
        "reject",
        _alg_none("NONE"),
    ),
    Check(
        "alg-hs256-public-key",
        "HS256 keyed with the CDS Client's public key",
        "Algorithm confusion: a verifier that lets the token pick HMAC uses the published public key "
        "(PEM) as the shared secret, which anyone can do.",
        "RFC 8725 §2.1, §3.1",
        "reject",
        lambda f, t: Attack.bearer(forge.hmac_signed(f.header(alg="HS256"), f.claims(t.url), f.key.public_pem())),
    ),
    Check(
        "signature-unknown-key",
        "Signed by a key the CDS Client never published (with its kid)",
        "The header names the registered key but another key signed: only signature verification tells.",
        f"{CDS_TRUST}; RFC 7515 §5.2",
        "reject",
        lambda f, t: Attack.bearer(f.token(t.url, key=forge.generate_key())),
    ),
    Check(
        "payload-tampered",
        "Payload changed after signing",
        "A token signed for another endpoint with its aud rewritten to this one: the signature no "
        "longer covers what the service reads.",
        "RFC 7515 §5.2",
        "reject",
        _tampered,
    ),
    Check(
        "kid-missing",
        "No kid in the header",
        "CDS Hooks requires kid to name the signing key in the CDS Client's JWK Set; without it a "
        "service guesses which key to trust.",
        f"{CDS_TRUST} (JWT header: kid REQUIRED)",
        "reject",
        lambda f, t: Attack.bearer(f.token(t.url, header=f.header(kid=None))),
    ),
    Check(
        "kid-unknown",
        "A kid that is in no trusted JWK Set",
        "The key must be the one the kid names; trying every key (or any key) is what lets confusions through.",
        f"{CDS_TRUST}; RFC 7515 §4.1.4",
        "reject",
        lambda f, t: Attack.bearer(f.token(t.url, header=f.header(kid=f"probe-{secrets.token_hex(8)}"))),
    ),
    Check(
        "jwk-header",
        "The verification key carried in a jwk header",
        "A token that brings its own key is signed by whoever made it; keys come only from the JWKS "
        "registered for the issuer.",
        "RFC 8725 §3.10; RFC 7515 §4.1.3",
        "reject",
        _jwk_header,
    ),
    Check(
        "jku-untrusted-same-origin",
        "jku to an untrusted JWK Set on the CDS Client's own origin",
        "A jku is acceptable only if it equals a JWKS URL registered for the issuer. This one shares "
        "the registered URL's origin (a prefix allow-list lets it through). Fetching it is itself a "
        "failure: the token chose where the service sends a request (SSRF).",
        f"{CDS_TRUST} (jku); RFC 8725 §3.10; RFC 7515 §4.1.2",
        "reject",
        _jku_attack(lambda j: j.issuer),
    ),
    Check(
        "jku-untrusted-origin",
        "jku to a JWK Set on an origin the service was never told about",
        "A jku is acceptable only if it equals a JWKS URL registered for the issuer; this one is on an "
        "HTTPS origin the service was never told about (served by the probe on loopback, which records "
        "any fetch: fetching it is itself a failure, SSRF).",
        f"{CDS_TRUST} (jku); RFC 8725 §3.10",
        "reject",
        _jku_attack(lambda j: j.other_https_origin),
    ),
    Check(
        "jku-http",
        "jku over plain http",
        "A key set fetched without TLS can be swapped in transit; and fetching it is SSRF.",
        "CDS Hooks 2.0.1 §Security (every endpoint over TLS); RFC 8725 §2.9, §3.10",
        "reject",
        _jku_attack(lambda j: j.http_origin),
    ),
    Check(
        "iss-untrusted",
        "An issuer the service does not trust (signed by the probe's key)",
        "The issuer must be allow-listed, and its keys only those registered for it.",
        f"{CDS_TRUST} (iss); RFC 8725 §3.8",
        "reject",
        lambda f, t: Attack.bearer(f.token(t.url, iss="https://untrusted-ehr.invalid")),
    ),
    Check(
        "aud-other-endpoint",
        "aud of another endpoint of the same service",
        "A token is for the exact URL called; one captured at another endpoint (another service, or "
        "the service call when this is its feedback) must not work here.",
        f"{CDS_TRUST} (aud: the CDS Service endpoint being invoked); RFC 8725 §2.7, §3.9",
        "reject",
        lambda f, t: Attack.bearer(f.token(t.other_url)),
    ),
    Check(
        "aud-discovery",
        "aud of the discovery URL",
        "A discovery token must not invoke a service or send feedback.",
        f"{CDS_TRUST} (aud); RFC 8725 §3.9",
        "reject",
        lambda f, t: Attack.bearer(f.token(t.discovery_url)),
        frozenset({"service", "feedback"}),
    ),
    Check(
        "aud-base-url",
        "aud of the service's base URL",
        "The origin is not the endpoint: aud names the exact URL.",
        f"{CDS_TRUST} (aud); RFC 7519 §4.1.3",
        "reject",
        lambda f, t: Attack.bearer(f.token(t.base_url)),
    ),
    Check(
        "aud-trailing-slash",
        "aud of the URL called plus a trailing slash",
        "aud is compared exactly (RFC 7519 string comparison); a lenient comparison invites others.",
        f"{CDS_TRUST} (aud); RFC 7519 §2 (StringOrURI), §4.1.3",
        "reject",
        lambda f, t: Attack.bearer(f.token(t.url + "/")),
    ),
    Check(
        "aud-missing",
        "No aud claim",
        "aud is required: a token without one is for no one in particular.",
        f"{CDS_TRUST} (aud REQUIRED); RFC 7519 §4.1.3",
        "reject",
        lambda f, t: Attack.bearer(f.token(None)),
    ),
    Check(
        "exp-past",
        "Expired ten minutes ago",
        "An expired token must be refused (a small clock-skew leeway is fine; ten minutes is not).",
        f"{CDS_TRUST} (exp); RFC 7519 §4.1.4",
        "reject",
        lambda f, t: Attack.bearer(f.token(t.url, iat=_future(-660)(f), exp=_future(-600)(f))),
    ),
    Check(
        "exp-missing",
        "No exp claim",
        "exp is required: a token without one never expires.",
        f"{CDS_TRUST} (exp REQUIRED); RFC 7519 §4.1.4",
        "reject",
        lambda f, t: Attack.bearer(f.token(t.url, exp=None)),
    ),
    Check(
        "exp-far-future",
        "exp a year ahead",
        "A token valid for a year is a credential anyone who sees it keeps; CDS Client JWTs are "
        "short-lived and a service caps the lifetime it accepts (and must remember jti that long).",
        f"{CDS_TRUST} (exp); RFC 7523 §3 (exp unreasonably far in the future), adopted by Argonaut risk R16",
        "reject",
        lambda f, t: Attack.bearer(f.token(t.url, exp=_future(365 * 86400)(f))),
    ),
    Check(
        "iat-future",
        "iat an hour in the future",
        "A token issued in the future was made by a wrong clock or for later use.",
        f"{CDS_TRUST} (iat); RFC 7519 §4.1.6",
        "reject",
        lambda f, t: Attack.bearer(f.token(t.url, iat=_future(3600)(f), exp=_future(LIFETIME)(f))),
    ),
    Check(
        "jti-missing",
        "No jti claim",
        "jti is required; without it a service cannot refuse a replay.",
        f"{CDS_TRUST} (jti REQUIRED); RFC 7519 §4.1.7",
        "reject",
        lambda f, t: Attack.bearer(f.token(t.url, jti=None)),
    ),
    Check(
        "jti-replayed",
        "The same token sent twice",
        "The first use is accepted, the second refused: jti is a nonce, remembered while the token lives.",
        f"{CDS_TRUST} (jti: protects against replay attacks); RFC 7519 §4.1.7",
        "reject",
        _replay,
    ),
    Check(
        "typ-not-jwt",
        f'typ "{ACCESS_TOKEN_TYP}" instead of "JWT"',
        "Explicit typing keeps a token of another kind (here an OAuth access token) from being taken "
        "for a CDS Client JWT.",
        f"{CDS_TRUST} (typ: JWT); RFC 8725 §3.11",
        "reject",
        lambda f, t: Attack.bearer(f.token(t.url, header=f.header(typ=ACCESS_TOKEN_TYP))),
    ),
)

LEAK_CHECKS: tuple[Check, ...] = (
    Check(
        "leak-reason",
        "Refusals do not say why",
        "A refusal that names the failed check (expired, signature, audience…) in its body or in "
        "WWW-Authenticate tells an attacker what to fix next. A bare 401.",
        f"{CDS_TRUST}; RFC 6750 §3 (error_description is optional); OWASP ASVS V7.4.1",
        "reject",
    ),
    Check(
        "leak-stack-trace",
        "Refusals carry no stack trace",
        "A stack trace discloses code, paths and versions.",
        "OWASP ASVS V7.4.1; CWE-209",
        "reject",
    ),
    Check(
        "leak-token-echo",
        "Refusals do not echo the token",
        "A response that repeats the token (or its jti) copies a credential into logs and caches it "
        "was never meant for.",
        "RFC 6750 §5.3; CWE-209",
        "reject",
    ),
)

ALL_CHECKS: tuple[Check, ...] = CHECKS + LEAK_CHECKS


def by_id(check_id: str) -> Check:
    for check in ALL_CHECKS:
        if check.id == check_id:
            return check
    raise KeyError(check_id)
