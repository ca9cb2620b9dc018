"""common.crypto: the key-encryption key and AES-256-GCM encryption at rest of private keys."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from common import crypto
from common.errors import ConfigError, KeyDecryptionError

KEK = hashlib.sha256(b"unit-test key-encryption key").digest()  # fixed: it appears in test ids
AAD = b"mockehr-signing-key:authserver:kid-1"
PLAINTEXT = b'{"kty":"EC","d":"secret-scalar"}'


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- decode_kek -------------------------------------------------------------------------------


def test_decode_kek_accepts_32_bytes_of_base64url_without_padding() -> None:
    raw = bytes(range(256))[-32:]  # has bytes whose base64 uses the url-safe '-' and '_'
    encoded = b64u(raw)
    assert "-" in encoded or "_" in encoded

    assert crypto.decode_kek(encoded) == raw


@pytest.mark.parametrize("wrap", ["{}=", " {} ", "{}\n", "\t{}\r\n"])
def test_decode_kek_tolerates_padding_and_surrounding_whitespace(wrap: str) -> None:
    assert crypto.decode_kek(wrap.format(b64u(KEK))) == KEK


@pytest.mark.parametrize(
    "value",
    [
        "not base64",
        "!" * 43,
        "@" + b64u(KEK),
        b64u(KEK)[:10] + "!" + b64u(KEK)[10:],
        b64u(KEK)[:20] + " " + b64u(KEK)[20:],
        "a",
    ],
)
def test_decode_kek_rejects_values_that_are_not_base64url(value: str) -> None:
    # "!" * 43 decodes to nothing (the decoder drops unknown characters), hence the length message.
    with pytest.raises(ConfigError, match=r"^key_encryption_key (is not base64url|must decode to 32 bytes)$"):
        crypto.decode_kek(value)


@pytest.mark.parametrize("wrap", ["!{}=", "{}!=", "{}=garbage", "{}=.x"])
def test_decode_kek_rejects_a_valid_key_wrapped_in_non_base64url_characters(wrap: str) -> None:
    with pytest.raises(ConfigError):
        crypto.decode_kek(wrap.format(b64u(KEK)))


@pytest.mark.parametrize("size", [0, 1, 16, 24, 31, 33, 64])
def test_decode_kek_rejects_keys_that_are_not_32_bytes(size: int) -> None:
    with pytest.raises(ConfigError, match=r"^key_encryption_key must decode to 32 bytes$"):
        crypto.decode_kek(b64u(os.urandom(size)))


def test_decode_kek_error_does_not_echo_the_value() -> None:
    secret = b64u(os.urandom(31))

    with pytest.raises(ConfigError) as info:
        crypto.decode_kek(secret)

    assert secret not in str(info.value)


# --- encrypt / decrypt ------------------------------------------------------------------------


def test_encrypt_then_decrypt_round_trips() -> None:
    assert crypto.decrypt(KEK, crypto.encrypt(KEK, PLAINTEXT, AAD), AAD) == PLAINTEXT


def test_encrypt_is_randomized_so_the_same_plaintext_never_gives_the_same_blob() -> None:
    blobs = {crypto.encrypt(KEK, PLAINTEXT, AAD) for _ in range(20)}

    assert len(blobs) == 20
    assert len({blob[1:13] for blob in blobs}) == 20  # a fresh 96-bit nonce each time


def test_the_blob_is_version_nonce_ciphertext_and_tag_and_hides_the_plaintext() -> None:
    blob = crypto.encrypt(KEK, PLAINTEXT, AAD)

    assert blob[:1] == b"\x01"
    assert len(blob) == 1 + 12 + len(PLAINTEXT) + 16
    assert b"secret-scalar" not in blob
    assert AAD not in blob


def test_decrypt_with_another_kek_raises_key_decryption_error() -> None:
    blob = crypto.encrypt(KEK, PLAINTEXT, AAD)

    with pytest.raises(KeyDecryptionError, match="key-encryption key differs"):
        crypto.decrypt(os.urandom(32), blob, AAD)


@pytest.mark.parametrize("aad", [b"", b"mockehr-signing-key:authserver:kid-2", b"mockehr-signing-key:fhirserver:kid-1"])
def test_decrypt_with_other_associated_data_raises_key_decryption_error(aad: bytes) -> None:
    blob = crypto.encrypt(KEK, PLAINTEXT, AAD)

    with pytest.raises(KeyDecryptionError):
        crypto.decrypt(KEK, blob, aad)


@pytest.mark.parametrize("position", [0 + 1, 5, 13, 20, -1])
def test_decrypt_refuses_a_blob_with_any_byte_flipped(position: int) -> None:
    blob = bytearray(crypto.encrypt(KEK, PLAINTEXT, AAD))
    blob[position] ^= 0x80

    with pytest.raises(KeyDecryptionError, match="does not decrypt"):
        crypto.decrypt(KEK, bytes(blob), AAD)


@pytest.mark.parametrize("length", [0, 1, 12, 13, 28])
def test_decrypt_refuses_a_truncated_blob_as_unknown_format(length: int) -> None:
    blob = crypto.encrypt(KEK, PLAINTEXT, AAD)[:length]

    with pytest.raises(KeyDecryptionError, match=r"^stored key has an unknown format$"):
        crypto.decrypt(KEK, blob, AAD)


def test_decrypt_refuses_a_blob_cut_after_the_minimum_length_as_undecryptable() -> None:
    blob = crypto.encrypt(KEK, PLAINTEXT, AAD)[:-1]

    with pytest.raises(KeyDecryptionError, match="does not decrypt"):
        crypto.decrypt(KEK, blob, AAD)


@pytest.mark.parametrize("version", [b"\x00", b"\x02", b"\xff", b"{"])
def test_decrypt_refuses_an_unknown_version_byte(version: bytes) -> None:
    blob = version + crypto.encrypt(KEK, PLAINTEXT, AAD)[1:]

    with pytest.raises(KeyDecryptionError, match=r"^stored key has an unknown format$"):
        crypto.decrypt(KEK, blob, AAD)


def test_decrypt_refuses_a_plaintext_json_key_stored_without_encryption() -> None:
    with pytest.raises(KeyDecryptionError, match=r"^stored key has an unknown format$"):
        crypto.decrypt(KEK, PLAINTEXT, AAD)
