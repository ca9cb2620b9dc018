"""The probe's tokens: the correct ones verify under common.jose, the forged ones are what they claim."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import DictKey

from common.errors import ConfigError, TokenInvalidError
from common.jose import KeySet, verify_jwt
from mockehr.probe import forge

AUD = "https://cds.test/cds-services/x"
ISS = "https://probe.test"


def _decode(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def _claims() -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISS, "aud": AUD, "iat": now, "exp": now + 60, "jti": "j-1"}


def _jwk(values: dict[str, str]) -> DictKey:
    # joserfc types a JWK as str-or-list values; the probe's keys only hold strings.
    return {**values}


def _keys(key: forge.ProbeKey) -> KeySet:
    return KeySet.import_key_set({"keys": [_jwk(key.published_jwk())]})


def test_a_correctly_signed_probe_token_verifies_with_the_published_jwk() -> None:
    key = forge.generate_key()
    token = forge.signed({"typ": "JWT", "kid": key.kid}, _claims(), key)

    verified = verify_jwt(token, _keys(key), algorithms=["ES384"], typ="JWT", issuer=ISS, audience=AUD)

    assert verified.header == {"typ": "JWT", "kid": key.kid, "alg": "ES384"}
    assert verified.claims["jti"] == "j-1"


def test_the_kid_is_the_rfc_7638_thumbprint_of_the_public_key() -> None:
    from joserfc.jwk import ECKey

    key = forge.generate_key()

    assert key.kid == ECKey.import_key(_jwk(key.public_jwk())).thumbprint()
    assert not {"d"} & key.published_jwk().keys()


def test_a_tampered_token_keeps_its_signature_and_no_longer_verifies() -> None:
    key = forge.generate_key()
    token = forge.signed({"typ": "JWT", "kid": key.kid}, _claims(), key)

    tampered = forge.with_payload(token, {**_claims(), "jti": "j-2"})

    assert tampered.split(".")[2] == token.split(".")[2]
    assert _decode(tampered.split(".")[1])["jti"] == "j-2"
    with pytest.raises(TokenInvalidError):
        verify_jwt(tampered, _keys(key), algorithms=["ES384"], typ="JWT", issuer=ISS, audience=AUD)


def test_an_unsigned_token_names_the_given_alg_and_has_an_empty_signature() -> None:
    token = forge.unsigned({"alg": "NONE", "typ": "JWT"}, _claims())

    head, payload, signature = token.split(".")
    assert _decode(head)["alg"] == "NONE"
    assert _decode(payload)["aud"] == AUD
    assert signature == ""


def test_the_hs256_token_is_an_hmac_keyed_with_the_public_key_pem() -> None:
    key = forge.generate_key()
    token = forge.hmac_signed({"typ": "JWT", "kid": key.kid}, _claims(), key.public_pem())

    head, payload, signature = token.split(".")
    expected = hmac.new(key.public_pem(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
    assert _decode(head)["alg"] == "HS256"
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected


def test_the_probe_key_is_created_once_with_mode_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "probe" / "probe-key.pem"

    first = forge.load_or_create_key(path)
    second = forge.load_or_create_key(path)

    assert first.kid == second.kid
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_probe_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "probe-key.pem"
    forge.load_or_create_key(path)
    path.chmod(0o644)

    with pytest.raises(ConfigError, match="chmod 600"):
        forge.load_or_create_key(path)
