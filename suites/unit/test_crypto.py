"""Unit tests of ``app.core.crypto``: sealing and opening stored secrets with AES-256-GCM,
key rotation by key id, tamper and misuse detection, and building the box from settings."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import Any

import pytest

from app.core.config import Settings
from app.core.crypto import DERIVED_KEY_ID, NONCE_BYTES, VERSION, CryptoError, SecretBox

MakeSettings = Callable[..., Settings]
ROW = "provider_key:4a1c"  # associated data: the row a sealed value belongs to


def key() -> bytes:
    return os.urandom(32)


def b64(raw: bytes, *, padded: bool = True) -> str:
    text = base64.urlsafe_b64encode(raw).decode("ascii")
    return text if padded else text.rstrip("=")


def parts(token: str) -> tuple[str, str, str]:
    version, key_id, body = token.split(":", 2)
    return version, key_id, body


# -- seal and open -----------------------------------------------------------------------------


@pytest.mark.parametrize("plaintext", ["sk-test-123", "", "ключ 🔑 with ünïcode", "x" * 5000])
def test_seal_then_open_round_trips(plaintext: str) -> None:
    box = SecretBox({"k1": key()})
    token = box.seal(plaintext, ROW)
    assert box.open(token, ROW) == plaintext


def test_a_sealed_value_names_version_and_key_and_hides_the_plaintext() -> None:
    box = SecretBox({"k1": key()})
    token = box.seal("sk-very-secret", ROW)
    version, key_id, body = parts(token)
    assert (version, key_id) == (VERSION, "k1")
    assert "sk-very-secret" not in token
    assert "=" not in body, "the body is unpadded base64url"
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    # nonce, then ciphertext (same length as the plaintext) and a 16-byte tag
    assert len(raw) == NONCE_BYTES + len("sk-very-secret") + 16


def test_each_seal_uses_a_fresh_nonce() -> None:
    box = SecretBox({"k1": key()})
    first, second = box.seal("same", ROW), box.seal("same", ROW)
    assert first != second
    assert box.open(first, ROW) == box.open(second, ROW) == "same"


def test_the_first_key_is_current() -> None:
    box = SecretBox({"new": key(), "old": key()})
    assert box.current_key_id == "new"
    assert SecretBox.key_id_of(box.seal("v", ROW)) == "new"


# -- rotation ------------------------------------------------------------------------------


def test_a_value_sealed_with_an_old_key_opens_after_a_new_current_key_is_added() -> None:
    old_key = key()
    before = SecretBox({"k0": old_key})
    sealed_before = before.seal("sk-old", ROW)
    assert SecretBox.key_id_of(sealed_before) == "k0"

    rotated = SecretBox({"k1": key(), "k0": old_key})
    assert rotated.current_key_id == "k1"
    assert rotated.open(sealed_before, ROW) == "sk-old"
    sealed_after = rotated.seal("sk-new", ROW)
    assert SecretBox.key_id_of(sealed_after) == "k1"
    assert rotated.open(sealed_after, ROW) == "sk-new"

    # The old box cannot open what the new key sealed: it does not know k1.
    with pytest.raises(CryptoError, match="unknown key id 'k1'"):
        before.open(sealed_after, ROW)


def test_a_key_id_naming_the_wrong_key_fails_to_open() -> None:
    box = SecretBox({"k1": key(), "k0": key()})
    _, _, body = parts(box.seal("v", ROW))
    with pytest.raises(CryptoError, match="corrupt or belongs elsewhere"):
        box.open(f"{VERSION}:k0:{body}", ROW)


# -- refusals ------------------------------------------------------------------------------


def test_wrong_associated_data_is_refused() -> None:
    box = SecretBox({"k1": key()})
    token = box.seal("sk-row-a", "provider_key:a")
    with pytest.raises(CryptoError, match="corrupt or belongs elsewhere"):
        box.open(token, "provider_key:b")


@pytest.mark.parametrize("position", [0, NONCE_BYTES, -1])
def test_a_tampered_body_is_refused(position: int) -> None:
    box = SecretBox({"k1": key()})
    version, key_id, body = parts(box.seal("sk-tamper", ROW))
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[position] ^= 0x01  # nonce, ciphertext, tag
    tampered = f"{version}:{key_id}:{b64(bytes(raw), padded=False)}"
    with pytest.raises(CryptoError, match="corrupt or belongs elsewhere"):
        box.open(tampered, ROW)


@pytest.mark.parametrize(
    "body",
    [
        "AAAA",  # decodes, but shorter than nonce + tag
        "not*base64*at*all",  # not the base64url alphabet
        "A",  # impossible base64 length
    ],
)
def test_a_body_that_is_not_a_ciphertext_is_refused(body: str) -> None:
    box = SecretBox({"k1": key()})
    with pytest.raises(CryptoError, match="corrupt or belongs elsewhere"):
        box.open(f"{VERSION}:k1:{body}", ROW)


def test_a_non_ascii_body_is_refused_as_a_crypto_error() -> None:
    box = SecretBox({"k1": key()})
    with pytest.raises(CryptoError):
        box.open(f"{VERSION}:k1:ÄÖÜ", ROW)


def test_an_unknown_key_id_is_refused() -> None:
    box = SecretBox({"k1": key()})
    _, _, body = parts(box.seal("v", ROW))
    with pytest.raises(CryptoError, match="unknown key id 'gone'"):
        box.open(f"{VERSION}:gone:{body}", ROW)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "sk-plaintext-key",
        "v1",
        "v1:k1",
        "v1:k1:",
        "v2:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "V1:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_not_a_sealed_value_is_refused(token: str) -> None:
    box = SecretBox({"k1": key()})
    with pytest.raises(CryptoError, match="not a sealed value"):
        box.open(token, ROW)


# -- construction ---------------------------------------------------------------------------


def test_a_box_needs_a_key() -> None:
    with pytest.raises(CryptoError, match="at least one encryption key"):
        SecretBox({})


@pytest.mark.parametrize("length", [0, 16, 24, 31, 33, 64])
def test_keys_must_be_32_bytes(length: int) -> None:
    with pytest.raises(CryptoError, match=r"'short' must be 32 bytes"):
        SecretBox({"k1": key(), "short": os.urandom(length)})


def test_key_ids_must_not_contain_a_colon() -> None:
    with pytest.raises(CryptoError, match="must not contain ':'"):
        SecretBox({"a:b": key()})


# -- from settings --------------------------------------------------------------------------


def test_from_settings_with_encryption_keys(make_settings: MakeSettings) -> None:
    k1, k0 = key(), key()
    settings = make_settings(encryption_keys=f"k1:{b64(k1)},k0:{b64(k0, padded=False)}")
    box = SecretBox.from_settings(settings)
    assert box.current_key_id == "k1"

    # Same keys, built by hand: each box opens the other's values, with either key.
    by_hand = SecretBox({"k1": k1, "k0": k0})
    assert box.open(by_hand.seal("one", ROW), ROW) == "one"
    assert by_hand.open(box.seal("two", ROW), ROW) == "two"
    assert box.open(SecretBox({"k0": k0}).seal("old", ROW), ROW) == "old"


@pytest.mark.parametrize("material", ["abcde", "A", "QUJD=RA"])
def test_from_settings_with_bad_base64(make_settings: MakeSettings, material: str) -> None:
    settings = make_settings(encryption_keys=f"good:{b64(key())},bad:{material}")
    with pytest.raises(CryptoError, match="'bad' is not valid base64") as raised:
        SecretBox.from_settings(settings)
    assert material not in str(raised.value), "the key material is never echoed"


@pytest.mark.parametrize("material", ["%%%%not-base64", "!" * 44, "a b c d"])
def test_from_settings_with_garbage_key_material_is_refused(
    make_settings: MakeSettings, material: str
) -> None:
    settings = make_settings(encryption_keys={"bad": material})
    with pytest.raises(CryptoError, match="'bad' is not valid base64"):
        SecretBox.from_settings(settings)


def test_a_valid_key_with_a_stray_character_is_refused(make_settings: MakeSettings) -> None:
    encoded = b64(key())
    settings = make_settings(encryption_keys={"bad": f"{encoded[:20]}!{encoded[20:]}"})
    with pytest.raises(CryptoError, match="'bad' is not valid base64"):
        SecretBox.from_settings(settings)


def test_from_settings_with_a_non_ascii_key(make_settings: MakeSettings) -> None:
    settings = make_settings(encryption_keys={"k1": "clé-é"})
    with pytest.raises(CryptoError, match="'k1' is not valid base64"):
        SecretBox.from_settings(settings)


@pytest.mark.parametrize("length", [16, 31, 33])
def test_from_settings_with_a_wrong_key_length(make_settings: MakeSettings, length: int) -> None:
    settings = make_settings(encryption_keys=f"k1:{b64(os.urandom(length))}")
    with pytest.raises(CryptoError, match="'k1' must be 32 bytes"):
        SecretBox.from_settings(settings)


def test_from_settings_with_a_colon_in_a_key_id(make_settings: MakeSettings) -> None:
    # The comma-separated form splits at the first ':', so a colon can only come from a
    # mapping (a settings file or code).
    settings = make_settings(encryption_keys={"team:2024": b64(key())})
    with pytest.raises(CryptoError, match="must not contain ':'"):
        SecretBox.from_settings(settings)


def test_from_settings_without_keys_derives_one_from_the_secret_key(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings()
    assert settings.encryption_keys == {}
    box = SecretBox.from_settings(settings)
    assert box.current_key_id == DERIVED_KEY_ID
    token = box.seal("sk-derived", ROW)
    assert SecretBox.key_id_of(token) == DERIVED_KEY_ID

    # Deterministic: another box from the same secret opens it; another secret does not.
    assert SecretBox.from_settings(make_settings()).open(token, ROW) == "sk-derived"
    other = SecretBox.from_settings(make_settings(secret_key="another-secret-key-" + "z" * 32))
    with pytest.raises(CryptoError, match="corrupt or belongs elsewhere"):
        other.open(token, ROW)


def test_configured_keys_replace_the_derived_one(make_settings: MakeSettings) -> None:
    derived = SecretBox.from_settings(make_settings())
    token = derived.seal("v", ROW)
    configured = SecretBox.from_settings(make_settings(encryption_keys=f"k1:{b64(key())}"))
    with pytest.raises(CryptoError, match="unknown key id 'derived'"):
        configured.open(token, ROW)


# -- key_id_of ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("v1:k1:body", "k1"),
        ("v1:derived:body:with:colons", "derived"),
        ("v1::body", ""),
        ("v1:k1", ""),
        ("plain", ""),
        ("", ""),
    ],
)
def test_key_id_of(token: str, expected: str) -> None:
    assert SecretBox.key_id_of(token) == expected


def test_key_id_of_a_real_token_matches_the_sealing_key() -> None:
    box: Any = SecretBox({"rot-2025_01": key()})
    assert SecretBox.key_id_of(box.seal("v", ROW)) == "rot-2025_01"
