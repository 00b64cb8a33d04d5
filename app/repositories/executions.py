"""Execution queries, and the guarded updates the engine relies on for correctness
(claiming, starting a step, cancelling, the per-account concurrency slots, event numbering).

``ExecutionRepository`` serves the API on an async session; ``EngineRepository`` holds the
statements the engine runs inside its own short transactions (SQLAlchemy Core on a synchronous
connection, built once, batched), so that one step costs a handful of statements; those every
step runs are compiled once and run as the driver's SQL (``app.repositories.prepared``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Integer, Row, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection, CursorResult

from app.db.base import UTCDateTime
from app.models import (
    Account,
    Agent,
    ContextEntry,
    Execution,
    ExecutionEvent,
    ExecutionMessage,
    ExecutionStatus,
    ExecutionStep,
    LedgerEntry,
    ProviderKey,
)
from app.repositories.base import AccountScopedRepository, Position, Scope, table_of
from app.repositories.prepared import Prepared

ACTIVE = (ExecutionStatus.pending.value, ExecutionStatus.running.value)


def _rowcount(result: Any) -> int:
    return result.rowcount if isinstance(result, CursorResult) else 0


class ExecutionRepository(AccountScopedRepository[Execution]):
    model = Execution

    async def page_filtered(
        self,
        scope: Scope,
        *,
        team_id: uuid.UUID | None,
        status: str | None,
        limit: int,
        offset: int,
        after: Position | None = None,
    ) -> tuple[Sequence[Execution], int, int]:
        """A page of executions, oldest first, skipping ``offset`` or, given ``after``, right
        after that position (keyset); with the total and the page's offset."""
        where = []
        if team_id is not None:
            where.append(Execution.team_id == team_id)
        if status is not None:
            where.append(Execution.status == status)
        if after is not None:
            return await self.page_after(scope, after, limit=limit, where=where)
        rows, total = await self.page(scope, limit=limit, offset=offset, where=where)
        return rows, total, offset

    async def steps(self, execution_id: uuid.UUID) -> list[ExecutionStep]:
        rows = await self.session.scalars(
            select(ExecutionStep)
            .where(ExecutionStep.execution_id == execution_id)
            .order_by(ExecutionStep.position)
        )
        return list(rows)

    async def events(
        self, execution_id: uuid.UUID, *, after: int, limit: int
    ) -> list[ExecutionEvent]:
        rows = await self.session.scalars(
            select(ExecutionEvent)
            .where(ExecutionEvent.execution_id == execution_id, ExecutionEvent.seq > after)
            .order_by(ExecutionEvent.seq)
            .limit(limit)
        )
        return list(rows)

    async def context_history(self, execution_id: uuid.UUID) -> list[ContextEntry]:
        rows = await self.session.scalars(
            select(ContextEntry)
            .where(ContextEntry.execution_id == execution_id)
            .order_by(ContextEntry.key, ContextEntry.version)
        )
        return list(rows)

    async def append_events(
        self, execution_id: uuid.UUID, events: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[ExecutionEvent]:
        """Number and store events; the counter update serialises concurrent writers."""
        if not events:
            return []
        last = await self.session.scalar(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(last_event_seq=Execution.last_event_seq + len(events))
            .returning(Execution.last_event_seq)
        )
        first = int(last or 0) - len(events) + 1
        rows = [
            ExecutionEvent(execution_id=execution_id, seq=first + i, type=kind, data=data)
            for i, (kind, data) in enumerate(events)
        ]
        self.session.add_all(rows)
        return rows

    async def reserve_slot(self, account_id: uuid.UUID, limit: int) -> bool:
        result = await self.session.execute(
            update(Account)
            .where(Account.id == account_id, Account.active_executions < limit)
            .values(active_executions=Account.active_executions + 1)
        )
        return _rowcount(result) == 1

    async def release_slot(self, account_id: uuid.UUID) -> None:
        await self.session.execute(
            update(Account)
            .where(Account.id == account_id, Account.active_executions > 0)
            .values(active_executions=Account.active_executions - 1)
        )

    async def beat(
        self, execution_id: uuid.UUID, owner: str, now: datetime
    ) -> tuple[bool, str | None]:
        """Renew the heartbeat while this process owns the running execution, also once a
        cancel was asked for (a step still running must not look abandoned to the reaper);
        return whether it is still owned, and the cancel asked for, if any."""
        row = (
            await self.session.execute(
                update(Execution)
                .where(
                    Execution.id == execution_id,
                    Execution.owner == owner,
                    Execution.status == ExecutionStatus.running.value,
                )
                .values(heartbeat_at=now)
                .returning(Execution.cancel_mode)
            )
        ).one_or_none()
        return (False, None) if row is None else (True, row.cancel_mode)

    async def request_cancel(self, execution_id: uuid.UUID, mode: str) -> bool:
        """Record a cancel of a running execution in ``mode``; an ``immediate`` one overrides
        an ``after_step`` one asked before (every process's heartbeat then interrupts it),
        never the other way round. Whether the row changed."""
        unchanged = (
            Execution.cancel_mode.is_distinct_from("immediate")
            if mode == "immediate"
            else Execution.cancel_mode.is_(None)
        )
        result = await self.session.execute(
            update(Execution)
            .where(Execution.id == execution_id, Execution.status.in_(ACTIVE), unchanged)
            .values(cancel_mode=mode)
        )
        return _rowcount(result) == 1

    async def cancel_pending(self, execution_id: uuid.UUID, mode: str, now: datetime) -> bool:
        """End an execution nobody has started yet; False if a runner claimed it first."""
        result = await self.session.execute(
            update(Execution)
            .where(Execution.id == execution_id, Execution.status == ExecutionStatus.pending.value)
            .values(
                status=ExecutionStatus.cancelled.value,
                status_reason="cancelled",
                cancel_mode=mode,
                finished_at=now,
            )
        )
        if _rowcount(result) != 1:
            return False
        await self.session.execute(
            update(ExecutionStep)
            .where(ExecutionStep.execution_id == execution_id)
            .values(status="cancelled", finished_at=now)
        )
        return True

    async def abandoned(self, stale_before: datetime, limit: int = 100) -> list[uuid.UUID]:
        """Executions nobody drives: pending ones, and running ones whose heartbeat expired."""
        rows = await self.session.scalars(
            select(Execution.id)
            .where(
                or_(
                    Execution.status == ExecutionStatus.pending.value,
                    and_(
                        Execution.status == ExecutionStatus.running.value,
                        or_(
                            Execution.heartbeat_at.is_(None), Execution.heartbeat_at < stale_before
                        ),
                    ),
                )
            )
            .order_by(Execution.created_at)
            .limit(limit)
        )
        return list(rows)


# The engine's statements are built once, with bound parameters, and reused: a step's
# transaction then costs little more than the database's own work.


_executions = table_of(Execution)
_steps = table_of(ExecutionStep)
_context = table_of(ContextEntry)

# What the engine keeps in memory of an execution it owns.
# What the engine keeps of a claimed execution (the claim returns them).
CLAIMED_COLUMNS = (
    _executions.c.id,
    _executions.c.account_id,
    _executions.c.team_id,
    _executions.c.created_by,
    _executions.c.workflow_version,
    _executions.c.workflow,
    _executions.c.prompt,
    _executions.c.variables,
    _executions.c.budget,
    _executions.c.cancel_mode,
    _executions.c.resumed_count,
    _executions.c.started_at,
    _executions.c.input_tokens,
    _executions.c.output_tokens,
    _executions.c.cost_usd,
    _executions.c.lease,
    _executions.c.content_key_id,
)
# A step's state as the engine writes it (its id, execution, key and agent never change).
STEP_STATE_FIELDS = (
    "status",
    "attempts",
    "input",
    "output",
    "error",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "started_at",
    "finished_at",
    "content_key_id",  # the key that sealed input, output and error (None: plaintext)
)
# What an execution's end sets (its content key too: its result and error are sealed under
# the key of its prompt, ``app.services.content``).
_FINISH_FIELDS = (
    "status",
    "status_reason",
    "result",
    "error",
    "finished_at",
    "owner",
    "content_key_id",
)


def _claim_guard() -> tuple[Any, Any]:
    """The claim's condition (pending, or running with a heartbeat older than the bind
    parameter ``stale_before``) and whether the row was running (its resumed count goes up)."""
    was_running = _executions.c.status == ExecutionStatus.running.value
    stale = or_(
        _executions.c.heartbeat_at.is_(None),
        _executions.c.heartbeat_at < bindparam("stale_before", type_=UTCDateTime()),
    )
    claimable = or_(_executions.c.status == ExecutionStatus.pending.value, and_(was_running, stale))
    return claimable, was_running


def _claim_values(now: Any) -> dict[str, Any]:
    """What a claim sets besides the lease: the execution runs, owned by ``owner_``."""
    _, was_running = _claim_guard()
    return {
        "status": ExecutionStatus.running.value,
        "owner": bindparam("owner_", type_=_executions.c.owner.type),
        "heartbeat_at": now,
        "started_at": func.coalesce(_executions.c.started_at, now),
        "resumed_count": _executions.c.resumed_count
        + was_running.cast(_executions.c.resumed_count.type),
    }


def claim_statement() -> Any:
    """The claim's guarded update: the execution becomes the owner's if it is pending, or
    running with a heartbeat older than the cut-off (its owner died); only one process can
    win. It returns ``CLAIMED_COLUMNS``; the engine runs it as a CTE on PostgreSQL
    (``app.services.engine.claims``)."""
    claimable, _ = _claim_guard()
    now = bindparam("now", type_=UTCDateTime())
    return (
        update(_executions)
        .where(_executions.c.id == bindparam("execution_id"), claimable)
        .values(**_claim_values(now), lease=_executions.c.lease + 1, updated_at=now)
        .returning(*CLAIMED_COLUMNS)
    )


def _advance_statement(*, unless_cancelled: bool, finish: bool, claim: bool) -> Any:
    """``EngineRepository.advance``'s guarded update; with ``claim``, the claim's guard (under
    the lease read before) instead of the ownership, and the claim's values too."""
    now = bindparam("now", type_=UTCDateTime())
    where = [
        _executions.c.id == bindparam("execution_id", type_=_executions.c.id.type),
        _executions.c.lease == bindparam("lease_", type_=Integer()),
    ]
    if claim:
        where.append(_claim_guard()[0])
    else:
        where += [
            _executions.c.owner == bindparam("owner_", type_=_executions.c.owner.type),
            _executions.c.status == ExecutionStatus.running.value,
        ]
    if unless_cancelled:
        where.append(_executions.c.cancel_mode.is_(None))
    values: dict[str, Any] = {
        "heartbeat_at": now,
        "last_event_seq": _executions.c.last_event_seq + bindparam("events", type_=Integer()),
        "input_tokens": _executions.c.input_tokens + bindparam("tokens_in", type_=Integer()),
        "output_tokens": _executions.c.output_tokens + bindparam("tokens_out", type_=Integer()),
        "cost_usd": _executions.c.cost_usd + bindparam("cost", type_=_executions.c.cost_usd.type),
        "lease": _executions.c.lease + 1,
        "updated_at": now,
    }
    if claim:
        values.update(_claim_values(now))
    if finish:
        values.update(
            {
                name: bindparam(f"finish_{name}", type_=_executions.c[name].type)
                for name in _FINISH_FIELDS
            }
        )
    return update(_executions).where(*where).values(values).returning(_executions.c.last_event_seq)


_advance = {
    (guarded, finish, claim): Prepared(
        _advance_statement(unless_cancelled=guarded, finish=finish, claim=claim)
    )
    for guarded in (False, True)
    for finish in (False, True)
    for claim in (False, True)
}
_control = select(
    _executions.c.owner, _executions.c.status, _executions.c.cancel_mode, _executions.c.lease
).where(_executions.c.id == bindparam("execution_id"))
_read_steps = (
    select(
        _steps.c.id,
        _steps.c.step_key.label("key"),
        _steps.c.agent_id,
        *_steps.c[STEP_STATE_FIELDS],
    )
    .where(_steps.c.execution_id == bindparam("execution_id"))
    .order_by(_steps.c.position)
)
_read_context = (
    select(
        _context.c.key,
        _context.c.version,
        _context.c.value,
        _context.c.id,
        _context.c.content_key_id,
    )
    .where(_context.c.execution_id == bindparam("execution_id"))
    .order_by(_context.c.key, _context.c.version)
)
_read_agents = select(table_of(Agent)).where(Agent.id.in_(bindparam("ids", expanding=True)))
_read_keys = select(table_of(ProviderKey)).where(
    ProviderKey.id.in_(bindparam("ids", expanding=True))
)
_write_steps = Prepared(
    update(_steps)
    .where(
        _steps.c.id == bindparam("step_id", type_=_steps.c.id.type),
        _steps.c.execution_id == bindparam("execution_", type_=_steps.c.execution_id.type),
    )
    .values({name: bindparam(f"{name}_", type_=_steps.c[name].type) for name in STEP_STATE_FIELDS})
)
_add_context = insert(_context)
_add_ledger = insert(table_of(LedgerEntry))
_events = table_of(ExecutionEvent)
# Every column bound (no Python-side default: ``Prepared``); the id and time come with the rows.
_add_events = Prepared(
    insert(_events).values({c.name: bindparam(c.name, type_=c.type) for c in _events.c})
)
_messages = table_of(ExecutionMessage)
_read_messages = (
    select(*(column for column in _messages.c if column.name != "execution_id"))
    .where(_messages.c.execution_id == bindparam("execution_id"))
    .order_by(_messages.c.seq)
)
_add_messages = insert(_messages)
_set_message_status = (
    update(_messages)
    .where(
        _messages.c.id == bindparam("message_id"),
        _messages.c.execution_id == bindparam("execution_"),
    )
    .values(status=bindparam("status_"))
)
_accounts = table_of(Account)
_release_slot = Prepared(
    update(_accounts)
    .where(
        _accounts.c.id == bindparam("account_id", type_=_accounts.c.id.type),
        _accounts.c.active_executions > 0,
    )
    .values(
        active_executions=_accounts.c.active_executions - 1,
        updated_at=bindparam("now", type_=UTCDateTime()),
    )
)


class EngineRepository:
    """The engine's statements on an execution it owns, inside one of its transactions."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn  # ORM work in the same transaction binds a Session to it

    def steps(self, execution_id: uuid.UUID) -> Sequence[Row[Any]]:
        return self.conn.execute(_read_steps, {"execution_id": execution_id}).all()

    def release(self, execution_id: uuid.UUID, owner: str, lease: int) -> bool:
        """Give up one execution held under ``lease`` (no owner, no heartbeat: the next claim
        takes it at once); whether it was held so."""
        result = self.conn.execute(
            update(_executions)
            .where(
                _executions.c.id == execution_id,
                _executions.c.owner == owner,
                _executions.c.lease == lease,
                _executions.c.status == ExecutionStatus.running.value,
            )
            .values(heartbeat_at=None, owner=None)
        )
        return int(result.rowcount) == 1

    def release_ownership(self, owner: str) -> int:
        """On a clean shutdown: let the next process resume ``owner``'s running executions
        at once (no owner, no heartbeat); how many there were."""
        result = self.conn.execute(
            update(_executions)
            .where(
                _executions.c.owner == owner,
                _executions.c.status == ExecutionStatus.running.value,
            )
            .values(heartbeat_at=None, owner=None)
        )
        return int(result.rowcount)

    def context(self, execution_id: uuid.UUID) -> dict[str, Any]:
        """The latest version of each context key: ``{key: row}``, each row with ``key``,
        ``version``, ``value``, ``id`` and ``content_key_id`` (its value may be sealed)."""
        rows = self.conn.execute(_read_context, {"execution_id": execution_id})
        return {row.key: row for row in rows}

    def agents(self, agent_ids: set[uuid.UUID]) -> list[Agent]:
        rows = self.conn.execute(_read_agents, {"ids": list(agent_ids)})
        return [Agent(**row._mapping) for row in rows]

    def provider_keys(self, key_ids: set[uuid.UUID]) -> list[ProviderKey]:
        rows = self.conn.execute(_read_keys, {"ids": list(key_ids)})
        return [ProviderKey(**row._mapping) for row in rows]

    def advance(
        self,
        execution_id: uuid.UUID,
        owner: str,
        lease: int,
        *,
        now: datetime,
        events: int,
        tokens: tuple[int, int, Decimal],
        unless_cancelled: bool,
        finish: dict[str, Any] | None = None,
        claim: datetime | None = None,
    ) -> int | None:
        """The guarded update every engine transaction makes first: renew the heartbeat,
        add a step's tokens and cost, reserve ``events`` sequence numbers and, with ``finish``
        (the values of ``_FINISH_FIELDS``), end the execution; only while this process owns
        the running execution and, when ``unless_cancelled``, no cancel has been committed
        (the guard that keeps any step from starting once a cancel has returned), and only
        under the lease generation ``lease``, which it advances by one. Return the last
        reserved sequence number, or None if the guard did not hold.

        With ``claim`` (a stale heartbeat's cut-off) the update also claims the execution for
        ``owner``, as ``claim`` does, under the lease read before instead of the ownership:
        the first writes of an execution read (not claimed) in the same transaction."""
        tokens_in, tokens_out, cost = tokens
        params: dict[str, Any] = {
            "execution_id": execution_id,
            "owner_": owner,
            "lease_": lease,
            "now": now,
            "events": events,
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "cost": cost,
        }
        if finish is not None:
            params.update({f"finish_{name}": finish[name] for name in _FINISH_FIELDS})
        if claim is not None:
            params["stale_before"] = claim
        statement = _advance[unless_cancelled, finish is not None, claim is not None]
        last = statement.run(self.conn, params).scalar_one_or_none()
        return None if last is None else int(last)

    def control(self, execution_id: uuid.UUID) -> Row[*tuple[Any, ...]] | None:
        """Who owns the execution, its status and any cancel asked for."""
        row: Row[*tuple[Any, ...]] | None = self.conn.execute(
            _control, {"execution_id": execution_id}
        ).one_or_none()
        return row

    def write_steps(self, execution_id: uuid.UUID, rows: Sequence[dict[str, Any]]) -> None:
        """Store steps' state: each row has ``step_id`` and every field of ``STEP_STATE_FIELDS``
        (bound as ``field_``: an UPDATE reserves its columns' own names); only steps of the
        execution, whatever ids the rows hold."""
        params = [
            {
                "execution_": execution_id,
                **{f"{k}_" if k != "step_id" else k: v for k, v in r.items()},
            }
            for r in rows
        ]
        _write_steps.run_many(self.conn, params)

    def add_context(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self.conn.execute(_add_context, list(rows))

    def add_ledger(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self.conn.execute(_add_ledger, list(rows))

    def add_events(
        self,
        execution_id: uuid.UUID,
        first_seq: int,
        events: Sequence[tuple[str, dict[str, Any]]],
        now: datetime,
        ids: Sequence[uuid.UUID] | None = None,
        content_keys: Sequence[str | None] | None = None,
    ) -> None:
        """Store events numbered from ``first_seq``, created at ``now`` (their transaction's
        time); with their ``ids`` and the keys that sealed their content, when given."""
        rows = [
            {
                "id": ids[n] if ids else uuid.uuid4(),
                "execution_id": execution_id,
                "seq": first_seq + n,
                "type": kind,
                "data": data,
                "created_at": now,
                "content_key_id": content_keys[n] if content_keys else None,
            }
            for n, (kind, data) in enumerate(events)
        ]
        _add_events.run_many(self.conn, rows)

    def messages(self, execution_id: uuid.UUID) -> Sequence[Row[Any]]:
        """The execution's messages in order, every column but the execution id."""
        return self.conn.execute(_read_messages, {"execution_id": execution_id}).all()

    def add_messages(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self.conn.execute(_add_messages, list(rows))

    def set_message_statuses(self, execution_id: uuid.UUID, statuses: dict[uuid.UUID, str]) -> None:
        """New statuses of the execution's messages (only its own, whatever ids are given)."""
        if statuses:
            self.conn.execute(
                _set_message_status,
                [
                    {"message_id": key, "status_": value, "execution_": execution_id}
                    for key, value in statuses.items()
                ],
            )

    def release_slot(self, account_id: uuid.UUID, now: datetime) -> None:
        _release_slot.run(self.conn, {"account_id": account_id, "now": now})
