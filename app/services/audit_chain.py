"""What makes the audit trail tamper-evident: each entry's hash, the signatures of the head and
of the checkpoints, and the verification of the whole trail (``renum audit verify``).

An entry's hash is SHA-256 over a canonical JSON text of its fields and the previous entry's
hash (the first entry follows ``GENESIS``), so an entry changed, removed or moved breaks every
link after it. A chain alone cannot show its newest entries removed: the head (the newest
entry's number and hash) is signed with an HMAC under the audit signing key at every append,
and checkpoints (signed copies of the head) are kept for good. Without the key, nobody can
write a head or a checkpoint that verifies, so a trail cut short, rebuilt or extended outside
Renum is detected.

Verification reads the trail in order and stops at the first break, saying where it is and
what is wrong there. Pruning removes old entries only up to a checkpoint; verification starts
from the oldest checkpoint when the first entries are gone."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.core.config import Settings
from app.repositories.audit import VERIFY_BATCH, AuditRepository

GENESIS = "0" * 64
FORMAT = "renum-audit-v1"
DERIVED_KEY_ID = "derived"
Purpose = Literal["head", "checkpoint"]


class AuditKeyError(Exception):
    """The trail cannot be checked with the configured keys (a signature by a key id that is
    not configured)."""


def entry_hash(entry: Mapping[str, Any]) -> str:
    """The hash of one entry: its fields and ``prev_hash``, as canonical JSON."""
    created_at: datetime = entry["created_at"]
    material = [
        FORMAT,
        entry["seq"],
        str(entry["id"]),
        created_at.astimezone(UTC).isoformat(timespec="microseconds"),
        _text(entry["actor_id"]),
        entry["actor_kind"],
        _text(entry["account_id"]),
        entry["action"],
        entry["target"],
        entry["source"],
        entry["request_id"],
        entry["outcome"],
        entry["details"],
        entry["prev_hash"],
    ]
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _text(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


class AuditSigner:
    """HMAC-SHA256 signatures of the head and of checkpoints; the first key signs, every
    configured key verifies what it signed."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise AuditKeyError("at least one audit signing key is needed")
        self._keys = dict(keys)
        self.key_id = next(iter(self._keys))

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditSigner:
        configured = settings.security.audit.signing_keys
        if configured:
            return cls({k: v.get_secret_value().encode("utf-8") for k, v in configured.items()})
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"renum audit signing v1"
        ).derive(settings.secret_key.get_secret_value().encode("utf-8"))
        return cls({DERIVED_KEY_ID: derived})

    def sign(self, purpose: Purpose, seq: int, digest: str) -> tuple[str, str]:
        """The key id and the signature of ``purpose`` at entry ``seq`` with hash ``digest``."""
        return self.key_id, self._mac(self._keys[self.key_id], purpose, seq, digest)

    def verifies(
        self, purpose: Purpose, seq: int, digest: str, key_id: str, signature: str
    ) -> bool:
        key = self._keys.get(key_id)
        if key is None:
            raise AuditKeyError(
                f"signed with the audit key {key_id!r}, which is not configured: add it to "
                "RENUM_SECURITY__AUDIT__SIGNING_KEYS (after the key that signs now)"
            )
        return hmac.compare_digest(self._mac(key, purpose, seq, digest), signature)

    @staticmethod
    def _mac(key: bytes, purpose: Purpose, seq: int, digest: str) -> str:
        message = f"{FORMAT}:{purpose}:{seq}:{digest}".encode("ascii")
        return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass
class Verdict:
    """The result of ``verify``: intact, or where the trail breaks first and why."""

    intact: bool = True
    entries: int = 0
    checkpoints: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    broken_at: int | None = None
    problem: str | None = None
    notes: list[str] = field(default_factory=list)

    def broken(self, seq: int | None, problem: str) -> Verdict:
        self.intact, self.broken_at, self.problem = False, seq, problem
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "broken_at": self.broken_at,
            "problem": self.problem,
            "notes": self.notes,
        }


