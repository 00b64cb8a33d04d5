"""Encryption of stored secrets (users' provider keys) with AES-256-GCM.

A sealed value reads ``v1:<key id>:<base64url(nonce || ciphertext+tag)>``. The key id names
which of the configured keys sealed it, so keys can be rotated: new values use the current
(first) key, old ones still open with theirs. Associated data binds a ciphertext to the row it
belongs to, so it cannot be moved to another account's row. Without configured keys, one key
is derived from the secret key (HKDF), identified as ``derived``.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.core.config import Settings

VERSION = "v1"
NONCE_BYTES = 12
DERIVED_KEY_ID = "derived"


class CryptoError(Exception):
    """A value could not be sealed or opened (unknown key id, tampering, bad configuration)."""


def _b64decode(text: str) -> bytes:
    """Strict base64url: a character outside the alphabet is an error, never skipped."""
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)


class SecretBox:
    def __init__(self, keys: dict[str, bytes]) -> None:
        if not keys:
            raise CryptoError("at least one encryption key is needed")
        for key_id, key in keys.items():
            if len(key) != 32:
                raise CryptoError(f"encryption key {key_id!r} must be 32 bytes (AES-256)")
            if ":" in key_id:
                raise CryptoError(f"encryption key id {key_id!r} must not contain ':'")
        self._keys = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self.current_key_id = next(iter(keys))

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        if settings.encryption_keys:
            keys = {}
            for key_id, secret in settings.encryption_keys.items():
                try:
                    keys[key_id] = _b64decode(secret.get_secret_value())
                except (binascii.Error, ValueError) as exc:
                    raise CryptoError(f"encryption key {key_id!r} is not valid base64") from exc
            return cls(keys)
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"renum secret box v1"
        ).derive(settings.secret_key.get_secret_value().encode("utf-8"))
        return cls({DERIVED_KEY_ID: derived})

    def seal(self, plaintext: str, associated_data: str, key_id: str | None = None) -> str:
        """``plaintext`` sealed with the current key, or with ``key_id`` (a configured key:
        a value sealed beside others of its row under that key, which rotation moves on
        together)."""
        key_id = self.current_key_id if key_id is None else key_id
        aead = self._keys.get(key_id)
        if aead is None:
            raise CryptoError(f"cannot seal with unknown key id {key_id!r}")
        nonce = os.urandom(NONCE_BYTES)
        sealed = aead.encrypt(nonce, plaintext.encode("utf-8"), associated_data.encode("utf-8"))
        body = base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")
        return f"{VERSION}:{key_id}:{body}"

    def open(self, token: str, associated_data: str) -> str:
        version, _, rest = token.partition(":")
        key_id, _, body = rest.partition(":")
        if version != VERSION or not body:
            raise CryptoError("not a sealed value")
        aead = self._keys.get(key_id)
        if aead is None:
            raise CryptoError(f"sealed with unknown key id {key_id!r}")
        try:
            raw = _b64decode(body)
            plain = aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], associated_data.encode())
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise CryptoError("the sealed value is corrupt or belongs elsewhere") from exc
        return plain.decode("utf-8")

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The configured keys' ids, the primary (sealing) one first."""
        return tuple(self._keys)

    @staticmethod
    def key_id_of(token: str) -> str:
        return token.split(":", 2)[1] if token.count(":") >= 2 else ""
