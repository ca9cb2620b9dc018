"""Hypothesis strategies shared by the fuzz tests: hostile text, JSON values, JWT-shaped strings."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import strategies as st

# Values that have broken parsers, SQL builders and templates elsewhere.
NASTY = (
    "",
    " ",
    "'",
    '"',
    "\\",
    "%",
    "_",
    "%25",
    "%00",
    "\x00",
    "\n",
    "\r\n",
    "../",
    "..%2f",
    "/",
    "?",
    "#",
    "&",
    "=",
    ",",
    "|",
    "$",
    ":",
    ".",
    "*",
    "null",
    "true",
    "-1",
    "0",
    "1e309",
    "NaN",
    "Infinity",
    "-0",
    "9" * 19,
    "<script>alert(1)</script>",
    "javascript:alert(1)",
    "{{7*7}}",
    "${jndi:x}",
    "' OR '1'='1",
    "😀",
    "\u202e",
    "\ufeff",
    "ǅ",
    "İ",
    "a" * 300,
)

# Text that httpx can put in a URL, form or header value is any text without surrogates.
text = st.one_of(
    st.sampled_from(NASTY), st.text(max_size=40), st.from_regex(r"[A-Za-z0-9._:/|-]{1,24}", fullmatch=True)
)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)

_INT_BOUND = 2**80  # beyond every integer column and C long
integers = st.integers(-_INT_BOUND, _INT_BOUND)
numbers_text = st.one_of(integers.map(str), st.sampled_from(["1e3", "0x10", "1_000", "-", "+1", " 1", "1.5", "٣"]))

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    integers,
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: Any) -> str:
    return b64url(json.dumps(value).encode())


# JWT headers and claims that are odd rather than random: wrong types, unknown algorithms, kid
# traversal, embedded keys, header parameters a verifier must not trust.
jwt_headers = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.one_of(st.sampled_from(["none", "None", "HS256", "RS256", "ES384", "EdDSA", ""]), json_values),
        "typ": st.one_of(st.sampled_from(["JWT", "at+jwt", "user+jwt", "JOSE"]), json_values),
        "kid": st.one_of(st.sampled_from(["../../etc/passwd", "", "x" * 200]), json_values),
        "jku": st.sampled_from(["https://evil.example/jwks", "file:///etc/passwd"]),
        "jwk": st.one_of(st.just({"kty": "oct", "k": "AAAA"}), json_values),
        "x5u": st.just("https://evil.example/x5c"),
        "crit": st.one_of(st.just(["exp"]), json_values),
        "b64": st.booleans(),
        "zip": st.just("DEF"),
    },
)


def jwt_claims(defaults: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """`defaults` (valid claims) with some replaced or dropped and random ones added."""
    claim_value = json_values
    aud_values = claim_value

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        claims = dict(defaults)
        for name in list(claims):
            choice = draw(st.integers(0, 5))
            if choice == 0:
                del claims[name]
            elif choice == 1:
                claims[name] = draw(aud_values if name == "aud" else claim_value)
        claims.update(
            draw(st.dictionaries(st.sampled_from(["nbf", "cnf", "act", "scope", "x"]), claim_value, max_size=2))
        )
        return claims

    return build()


def forged_jwts(defaults: dict[str, Any]) -> st.SearchStrategy[str]:
    """JWT-shaped strings that are not validly signed: structure, encoding and content vary."""
    structured = st.builds(
        lambda h, c, sig: f"{_segment(h)}.{_segment(c)}.{sig}",
        jwt_headers,
        jwt_claims(defaults),
        st.one_of(st.just(""), st.binary(max_size=96).map(b64url), text),
    )
    return st.one_of(
        structured,
        structured.map(lambda t: t[: len(t) // 2]),  # truncated
        st.lists(st.binary(max_size=40).map(b64url), max_size=6).map(".".join),  # random base64 segments
        st.lists(text, max_size=5).map(".".join),
        text,
    )