async def verify(repository: AuditRepository, signer: AuditSigner) -> Verdict:
    """Check the whole trail: every entry's hash and link, every checkpoint's signature and
    place in the chain, and the signed head against the newest entry. Raises
    ``AuditKeyError`` when a signature names a key that is not configured."""
    verdict = Verdict()
    head = await repository.head()
    if head is None:
        return verdict.broken(None, "the trail's head is missing: the trail was tampered with")
    if head.key_id is not None:
        signer.verifies("head", head.seq, head.hash, head.key_id, head.signature or "")
    checkpoints = {row.seq: row for row in await repository.checkpoints()}
    for checkpoint in checkpoints.values():
        seq, digest = checkpoint.seq, checkpoint.hash
        if not signer.verifies("checkpoint", seq, digest, checkpoint.key_id, checkpoint.signature):
            return verdict.broken(
                seq,
                f"the checkpoint at entry {seq} is not signed "
                "by the audit key: it was forged or changed",
            )
    verdict.checkpoints = len(checkpoints)
    first = await repository.first_seq()
    if first is None:
        expected_seq, expected_prev = 1, GENESIS
        anchor = max(checkpoints, default=0)
        if anchor:
            expected_seq, expected_prev = anchor + 1, checkpoints[anchor].hash
    elif first == 1:
        expected_seq, expected_prev = 1, GENESIS
    elif first - 1 in checkpoints:
        expected_seq, expected_prev = first, checkpoints[first - 1].hash
        verdict.notes.append(f"entries up to {first - 1} were pruned at a signed checkpoint")
    else:
        return verdict.broken(
            first,
            f"the trail starts at entry {first}, but no signed "
            f"checkpoint marks entries up to {first - 1} as pruned: older "
            "entries were deleted",
        )
    verdict.first_seq = first
    after = expected_seq - 1
    while True:
        rows = await repository.entries_after(after, VERIFY_BATCH)
        for row in rows:
            entry = dict(row._mapping)
            seq = entry["seq"]
            if seq != expected_seq:
                return verdict.broken(
                    expected_seq,
                    f"entry {expected_seq} is missing (the next one is {seq}): it was deleted",
                )
            if entry["prev_hash"] != expected_prev:
                return verdict.broken(
                    seq,
                    f"entry {seq} does not follow entry {seq - 1}: "
                    "entries were reordered, replaced or deleted",
                )
            if entry_hash(entry) != entry["hash"]:
                return verdict.broken(seq, f"entry {seq} was changed after it was written")
            signed = checkpoints.get(seq)
            if signed is not None and signed.hash != entry["hash"]:
                return verdict.broken(
                    seq,
                    f"entry {seq} differs from the signed checkpoint "
                    "there: the trail was rewritten from that point",
                )
            verdict.entries += 1
            expected_seq, expected_prev = seq + 1, entry["hash"]
        if len(rows) < VERIFY_BATCH:
            break
        after = expected_seq - 1
    last = expected_seq - 1
    verdict.last_seq = last if verdict.entries else None
    beyond = [seq for seq in checkpoints if seq > last]
    if beyond:
        return verdict.broken(
            last + 1,
            f"a signed checkpoint names entry {min(beyond)}, but the "
            f"trail ends at entry {last}: its newest entries were deleted",
        )
    if head.seq != last or head.hash != expected_prev:
        if head.seq > last:
            return verdict.broken(
                last + 1,
                f"the signed head names entry {head.seq}, but the "
                f"trail ends at entry {last}: its newest entries were deleted",
            )
        return verdict.broken(
            head.seq + 1,
            f"the trail goes on past its signed head (entry "
            f"{head.seq}): entries were added outside Renum",
        )
    if head.seq == 0 and head.signature is None and not checkpoints:
        return verdict  # never written to: the head the migration made
    if (
        head.key_id is None
        or head.signature is None
        or not signer.verifies("head", head.seq, head.hash, head.key_id, head.signature)
    ):
        return verdict.broken(
            head.seq,
            "the trail's head is not signed by the audit key: the trail was cut short or rebuilt",
        )
    return verdict
