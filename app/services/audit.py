"""The audit trail of security-relevant actions: recording, checkpoints, pruning, reading.

Services record what they did (``AuditTrail.record``) after it is decided: a login that
succeeded or failed, a key created, a role changed. Entries are written in short transactions
of their own, after the action's, so the head's lock is never held while an action runs. They
are committed in groups: one writer task appends every entry queued while the previous group
was being written, in one transaction, and ``record`` returns once its entry is committed (a
burst of a hundred logins costs a few transactions, not a hundred queued on the head's lock).
An entry that cannot be written is logged (``audit_write_failed``, never with the entry's
secrets, which it has none of) and counted, and the action stands.

Who acted comes from the caller's principal (a user, or one of their API keys) or is named
(``system``, ``cli``, or ``anonymous`` for a failed login); where from and in which request
comes from the request being answered. ``details`` holds flat facts only (text, numbers,
booleans), so that an entry hashes the same on every database.

The security capability turns recording on (``security.audit.enabled``) by putting an enabled
trail in ``app.state.audit``; without it, ``AuditTrail.disabled()`` records nothing."""

from __future__ import annotations

import asyncio
import contextvars
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.logging import get_logger
from app.core.request_context import current_request_id, current_scope
from app.db.database import READ_ONLY
from app.models import AuditCheckpoint, AuditEntry, Role
from app.repositories.audit import AuditRepository
from app.repositories.base import Position
from app.services.audit_chain import (
    PRUNE_ACTION,
    AuditSigner,
    Expected,
    Verdict,
    entry_hash,
    verify,
)
from app.services.principal import Principal

log = get_logger("app.audit")

Outcome = Literal["success", "failure", "denied"]
ActorKind = Literal["user", "api_key", "system", "cli", "anonymous"]
Detail = str | int | bool | None

# The actions the trail records, by name (the `action` filter of GET /api/v1/audit).
ACTIONS = (
    "auth.login",
    "auth.logout",
    "auth.refresh",
    "access.denied",
    "api_key.create",
    "api_key.revoke",
    "user.create",
    "user.update",
    "user.password_change",
    "user.delete",
    "account.create",
    "provider_key.create",
    "provider_key.delete",
    "config.reload",
    "silence.create",
    "silence.end",
    "audit.export",
    "audit.prune",
    "keys.rotate",
    "admin.read",
    "security.event",
)
MAX_TARGET = 400
MAX_DETAIL = 500
# The most entries committed in one transaction.
MAX_GROUP = 200


def source_of(scope: Any) -> str | None:
    """The client address of a request's ASGI scope."""
    client = scope.get("client") if scope is not None else None
    return None if not client else str(client[0])[:64]


Sessions = Callable[[], AbstractAsyncContextManager[AsyncSession]]


