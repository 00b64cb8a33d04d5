"""How the engine claims an execution and reads what it keeps of it.

The claim is the repository's guarded update (``claim_statement``): the execution becomes this
process's if it is pending, or running with a heartbeat older than the cut-off (its owner died).
What the engine keeps of it beside its row is read in one statement: its steps, each with its
agent (a step's agent is its workflow step's: both are written from the workflow when the
execution is created; an agent deleted since reads as none).

- ``claim`` claims and reads in one statement on PostgreSQL (the claim's update as a CTE,
  joined to the steps). The engine claims so in a transaction that does not hold the write
  lock from its start (PostgreSQL, when the claim cannot be one statement): the claim's
  update locks the row before anything is read.
- ``read`` reads without claiming, for a claim made by the first writes themselves
  (``writes.Writes.claim``): ``claimable`` tells whether the row read can be claimed, and the
  writes' guard checks it again, with the lease read (any claim or commit since moves it on).
  On PostgreSQL the writes are one statement committing by itself; on SQLite they follow the
  read in its transaction, which holds the write lock from its start (``holds_write_lock``).

The claim here is the repository's claim statement (``claim_statement``), run as a CTE.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    CTE,
    Connection,
    FromClause,
    Row,
    Select,
    bindparam,
    select,
)

from app.models import Agent, Execution, ExecutionStatus, ExecutionStep
from app.repositories.base import table_of
from app.repositories.executions import (
    CLAIMED_COLUMNS,
    STEP_STATE_FIELDS,
    claim_statement,
)

_executions = table_of(Execution)
_steps = table_of(ExecutionStep)
_agents = table_of(Agent)
_AGENT_COLUMNS = tuple(c.key for c in _agents.c)

# What the engine keeps of a claimed execution (the claim statement's columns).
CLAIMED = tuple(column.key for column in CLAIMED_COLUMNS)
# ... and what decides whether it can be claimed, when it is read before the claim.
GUARDED = ("status", "heartbeat_at")
# A step as the engine holds it (``StepRecord``).
STEP_FIELDS = ("id", "agent_id", *STEP_STATE_FIELDS)


@dataclass(frozen=True)
class Claimed:
    """An execution as read: a row with (at least) its ``CLAIMED`` columns, its steps in
    order (``key`` and the ``STEP_FIELDS``) and the agents they name, by id as text."""

    execution: Row[Any]
    steps: list[dict[str, Any]]
    agents: dict[str, Agent]


def claim(
    conn: Connection, execution_id: uuid.UUID, owner: str, now: datetime, stale_before: datetime
) -> Claimed | None:
    """Claim the execution for ``owner`` and read it, in one statement (PostgreSQL: the claim's
    update as a CTE joined to the steps); None if it cannot be claimed now."""
    params = {
        "execution_id": execution_id,
        "owner_": owner,
        "now": now,
        "stale_before": stale_before,
    }
    rows = conn.execute(_claim_and_read(), params).all()
    return _claimed(rows[0], rows) if rows else None


def read(conn: Connection, execution_id: uuid.UUID) -> Claimed | None:
    """The execution (with its ``GUARDED`` columns too), its steps and agents, unclaimed;
    None if it does not exist."""
    rows = conn.execute(_read_unclaimed(), {"execution_": execution_id}).all()
    return _claimed(rows[0], rows) if rows else None


def holds_write_lock(conn: Connection) -> bool:
    """Whether the transaction on ``conn`` holds the database's write lock from its start, so
    that what it reads stays as read until it commits: on SQLite, whose transactions the
    application begins IMMEDIATE (``app.db.database``); not on PostgreSQL."""
    return conn.dialect.name == "sqlite"


def claimable(execution: Row[Any], stale_before: datetime) -> bool:
    """Whether the claim's guard holds for ``execution`` as ``read`` found it."""
    if execution.status == ExecutionStatus.pending.value:
        return True
    heartbeat: datetime | None = execution.heartbeat_at
    stale = heartbeat is None or heartbeat < stale_before
    return bool(execution.status == ExecutionStatus.running.value and stale)


def _claimed(execution: Row[Any], rows: Sequence[Row[Any]]) -> Claimed:
    steps = []
    agents = {}
    for row in rows:
        values = row._mapping
        if values["step_id"] is None:
            continue  # an execution without steps
        steps.append({"key": values["step_key"], **{f: values[f"step_{f}"] for f in STEP_FIELDS}})
        if values["agent_id"] is not None:
            agent = Agent(**{name: values[f"agent_{name}"] for name in _AGENT_COLUMNS})
            agents[str(agent.id)] = agent
    return Claimed(execution, steps, agents)


def _claimed_cte() -> CTE:
    """The claim statement's guarded update, as a CTE returning ``CLAIMED``."""
    return cast(CTE, claim_statement().cte("claimed"))


_STEP_COLUMNS = (
    _steps.c.step_key,
    *(_steps.c[f].label(f"step_{f}") for f in STEP_FIELDS),
    *(c.label(f"agent_{c.key}") for c in _agents.c),
)


def _with_steps(execution: FromClause, id_column: Any) -> FromClause:
    """``execution`` outer-joined to its steps and their agents: the row is there even
    without steps."""
    return execution.outerjoin(_steps, _steps.c.execution_id == id_column).outerjoin(
        _agents, _agents.c.id == _steps.c.agent_id
    )


# Built once each: SQLAlchemy then finds their compiled form in its cache at once.
@functools.cache
def _claim_and_read() -> Select[Any]:
    """The claim, each of the execution's steps (in order) beside the claimed row."""
    claimed = _claimed_cte()
    return (
        select(*claimed.c, *_STEP_COLUMNS)
        .select_from(_with_steps(claimed, claimed.c.id))
        .order_by(_steps.c.position)
    )


@functools.cache
def _read_unclaimed() -> Select[Any]:
    """The execution row as the claim's guard sees it, each of its steps beside it."""
    execution_id = bindparam("execution_", type_=_executions.c.id.type)
    return (
        select(*_executions.c[CLAIMED + GUARDED], *_STEP_COLUMNS)
        .select_from(_with_steps(_executions, _executions.c.id))
        .where(_executions.c.id == execution_id)
        .order_by(_steps.c.position)
    )
