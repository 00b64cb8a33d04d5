"""Executions' content sealed at rest, for ``renum keys``: how many rows each key seals
(``status``), sealing them again with the primary key (``rotate``), and sealing the stored
plaintext of the accounts listed in ``security.content_encryption.accounts`` (``seal-content``).

A row of an execution's tables is sealed as a whole (``app.services.content``): its
``content_key_id`` names its key, every content column of it is opened (each value with the
key its own token names) and sealed again under the primary in one guarded update, which
leaves a row changed meanwhile as the change made it: an execution's row by its lease (every
engine commit moves it on), a step's by its content, the rows written once (context entries,
messages, events) by their key. Batches go by row id, each committed by itself, so both
commands run while the service runs and an interrupted run is run again to finish.

Sealing stored plaintext touches only executions that have ended (the engine writes nothing
more to them, so no row ends half sealed) and, of the events, those whose type carries
content; the others stay as they were and are sealed by a later run once they end.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.crypto import CryptoError, SecretBox
from app.models import (
    ContextEntry,
    Execution,
    ExecutionEvent,
    ExecutionMessage,
    ExecutionStatus,
    ExecutionStep,
)
from app.services.content import (
    CONTEXT,
    EVENT_FIELDS,
    EVENTS,
    EXECUTIONS,
    JSON_COLUMNS,
    MESSAGES,
    STEPS,
    TEXT_COLUMNS,
    ExecutionContent,
    SealingPolicy,
)

ENDED = [s.value for s in ExecutionStatus if s.terminal]


@dataclass(frozen=True)
class ContentTable:
    """One table of executions' content: its name in the reports, its model, and the columns
    (besides its key) its guarded update compares with what was read."""

    name: str
    table: str
    model: Any
    guarded: tuple[str, ...] = ()

    @property
    def content_columns(self) -> tuple[str, ...]:
        if self.table == EVENTS:
            return ("data",)
        return TEXT_COLUMNS.get(self.table, ()) + JSON_COLUMNS.get(self.table, ())


CONTENT_TABLES = (
    ContentTable("execution content: executions", EXECUTIONS, Execution, ("lease",)),
    ContentTable("execution content: steps", STEPS, ExecutionStep, TEXT_COLUMNS[STEPS]),
    ContentTable("execution content: context", CONTEXT, ContextEntry),
    ContentTable("execution content: messages", MESSAGES, ExecutionMessage),
    ContentTable("execution content: events", EVENTS, ExecutionEvent),
)


async def content_key_counts(conn: AsyncConnection) -> dict[str, dict[str, int]]:
    """The sealed rows of each table by the key that sealed them (the partial index of the
    sealed rows answers: plaintext rows are not read)."""
    counts = {}
    for table in CONTENT_TABLES:
        key = table.model.content_key_id
        rows = await conn.execute(select(key, func.count()).where(key.is_not(None)).group_by(key))
        counts[table.name] = {str(k): int(n) for k, n in rows.all()}
    return counts


@dataclass
class Resealed:
    """What a pass over the tables did: rows sealed (again) by table, rows left because they
    changed meanwhile, rows that did not open (by table, with their ids)."""

    done: dict[str, int]
    changed_meanwhile: int
    unopened: dict[str, list[str]]


async def reseal(
    engine: AsyncEngine,
    box: SecretBox,
    *,
    policy: SealingPolicy | None = None,
    batch: int,
    progress: Callable[[str, int], None],
) -> Resealed:
    """Seal again with the primary key every row sealed with another one; with ``policy``,
    seal instead the plaintext rows of the ended executions of the accounts it lists."""
    content = ExecutionContent(box)
    primary = box.current_key_id
    result = Resealed({}, 0, {})
    for table in CONTENT_TABLES:
        done = 0
        after: uuid.UUID | None = None
        while True:
            rows = await _batch(engine, table, primary, policy, after, batch)
            if not rows:
                break
            after = rows[-1].id
            async with engine.begin() as conn:
                for row in rows:
                    try:
                        values = _resealed(content, table, row, primary)
                    except (CryptoError, ValueError):
                        result.unopened.setdefault(table.name, []).append(str(row.id))
                        continue
                    model = table.model
                    guards = [model.id == row.id]
                    old_key = row.content_key_id
                    guards.append(
                        model.content_key_id.is_(None)
                        if old_key is None
                        else model.content_key_id == old_key
                    )
                    guards += [
                        getattr(model, c).is_not_distinct_from(getattr(row, c))
                        for c in table.guarded
                    ]
                    changed = await conn.execute(
                        update(model).where(*guards).values(**values, content_key_id=primary)
                    )
                    if changed.rowcount == 1:
                        done += 1
                    else:
                        result.changed_meanwhile += 1
            progress(table.name, done)
        result.done[table.name] = done
    return result


def _resealed(
    content: ExecutionContent, table: ContentTable, row: Row[Any], primary: str
) -> dict[str, Any]:
    """The row's content columns sealed with ``primary`` (opened first when sealed)."""
    ids = {
        "row_id": row.id,
        "execution_id": row.id if table.table == EXECUTIONS else row.execution_id,
        "account_id": row.account_id,
    }
    sealed = row.content_key_id is not None
    if table.table == EVENTS:
        data = row.data
        if sealed:
            data = content.open_event(row.type, data, **ids)
        return {"data": content.seal_event(row.type, data, key_id=primary, **ids)}
    values = {c: getattr(row, c) for c in table.content_columns}
    if sealed:
        values = content.open_row(table.table, values, **ids)
    return content.seal_row(table.table, values, key_id=primary, **ids)


async def _batch(
    engine: AsyncEngine,
    table: ContentTable,
    primary: str,
    policy: SealingPolicy | None,
    after: uuid.UUID | None,
    size: int,
) -> list[Row[Any]]:
    """The next rows (by id) to seal: not under ``primary`` (a rotation), or, with
    ``policy``, plaintext rows of the ended executions of the accounts it lists."""
    model = table.model
    key = model.content_key_id
    wanted = [model.id, key, *(getattr(model, c) for c in table.content_columns)]
    wanted += [getattr(model, c) for c in table.guarded if c not in table.content_columns]
    if table.table == EVENTS:
        wanted.append(model.type)
    query = select(*wanted, Execution.account_id)
    if table.table == EXECUTIONS:
        query = query.select_from(model)
    else:
        query = query.add_columns(model.execution_id).join(
            Execution, Execution.id == model.execution_id
        )
    if policy is None:
        query = query.where(key.is_not(None), key != primary)
    else:
        query = query.where(key.is_(None), Execution.status.in_(ENDED))
        if not policy.everyone:
            query = query.where(Execution.account_id.in_(list(policy.accounts)))
        if table.table == EVENTS:
            query = query.where(model.type.in_(list(EVENT_FIELDS)))
    if after is not None:
        query = query.where(model.id > after)
    async with engine.connect() as conn:
        rows: list[Row[Any]] = list(
            (await conn.execute(query.order_by(model.id).limit(size))).all()  # type: ignore[arg-type]
        )
    return rows