class AuditTrail:
    """Records entries (when ``enabled``), writes checkpoints and prunes, each in a session of
    its own from ``sessions`` (the app's database manager's, or a CLI command's); ``on_failure``
    is told of each entry that could not be written."""

    def __init__(
        self,
        sessions: Sessions | None,
        signer: AuditSigner | None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.signer = signer
        self.on_failure = on_failure
        # The client's address of a request (the throttling's, which trusts the configured
        # proxies' X-Forwarded-For, replaces it when it is on).
        self.address: Callable[[Any], str | None] = source_of
        # Entries waiting for the writer, each with the future its ``record`` waits on.
        self._queued: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    @classmethod
    def for_settings(cls, settings: Settings, sessions: Sessions) -> AuditTrail:
        """Enabled when ``security.audit.enabled`` (and the security capability) are on."""
        if not (settings.security.enabled and settings.security.audit.enabled):
            return cls.disabled()
        return cls(sessions, AuditSigner.from_settings(settings))

    @classmethod
    def disabled(cls) -> AuditTrail:
        return cls(None, None)

    @property
    def enabled(self) -> bool:
        return self.sessions is not None and self.signer is not None

    async def record(
        self,
        action: str,
        *,
        outcome: Outcome = "success",
        principal: Principal | None = None,
        actor_kind: ActorKind | None = None,
        actor_id: uuid.UUID | None = None,
        account_id: uuid.UUID | None = None,
        target: str | None = None,
        details: dict[str, Detail] | None = None,
        source: str | None = None,
        request_id: str | None = None,
    ) -> None:
        """Append one entry; returns once it is committed (or its failure reported), with the
        other entries queued meanwhile. The actor is ``principal`` when given (its user, its
        API key in ``details``, its account unless ``account_id`` names the one acted on),
        else ``actor_kind`` (``anonymous`` by default)."""
        if self.sessions is None or self.signer is None:
            return
        facts: dict[str, Detail] = {}
        if principal is not None:
            actor_id = principal.user_id
            actor_kind = "user" if principal.api_key_id is None else "api_key"
            if principal.api_key_id is not None:
                facts["api_key_id"] = str(principal.api_key_id)
            account_id = account_id or principal.account_id
        facts.update(details or {})
        values: dict[str, Any] = {
            "id": uuid.uuid4(),
            "actor_id": actor_id,
            "actor_kind": actor_kind or "anonymous",
            "account_id": account_id,
            "action": action,
            "target": _cut(target, MAX_TARGET),
            "source": _cut(source if source is not None else self._source(), 64),
            "request_id": _cut(request_id or current_request_id(), 128),
            "outcome": outcome,
            "details": {key[:64]: _flat(value) for key, value in facts.items()},
        }
        written = asyncio.get_running_loop().create_future()
        self._queued.append((values, written))
        if self._writer is None or self._writer.done():
            # A context of its own: the writer's statements belong to no request.
            self._writer = asyncio.create_task(
                self._write_queued(self.sessions, self.signer),
                name="renum-audit-writer",
                context=contextvars.Context(),
            )
        await asyncio.shield(written)  # a caller that leaves still has its entry written

    async def _write_queued(self, sessions: Sessions, signer: AuditSigner) -> None:
        """Commit the queued entries, a group per transaction, until none is left."""
        while self._queued:
            group, self._queued = self._queued[:MAX_GROUP], self._queued[MAX_GROUP:]
            try:
                await self._write(sessions, signer, [values for values, _ in group])
            finally:
                for _, written in group:
                    written.set_result(None)

    async def _write(
        self, sessions: Sessions, signer: AuditSigner, entries: list[dict[str, Any]]
    ) -> None:
        try:
            async with sessions() as session:
                await _append(session, signer, entries)
                await session.commit()
        except Exception as exc:
            for entry in entries:
                log.error(
                    "audit_write_failed", action=entry["action"], error_type=type(exc).__name__
                )
                if self.on_failure is not None:
                    self.on_failure(entry["action"])

    def _source(self) -> str | None:
        scope = current_scope()
        return None if scope is None else self.address(scope)

    async def initialise(self) -> None:
        """Sign the head of a trail never written to, so that a trail reset to empty later
        shows (an unsigned head verifies as broken)."""
        if self.sessions is None or self.signer is None:
            return
        async with self.sessions() as session:
            repository = AuditRepository(session)
            head = await repository.lock_head()
            if head is not None and head.signature is None and head.seq == 0:
                key_id, signature = self.signer.sign("head", 0, head.hash, 0)
                await repository.set_head(0, head.hash, 0, key_id, signature)
            await session.commit()

    async def checkpoint(self) -> AuditCheckpoint | None:
        """A signed checkpoint at the head, when the trail grew since the last one, named by
        the head from then on; logged (``audit_checkpoint``) so that a copy lives outside the
        database too (``renum audit verify --expect SEQ:HASH`` compares it)."""
        if self.sessions is None or self.signer is None:
            return None
        async with self.sessions() as session:
            repository = AuditRepository(session)
            head = await repository.lock_head()
            if head is None or head.seq == 0 or head.checkpoint_seq >= head.seq:
                await session.rollback()
                return None
            key_id, signature = self.signer.sign(
                "checkpoint", head.seq, head.hash, head.checkpoint_seq
            )
            checkpoint = AuditCheckpoint(
                seq=head.seq,
                hash=head.hash,
                prev_seq=head.checkpoint_seq,
                created_at=datetime.now(UTC),
                key_id=key_id,
                signature=signature,
            )
            await repository.add_checkpoint(checkpoint)
            head_key, head_signature = self.signer.sign("head", head.seq, head.hash, head.seq)
            await repository.set_head(head.seq, head.hash, head.seq, head_key, head_signature)
            await session.commit()
        log.info("audit_checkpoint", seq=checkpoint.seq, hash=checkpoint.hash, key_id=key_id)
        return checkpoint

    async def prune(self, retention_days: int, now: datetime | None = None) -> int:
        """Delete the entries older than ``retention_days`` that come before the newest
        checkpoint written before the cutoff (its entry stays: verification starts there),
        and record the pruning in the trail (``audit.prune``), in one transaction; the number
        deleted."""
        if self.sessions is None or self.signer is None or retention_days <= 0:
            return 0
        cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
        async with self.sessions() as session:
            repository = AuditRepository(session)
            anchor = await repository.newest_checkpoint_before(cutoff)
            first = await repository.first_seq()
            if anchor is None or first is None or first >= anchor.seq:
                await session.rollback()
                return 0
            removed = await repository.prune_before(anchor.seq)
            await _append(
                session,
                self.signer,
                [
                    {
                        "id": uuid.uuid4(),
                        "actor_id": None,
                        "actor_kind": "system",
                        "account_id": None,
                        "action": PRUNE_ACTION,
                        "target": f"entries {first} to {anchor.seq - 1}",
                        "source": None,
                        "request_id": None,
                        "outcome": "success",
                        "details": {"through": anchor.seq - 1, "retention_days": retention_days},
                    }
                ],
            )
            await session.commit()
        log.info("audit_pruned", through_seq=anchor.seq - 1, entries=removed)
        return removed


async def _append(
    session: AsyncSession, signer: AuditSigner, entries: Sequence[dict[str, Any]]
) -> None:
    """Append ``entries``, in order, in ``session``'s transaction (committed by the caller):
    the head moves on first, which holds its lock until the commit, and is signed at the
    last."""
    repository = AuditRepository(session)
    seq, prev_hash, checkpoint_seq = await repository.claim_next(len(entries))
    chained = []
    for offset, values in enumerate(entries):
        entry = {**values, "seq": seq + offset, "created_at": datetime.now(UTC)}
        entry["prev_hash"] = prev_hash
        entry["hash"] = prev_hash = entry_hash(entry)
        chained.append(entry)
    await repository.append(chained)
    last = chained[-1]
    key_id, signature = signer.sign("head", last["seq"], last["hash"], checkpoint_seq)
    await repository.set_head(last["seq"], last["hash"], checkpoint_seq, key_id, signature)


class AuditReader:
    """Reading the trail for the API: owners their account's entries, admins every entry."""

    def __init__(self, session: AsyncSession) -> None:
        self.repository = AuditRepository(session)

    async def page(
        self,
        principal: Principal,
        *,
        actor_id: uuid.UUID | None,
        action: str | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        offset: int,
        after: Position | None,
    ) -> tuple[Any, int, int]:
        principal.require(Role.owner)
        return await self.repository.page(
            principal.scope,
            actor_id=actor_id,
            action=action,
            since=since,
            until=until,
            limit=limit,
            offset=offset,
            after=after,
        )

    async def export_batch(
        self, principal: Principal, *, after: int, filters: dict[str, Any]
    ) -> Sequence[AuditEntry]:
        """The next entries of an export (``filters``: actor_id, action, since, until)."""
        principal.require(Role.owner)
        return await self.repository.export_batch(principal.scope, after=after, **filters)


async def verify_trail(
    session: AsyncSession, signer: AuditSigner, expect: Expected | None = None
) -> Verdict:
    """``audit_chain.verify`` over the trail in ``session``'s database, read from one snapshot
    (entries appended meanwhile are not seen, so the head read matches the entries read):
    a repeatable-read transaction on PostgreSQL, a deferred one on SQLite (WAL keeps its
    snapshot, and it never takes the write lock)."""
    postgres = session.bind is not None and session.bind.dialect.name == "postgresql"
    await session.connection(
        execution_options={"isolation_level": "REPEATABLE READ"} if postgres else READ_ONLY
    )
    return await verify(AuditRepository(session), signer, expect)


def _cut(text: str | None, length: int) -> str | None:
    return None if text is None else text[:length]


def _flat(value: Any) -> Detail:
    if value is None or isinstance(value, bool | int):
        return value
    return str(value)[:MAX_DETAIL]
