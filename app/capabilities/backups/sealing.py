"""Encryption at rest of SQLite snapshots with age (https://age-encryption.org), through
pyrage, the Python binding of rage, its Rust implementation: X25519 recipients, ChaCha20-
Poly1305 in 64 KiB chunks, streamed, so a snapshot of any size is encrypted and decrypted
without being held in memory. A sealed snapshot is an ordinary age file: with the identity,
``age -d -i key.txt 20261205T091500123456Z.db.age > renum.db`` reads it without Renum.

The identity (``AGE-SECRET-KEY-1…``, ``renum backup keygen`` makes one) comes from
``backups.age_identity``; pyrage comes with the ``backups`` extra and is imported only here,
only when a snapshot is sealed or opened."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SUFFIX = ".age"


class SealingError(Exception):
    """A snapshot could not be sealed or opened (the message says why)."""


def _pyrage() -> Any:
    try:
        import pyrage  # type: ignore[import-untyped]  # no stubs in the package
    except ImportError:
        raise SealingError("encrypted backups need pyrage: pip install 'renum[backups]'") from None
    return pyrage


def _identity(identity: str) -> Any:
    try:
        return _pyrage().x25519.Identity.from_str(identity)
    except _pyrage().IdentityError:
        raise SealingError("RENUM_BACKUPS__AGE_IDENTITY is not an age identity") from None


def new_identity() -> tuple[str, str]:
    """A new age identity and its public recipient (``age1…``)."""
    identity = _pyrage().x25519.Identity.generate()
    return str(identity), str(identity.to_public())


def recipient(identity: str) -> str:
    """The public recipient (``age1…``) of ``identity``."""
    return str(_identity(identity).to_public())


def seal(source: Path, destination: Path, identity: str) -> None:
    """Encrypt ``source`` into the new file ``destination`` (readable by its owner only)."""
    who = _identity(identity).to_public()
    descriptor = os.open(destination, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    with source.open("rb") as plain, os.fdopen(descriptor, "wb") as sealed:
        _pyrage().encrypt_io(plain, sealed, [who])
        sealed.flush()
        os.fsync(sealed.fileno())


def open_sealed(source: Path, destination: Path, identity: str) -> None:
    """Decrypt ``source`` into the new file ``destination`` (readable by its owner only); a
    file the identity cannot open, or one altered since it was sealed, raises
    ``SealingError``."""
    who = _identity(identity)
    descriptor = os.open(destination, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    try:
        with source.open("rb") as sealed, os.fdopen(descriptor, "wb") as plain:
            _pyrage().decrypt_io(sealed, plain, [who])
    except (_pyrage().DecryptError, OSError) as exc:  # an altered chunk is an I/O error
        destination.unlink(missing_ok=True)
        raise SealingError(f"cannot decrypt {source.name}: {exc}") from None
