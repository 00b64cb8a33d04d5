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
PRUNE_ACTION = "audit.prune"
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
        """The configured keys, the first signing; the key derived from the secret key
        verifies what it signed before keys were configured (unless a key takes its id)."""
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"renum audit signing v1"
        ).derive(settings.secret_key.get_secret_value().encode("utf-8"))
        configured = {
            key_id: secret.get_secret_value().encode("utf-8")
            for key_id, secret in settings.security.audit.signing_keys.items()
        }
        return cls(
            {**configured, **({} if DERIVED_KEY_ID in configured else {DERIVED_KEY_ID: derived})}
        )

    def knows(self, key_id: str) -> bool:
        return key_id in self._keys

    def sign(self, purpose: Purpose, seq: int, digest: str, link: int) -> tuple[str, str]:
        """The key id and the signature of ``purpose`` at entry ``seq`` with hash ``digest``;
        ``link`` is the newest checkpoint's number (the head) or the previous one's (a
        checkpoint), so that checkpoints cannot be removed unseen either."""
        return self.key_id, self._mac(self._keys[self.key_id], purpose, seq, digest, link)

    def verifies(
        self, purpose: Purpose, seq: int, digest: str, link: int, key_id: str, signature: str
    ) -> bool:
        """Whether ``signature`` is right; ``AuditKeyError`` when ``key_id`` is not known."""
        key = self._keys.get(key_id)
        if key is None:
            raise AuditKeyError(
                f"the {purpose} at entry {seq} is signed with the audit key {key_id!r}, which "
                "is not configured: if it was removed from RENUM_SECURITY__AUDIT__SIGNING_KEYS, "
                "add it back after the key that signs now; otherwise the signature was forged"
            )
        return hmac.compare_digest(self._mac(key, purpose, seq, digest, link), signature)

    @staticmethod
    def _mac(key: bytes, purpose: Purpose, seq: int, digest: str, link: int) -> str:
        message = f"{FORMAT}:{purpose}:{seq}:{digest}:{link}".encode("ascii")
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


Expected = tuple[int, str | None]


