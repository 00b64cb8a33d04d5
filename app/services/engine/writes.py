"""How one engine transaction's writes reach the database.

Every engine transaction writes the same kinds of rows, behind one guard: the guarded update of
the execution (``advance``: heartbeat, tokens and cost, event numbers reserved, the lease moved
on, and the end when there is one), then its steps, context entries, ledger entries, messages
and their new statuses, its events and, when it ends, the account's concurrency slot. Nothing
is written when the guard does not hold. ``Writes`` holds those rows; ``write`` stores them:

- on SQLite, with ``EngineRepository``'s statements, one after the other (SQLite runs them in
  the same process: a statement costs no round trip). Each is compiled once and run as the
  driver's SQL (``app.repositories.prepared``): SQLAlchemy's work per statement is much of
  what a step costs there;
- on PostgreSQL, as one statement (``OneStatement``): data-modifying CTEs, each fed by
  ``unnest`` of one array per column and joined to (or conditioned on) the guarded update's
  RETURNING row, so that they write nothing when the guard does not hold. One statement is
  atomic by itself: run without BEGIN and COMMIT (``SQLAlchemyManager.run_transaction(
  autocommit=True)``) a step's commit costs one round trip. The statement has the parts the
  writes need (a step's commit usually writes steps and events only) and its shape depends on
  nothing else, so it is compiled once per shape (``Prepared``: no cache key of the whole tree
  of CTEs derived and looked up per commit) and asyncpg prepares it once per connection. Its
  parameters are named unlike any column (``execution_``, ``steps_status``):
  an UPDATE takes a parameter named like one of its columns for a value to set.

A guard only the one statement has, for what would otherwise need a transaction around it:
``unless_webhooks`` (an end is written so only if its account has no webhook to queue in the
same commit). Both ways of writing take ``claim``: the first writes claim the execution
themselves, under the lease read before (``claims.read``), on PostgreSQL in the one statement,
on SQLite in the transaction that read it.

The guards of ``OneStatement`` are ``EngineRepository.advance``'s and ``claim``'s, column for
column; the engine suites run every scenario on both databases, so the two ways of writing are
held to one behaviour.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    CTE,
    Column,
    Connection,
    Integer,
    and_,
    bindparam,
    column,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from app.db.base import UTCDateTime
from app.models import (
    Account,
    ContextEntry,
    Execution,
    ExecutionEvent,
    ExecutionMessage,
    ExecutionStatus,
    ExecutionStep,
    LedgerEntry,
    Webhook,
)
from app.repositories.base import table_of
from app.repositories.executions import STEP_STATE_FIELDS, EngineRepository
from app.repositories.prepared import Prepared
from app.services.content import CONTEXT, EXECUTIONS, MESSAGES, STEPS, ExecutionContent
from app.services.engine.events import StoredEvent

# The fields of an execution its end sets (``Writes.finish``).
FINISH_FIELDS = (
    "status",
    "status_reason",
    "result",
    "error",
    "finished_at",
    "owner",
    "content_key_id",
)


@dataclass
class Writes:
    """One engine transaction's writes on execution ``execution_id``, held by ``owner`` under
    lease generation ``lease``."""

    execution_id: uuid.UUID
    account_id: uuid.UUID
    owner: str
    lease: int
    now: datetime
    # Whether a committed cancel refuses the writes (they start a step or end the execution).
    unless_cancelled: bool
    # Whether an enabled webhook of the account refuses them (an end written without queueing
    # its webhooks: it has none to queue).
    unless_webhooks: bool = False
    # When the writes also claim the execution (its first writes): the cut-off of a stale
    # heartbeat. The guard is then the claim's (pending, or running with a
    # stale heartbeat) under the lease read, instead of ``owner``'s ownership.
    claim: datetime | None = None
    tokens: tuple[int, int, Decimal] = (0, 0, Decimal(0))
    finish: dict[str, Any] | None = None  # the values of FINISH_FIELDS, when it ends
    steps: list[dict[str, Any]] = field(default_factory=list)  # StepRecord.row()
    context: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    message_statuses: dict[uuid.UUID, str] = field(default_factory=dict)
    events: list[StoredEvent] = field(default_factory=list)
    # The events' ids and the keys that sealed their content (``sealed``); made up when empty.
    event_ids: list[uuid.UUID] = field(default_factory=list)
    event_keys: list[str | None] = field(default_factory=list)


def sealed(writes: Writes, content: ExecutionContent, execution_key: str) -> Writes:
    """``writes`` of an execution whose content is sealed at rest (``app.services.content``),
    with that content sealed: its end's result and error under ``execution_key``, the key of
    its prompt (a row under one key, which a rotation moves on as a whole), and every other
    row under the primary key, each row naming its key in ``content_key_id``."""
    key = content.box.current_key_id
    ids = {"execution_id": writes.execution_id, "account_id": writes.account_id}
    finish = writes.finish
    if finish is not None:
        finish = content.seal_row(
            EXECUTIONS, finish, row_id=writes.execution_id, key_id=execution_key, **ids
        )
        finish["content_key_id"] = execution_key
    steps = [
        {
            **content.seal_row(STEPS, row, row_id=row["step_id"], key_id=key, **ids),
            "content_key_id": key,
        }
        for row in writes.steps
    ]
    rows: dict[str, list[dict[str, Any]]] = {}
    for table, inserted in ((CONTEXT, writes.context), (MESSAGES, writes.messages)):
        rows[table] = []
        for row in inserted:
            row_id = row.get("id") or uuid.uuid4()
            sealed_row = content.seal_row(table, row, row_id=row_id, key_id=key, **ids)
            rows[table].append({**sealed_row, "id": row_id, "content_key_id": key})
    event_ids = [uuid.uuid4() for _ in writes.events]
    kinds = [kind for kind, _ in writes.events]
    # Only the events that carry content are sealed (and name a key).
    event_keys = [key if content.event_has_content(kind) else None for kind in kinds]
    data = [
        content.seal_event(kind, values, row_id=event_id, key_id=key, **ids)
        if event_key is not None
        else values
        for event_id, event_key, (kind, values) in zip(
            event_ids, event_keys, writes.events, strict=True
        )
    ]
    events: list[StoredEvent] = list(zip(kinds, data, strict=True))
    return dataclasses.replace(
        writes,
        finish=finish,
        steps=steps,
        context=rows[CONTEXT],
        messages=rows[MESSAGES],
        events=events,
        event_ids=event_ids,
        event_keys=event_keys,
    )


def write(conn: Connection, writes: Writes) -> int | None:
    """Store ``writes`` behind the guard: the last event number reserved, or None if the guard
    did not hold (then nothing was written)."""
    if conn.dialect.name == "postgresql":
        return OneStatement.run(conn, writes)
    return _one_by_one(EngineRepository(conn), writes)


def has_webhooks(conn: Connection, account_id: uuid.UUID) -> bool:
    """Whether the account has an enabled webhook (which the end of its executions queues)."""
    return bool(_has_webhooks.run(conn, {"account_": account_id}).scalar())


def _one_by_one(repo: EngineRepository, writes: Writes) -> int | None:
    if writes.unless_webhooks and has_webhooks(repo.conn, writes.account_id):
        return None
    last_seq = repo.advance(
        writes.execution_id,
        writes.owner,
        writes.lease,
        now=writes.now,
        events=len(writes.events),
        tokens=writes.tokens,
        unless_cancelled=writes.unless_cancelled,
        finish=writes.finish,
        claim=writes.claim,
    )
    if last_seq is None:
        return None
    repo.write_steps(writes.execution_id, writes.steps)
    repo.add_context(writes.context)
    repo.add_ledger(writes.ledger)
    repo.add_messages(writes.messages)
    repo.set_message_statuses(writes.execution_id, writes.message_statuses)
    first_seq = last_seq - len(writes.events) + 1
    repo.add_events(
        writes.execution_id,
        first_seq,
        writes.events,
        writes.now,
        writes.event_ids,
        writes.event_keys,
    )
    if writes.finish is not None:
        repo.release_slot(writes.account_id, writes.now)
    return last_seq


_executions = table_of(Execution)
_steps = table_of(ExecutionStep)
_context = table_of(ContextEntry)
_ledger = table_of(LedgerEntry)
_messages = table_of(ExecutionMessage)
_events = table_of(ExecutionEvent)
_accounts = table_of(Account)
_webhooks = table_of(Webhook)

# ``OutboxWriter.enabled_webhooks``'s rows, as a condition.
_enabled_webhook = (
    select(_webhooks.c.id)
    .where(
        _webhooks.c.account_id == bindparam("account_", type_=_webhooks.c.account_id.type),
        _webhooks.c.enabled.is_(True),
    )
    .exists()
)
_has_webhooks = Prepared(select(_enabled_webhook))

_EVENT_FIELDS = ("id", "type", "data", "content_key_id")
# Rows inserted as they are, with the id and creation time they lack filled in, and the
# defaults of the columns the engine never sets.
_INSERTED = {"context": _context, "ledger": _ledger, "messages": _messages}
_DEFAULTS: dict[str, dict[str, Any]] = {"ledger": {"rolled_up": False}}


def _now() -> Any:
    return bindparam("now", type_=UTCDateTime())


def _rows(name: str, columns: Sequence[Column[Any]], *, numbered: bool = False) -> Any:
    """``unnest(:name_a, :name_b, ...) AS name(a, b, ...)``: one array parameter per column,
    the rows side by side (with ``numbered``, a ``position`` from 1 too)."""
    arrays = [bindparam(f"{name}_{c.name}", type_=ARRAY(c.type)) for c in columns]
    return (
        func.unnest(*arrays)
        .table_valued(
            *(column(c.name, c.type) for c in columns),
            with_ordinality="position" if numbered else None,
        )
        .render_derived(name=name)
    )


def _advanced(*, claim: bool, unless_cancelled: bool, unless_webhooks: bool, finish: bool) -> CTE:
    """The guarded update of ``EngineRepository.advance`` (or, with ``claim``, of the claim
    and ``advance`` together), returning the last event number."""
    was_running = _executions.c.status == ExecutionStatus.running.value
    where = [
        _executions.c.id == bindparam("execution_", type_=_executions.c.id.type),
        _executions.c.lease == bindparam("lease_", type_=Integer()),
    ]
    if claim:
        stale = or_(
            _executions.c.heartbeat_at.is_(None),
            _executions.c.heartbeat_at < bindparam("stale_", type_=UTCDateTime()),
        )
        where.append(
            or_(_executions.c.status == ExecutionStatus.pending.value, and_(was_running, stale))
        )
    else:
        where += [_executions.c.owner == bindparam("owner_"), was_running]
    if unless_cancelled:
        where.append(_executions.c.cancel_mode.is_(None))
    if unless_webhooks:
        where.append(~_enabled_webhook)
    values: dict[str, Any] = {
        "heartbeat_at": _now(),
        "last_event_seq": _executions.c.last_event_seq + bindparam("events", type_=Integer()),
        "input_tokens": _executions.c.input_tokens + bindparam("tokens_in", type_=Integer()),
        "output_tokens": _executions.c.output_tokens + bindparam("tokens_out", type_=Integer()),
        "cost_usd": _executions.c.cost_usd + bindparam("cost", type_=_executions.c.cost_usd.type),
        "lease": _executions.c.lease + 1,
        "updated_at": _now(),
    }
    if claim:
        values.update(
            status=ExecutionStatus.running.value,
            owner=bindparam("owner_", type_=_executions.c.owner.type),
            started_at=func.coalesce(_executions.c.started_at, _now()),
            resumed_count=_executions.c.resumed_count
            + was_running.cast(_executions.c.resumed_count.type),
        )
    if finish:
        values.update(
            {
                name: bindparam(f"finish_{name}", type_=_executions.c[name].type)
                for name in FINISH_FIELDS
            }
        )
    return (
        update(_executions)
        .where(*where)
        .values(values)
        .returning(_executions.c.last_event_seq)
        .cte("advanced")
    )


@functools.cache
def _statement(
    claim: bool, unless_cancelled: bool, unless_webhooks: bool, finish: bool, parts: tuple[str, ...]
) -> Prepared:
    """The statement writing ``parts`` (besides the steps and the events, always written)."""
    advanced = _advanced(
        claim=claim,
        unless_cancelled=unless_cancelled,
        unless_webhooks=unless_webhooks,
        finish=finish,
    )
    guard = select(advanced.c.last_event_seq).exists()
    execution_id = bindparam("execution_", type_=_executions.c.id.type)
    steps = _rows("steps", [_steps.c.id, *_steps.c[STEP_STATE_FIELDS]])
    writes = [
        update(_steps)
        .where(_steps.c.execution_id == execution_id, _steps.c.id == steps.c.id, guard)
        .values({name: steps.c[name] for name in STEP_STATE_FIELDS})
        .cte("steps_written")
    ]
    for name in parts:
        if name == "statuses":
            statuses = _rows("statuses", [_messages.c.id, _messages.c.status])
            writes.append(
                update(_messages)
                .where(
                    _messages.c.execution_id == execution_id,
                    _messages.c.id == statuses.c.id,
                    guard,
                )
                .values(status=statuses.c.status)
                .cte("statuses_written")
            )
            continue
        table = _INSERTED[name]
        rows = _rows(name, list(table.c))
        writes.append(
            insert(table)
            .from_select(list(table.c.keys()), select(*rows.c).join_from(rows, advanced, true()))
            .cte(f"{name}_written")
        )
    events = _rows("events", list(_events.c[_EVENT_FIELDS]), numbered=True)
    seq = advanced.c.last_event_seq - bindparam("events", type_=Integer()) + events.c.position
    writes.append(
        insert(_events)
        .from_select(
            ["id", "execution_id", "seq", "type", "data", "created_at", "content_key_id"],
            select(
                events.c.id,
                execution_id,
                seq,
                events.c.type,
                events.c.data,
                _now(),
                events.c.content_key_id,
            ).join_from(events, advanced, true()),
        )
        .cte("events_written")
    )
    if finish:
        writes.append(
            update(_accounts)
            .where(
                _accounts.c.id == bindparam("account_", type_=_accounts.c.id.type),
                _accounts.c.active_executions > 0,
                guard,
            )
            .values(active_executions=_accounts.c.active_executions - 1, updated_at=_now())
            .cte("slot_released")
        )
    return Prepared(select(advanced.c.last_event_seq).add_cte(*writes))


class OneStatement:
    """``Writes`` as one PostgreSQL statement (see the module's docstring)."""

    @staticmethod
    def parameters(writes: Writes) -> tuple[tuple[str, ...], dict[str, Any]]:
        """The optional parts the statement writes, and its parameters."""
        tokens_in, tokens_out, cost = writes.tokens
        params: dict[str, Any] = {
            "execution_": writes.execution_id,
            "owner_": writes.owner,
            "lease_": writes.lease,
            "now": writes.now,
            "events": len(writes.events),
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "cost": cost,
        }
        if writes.claim is not None:
            params["stale_"] = writes.claim
        if writes.finish is not None or writes.unless_webhooks:
            params["account_"] = writes.account_id
        if writes.finish is not None:
            params.update({f"finish_{name}": writes.finish[name] for name in FINISH_FIELDS})
        params.update(_arrays("steps", ["id", *STEP_STATE_FIELDS], writes.steps, id_key="step_id"))
        event_ids = writes.event_ids or [uuid.uuid4() for _ in writes.events]
        event_keys = writes.event_keys or [None] * len(writes.events)
        events = [
            {"id": event_id, "type": kind, "data": data, "content_key_id": key}
            for event_id, key, (kind, data) in zip(
                event_ids, event_keys, writes.events, strict=True
            )
        ]
        params.update(_arrays("events", _EVENT_FIELDS, events))
        parts = []
        for name, rows in (
            ("context", writes.context),
            ("ledger", writes.ledger),
            ("messages", writes.messages),
        ):
            if rows:
                parts.append(name)
                defaults = {"created_at": writes.now, **_DEFAULTS.get(name, {})}
                filled = [{"id": uuid.uuid4(), **defaults, **row} for row in rows]
                params.update(_arrays(name, _INSERTED[name].c.keys(), filled))
        if writes.message_statuses:
            parts.append("statuses")
            statuses = [{"id": k, "status": v} for k, v in writes.message_statuses.items()]
            params.update(_arrays("statuses", ["id", "status"], statuses))
        return tuple(parts), params

    @classmethod
    def run(cls, conn: Connection, writes: Writes) -> int | None:
        parts, params = cls.parameters(writes)
        statement = _statement(
            writes.claim is not None,
            writes.unless_cancelled,
            writes.unless_webhooks,
            writes.finish is not None,
            parts,
        )
        last = statement.run(conn, params).scalar_one_or_none()
        return None if last is None else int(last)


def _arrays(
    name: str, columns: Sequence[str], rows: Sequence[dict[str, Any]], *, id_key: str = "id"
) -> dict[str, list[Any]]:
    """One array per column (``name_column``) of ``rows``; ``id_key`` holds the ``id``."""
    return {f"{name}_{c}": [row[id_key if c == "id" else c] for row in rows] for c in columns}