async def verify(
    repository: AuditRepository, signer: AuditSigner, expect: Expected | None = None
) -> Verdict:
    """Check the whole trail: where it starts (entry 1, or a checkpoint recorded as the end of
    a pruning), every entry's hash and link, every checkpoint's place in the chain, the head
    against the newest entry, then every signature; and, with ``expect`` (an entry's number
    and hash from an ``audit_checkpoint`` log line), that the trail still holds that entry.
    Structure is checked before signatures: a broken trail is reported as broken whatever
    its signatures say. Raises ``AuditKeyError`` when the trail is whole but a signature names
    a key that is not configured."""
    verdict = Verdict()
    head = await repository.head()
    if head is None:
        return verdict.broken(None, "the trail's head is missing: the trail was tampered with")
    checkpoints = {row.seq: row for row in await repository.checkpoints()}
    verdict.checkpoints = len(checkpoints)
    first = await repository.first_seq()
    verdict.first_seq = first
    if first is None:
        if checkpoints or head.seq:
            at = min(checkpoints, default=head.seq)
            return verdict.broken(
                at,
                "every entry of the trail was deleted (a signed "
                f"{'checkpoint' if checkpoints else 'head'} names entry {at})",
            )
    elif first > 1 and first not in checkpoints:
        return verdict.broken(
            first,
            f"the trail starts at entry {first}, but no signed "
            "checkpoint is there to mark a pruning: older entries were "
            "deleted",
        )
    pruned = first - 1 if first is not None and first > 1 else 0
    expected_seq, expected_prev = (first or 1), (GENESIS if not pruned else None)
    prunes: set[int] = set()
    after = expected_seq - 1
    while True:
        try:
            rows = await repository.entries_after(after, VERIFY_BATCH)
        except Exception:  # a stored value no longer decodes: find which entry
            bad = await _unreadable(repository, after)
            return verdict.broken(
                bad, f"entry {bad} cannot be read: its stored values were changed"
            )
        for row in rows:
            entry = dict(row._mapping)
            seq = entry["seq"]
            if seq != expected_seq:
                return verdict.broken(
                    expected_seq,
                    f"entry {expected_seq} is missing (the next one is {seq}): it was deleted",
                )
            if expected_prev is not None and entry["prev_hash"] != expected_prev:
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
            if entry["action"] == PRUNE_ACTION and isinstance(entry["details"].get("through"), int):
                prunes.add(entry["details"]["through"])
            verdict.entries += 1
            expected_seq, expected_prev = seq + 1, entry["hash"]
        if len(rows) < VERIFY_BATCH:
            break
        after = expected_seq - 1
    last = expected_seq - 1
    verdict.last_seq = last if verdict.entries else None
    if pruned:
        if pruned not in prunes:
            return verdict.broken(
                first,
                f"entries up to {pruned} are gone, but no "
                f"{PRUNE_ACTION} entry records pruning them: they were deleted",
            )
        verdict.notes.append(f"entries up to {pruned} were pruned at a signed checkpoint")
    beyond = [seq for seq in checkpoints if seq > last]
    if beyond:
        return verdict.broken(
            last + 1,
            f"a signed checkpoint names entry {min(beyond)}, but "
            f"the trail ends at entry {last}: its newest entries were deleted",
        )
    if head.seq > last:
        return verdict.broken(
            last + 1,
            f"the signed head names entry {head.seq}, but the "
            f"trail ends at entry {last}: its newest entries were deleted",
        )
    if head.seq < last:
        return verdict.broken(
            head.seq + 1,
            f"the trail goes on past its signed head (entry "
            f"{head.seq}): entries were added outside Renum",
        )
    if last and head.hash != expected_prev:
        return verdict.broken(
            last,
            f"entry {last} is not the one signed at the head: entries "
            "were changed and the hashes after them recomputed",
        )
    chain = sorted(checkpoints)
    newest = chain[-1] if chain else 0
    if head.checkpoint_seq != newest:
        return verdict.broken(
            head.checkpoint_seq or newest,
            f"the signed head names checkpoint "
            f"{head.checkpoint_seq}, but the newest one is {newest}: "
            "checkpoints were deleted or added",
        )
    for index, seq in enumerate(chain):
        link = checkpoints[seq].prev_seq
        # The oldest checkpoint follows none, or one pruned before it.
        expected_link = chain[index - 1] if index else (link if pruned else 0)
        if link != expected_link:
            return verdict.broken(
                seq,
                f"the checkpoint at entry {seq} follows checkpoint {link}, which is gone: "
                "checkpoints were deleted",
            )
    if expect is not None:
        seq, digest = expect
        if seq > last:
            return verdict.broken(
                last + 1,
                f"entry {seq} was logged, but the trail ends at "
                f"entry {last}: its newest entries were deleted or the "
                "database was rolled back",
            )
        if first is not None and seq >= first and digest is not None:
            kept = await repository.entry_hash(seq)
            if kept != digest:
                return verdict.broken(
                    seq, f"entry {seq} is not the one that was logged: the trail was rewritten"
                )
        if first is not None and seq < first:
            verdict.notes.append(f"the logged entry {seq} was pruned")
    if head.key_id is None or head.signature is None:
        return verdict.broken(
            head.seq,
            "the trail's head is not signed: the trail was reset, "
            "or no server with the audit trail on has started on this "
            "database yet",
        )
    if not signer.verifies(
        "head", head.seq, head.hash, head.checkpoint_seq, head.key_id, head.signature
    ):
        return verdict.broken(
            head.seq,
            "the trail's head is not signed by the audit key: the trail was cut short or rebuilt",
        )
    for seq in chain:
        signed = checkpoints[seq]
        if not signer.verifies(
            "checkpoint", seq, signed.hash, signed.prev_seq, signed.key_id, signed.signature
        ):
            return verdict.broken(
                seq,
                f"the checkpoint at entry {seq} is not signed by the "
                "audit key: it was forged or changed",
            )
    return verdict


async def _unreadable(repository: AuditRepository, after: int) -> int:
    """The first entry after ``after`` whose stored values do not decode."""
    for seq in await repository.seqs_after(after, VERIFY_BATCH):
        try:
            await repository.entries_after(seq - 1, 1)
        except Exception:
            return seq
    return after + 1
