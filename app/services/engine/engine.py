"""The engine: a small state machine over persisted steps.

An execution is claimed in one transaction, which also starts its first steps. From then on,
each step's result (step row, context writes, ledger entry, events, the execution's totals
and heartbeat) is committed in one short transaction together with what follows from it: the
next steps started, steps skipped, or the execution's end. The engine decides that from the
state it holds in memory (``Run``), which is exact because the committed state of an owned
execution changes only through the engine's own writes; the one outside change, a cancel
request, is checked in the same transaction by the guarded update that every start and every
end goes through, so once a cancel has returned no new step starts. Every transaction leaves
committed state from which any process resumes the execution after a crash (claim, reaper,
steps left ``running`` run again). The in-memory state and its changes live in ``state.py``,
the statements in ``EngineRepository``, ``claims.py`` and ``writes.py``. No template runs
inside a transaction: a step's input template is rendered when the step runs, by the bounded
renderer's worker processes.

On PostgreSQL a transaction costs its round trips: the claim is a read then one statement
(``_claim_at_once``: the claim with the first writes), and a commit is one statement
(``writes.OneStatement``), each committing by itself; what cannot be one statement (an end
that queues webhooks, a claim that ends the execution or finds it changed since it was read)
takes a transaction as on SQLite. The engine's connections are not pinged at checkout: a
connection lost under a transaction is replaced (``SQLAlchemyManager.run_transaction``), and
one lost under a commit is the outage handling's (``_through_outage``, lease fencing).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Connection, Row

from app.core.config import ExecutionSettings
from app.core.errors import DatabaseUnavailable
from app.core.logging import get_logger
from app.db.base import utcnow
from app.db.database import SQLAlchemyManager
from app.db.pool import is_connection_failure, is_transient
from app.models import ExecutionStatus, MessageStatus, StepStatus
from app.repositories.executions import EngineRepository, ExecutionRepository
from app.schemas.workflows import WorkflowDefinition
from app.services.content import CONTEXT, EXECUTIONS, MESSAGES, STEPS, ExecutionContent
from app.services.engine.agent_calls import AgentCaller, AgentOutcome
from app.services.engine.claims import Claimed, claim, claimable, holds_write_lock, read
from app.services.engine.events import (
    ContextUpdated,
    CostUpdated,
    ExecutionResumed,
    ExecutionStarted,
    StepCancelled,
    StepCompleted,
    StepFailed,
    StepSkipped,
    StepStarted,
    execution_ended,
)
from app.services.engine.state import (
    Changes,
    Finish,
    Run,
    StartedStep,
    StepRecord,
    StepResult,
    budget_breach,
    seconds_left,
)
from app.services.engine.strategies import StepInputError, decide, render_input
from app.services.engine.writes import Writes, has_webhooks, sealed, write
from app.services.events import EventHub
from app.services.messages import Mailbox, Message, directory, inbox, output_messages
from app.services.providers.base import ProviderError
from app.services.webhooks import enqueue_execution_ended

log = get_logger("app.engine")
T = TypeVar("T")

_UNFINISHED = frozenset({StepStatus.pending, StepStatus.running})
# Times one engine transaction is tried again after a deadlock or a serialization failure.
CONFLICT_RETRIES = 5


@dataclass(frozen=True)
class _Stop:
    """What stops a drive's running steps: an interrupt (an immediate cancel) or, under
    fail_fast, another step's failure."""

    interrupt: asyncio.Event
    abort: asyncio.Event

    @property
    def reason(self) -> str | None:
        if self.interrupt.is_set():
            return "cancelled"
        return "another step failed" if self.abort.is_set() else None


class ExecutionLost(Exception):
    """The execution is no longer this process's to drive (deleted, or claimed by another
    process after our heartbeat went stale); nothing of the transaction is kept."""


class _NotAtOnce(Exception):
    """A claim that cannot be made as one statement (``ExecutionEngine._claim_at_once``)."""


class CommitLanded(Exception):
    """A commit whose connection was lost before its answer did land (the lease moved on by
    exactly that commit): what it started is not known here, so the execution is released and
    driven again from its committed state."""


def database_away(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be reached now (as opposed to a statement it
    refused): the circuit breaker's refusal, or a connection that failed or was lost."""
    return isinstance(exc, DatabaseUnavailable) or is_connection_failure(exc)


# A cut-off no heartbeat is older than: no running execution counts as abandoned.
NOT_YET = datetime(1970, 1, 1, tzinfo=UTC)


def stale_before(database: SQLAlchemyManager, now: datetime, stale_after: float) -> datetime:
    """Running executions whose heartbeat is older than this are abandoned: ``stale_after``
    seconds ago, but counted from when the database came back after an outage (no owner could
    beat while it was away). Until then only heartbeats already stale when the outage began
    (the database's last answer before it) count. With the database manager on, a process
    takes no running execution over before it has seen the database answer for
    ``stale_after`` (an outage may have begun before it started)."""
    grace = timedelta(seconds=stale_after)
    cutoff = now - grace
    breaker = database.breaker
    if breaker is None:
        return cutoff
    if not breaker.settled(now, grace):
        return NOT_YET  # this process has not seen the database answer for stale_after yet
    began = breaker.unreachable_since(now, grace)
    return cutoff if began is None else min(cutoff, began - grace)


class ExecutionEngine:
    def __init__(
        self,
        database: SQLAlchemyManager,
        settings: ExecutionSettings,
        caller: AgentCaller,
        hub: EventHub,
        owner: str,
        content: ExecutionContent | None = None,
    ) -> None:
        self.db = database
        self.settings = settings
        self.caller = caller
        self.hub = hub
        self.owner = owner
        # Opens what an execution sealed at rest stored, and seals what it writes.
        self.content = content if content is not None else ExecutionContent(caller.box)
        # Called with each committed transaction's changes (the monitor's execution metrics).
        self.observers: list[Callable[[Changes], None]] = []

    async def run(self, execution_id: uuid.UUID, interrupt: asyncio.Event) -> None:
        """Drive one execution to its end, if this process can claim it."""
        claimed = await self._claim(execution_id)
        if claimed is None:
            return
        claimed.apply()
        self.hub.notify(execution_id)
        self._observe(claimed)
        if claimed.finish is not None:
            self._finished(execution_id, claimed.finish)
            return
        heartbeat = asyncio.create_task(self._heartbeat(execution_id, interrupt))
        try:
            await self._drive(claimed.run, claimed.started, interrupt)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    # -- transactions (run by SQLAlchemyManager.run_transaction, off the event loop) ----------

    async def _claim(self, execution_id: uuid.UUID) -> Changes | None:
        """Claim the execution, load it, and start its first steps, in one transaction. On
        PostgreSQL that is first tried as one statement, which commits by itself
        (``_claim_at_once``), and done in a transaction when it cannot be."""
        if self.db.autocommits:
            try:
                return await self.db.run_transaction(
                    partial(self._claim_at_once, execution_id), autocommit=True
                )
            except _NotAtOnce:
                pass
        return await self.db.run_transaction(partial(self._claim_in_transaction, execution_id))

    def _claim_in_transaction(self, execution_id: uuid.UUID, conn: Connection) -> Changes | None:
        """Claim the execution and start it, in one transaction. Where the transaction holds
        the write lock from its start (SQLite), the execution is read, then claimed by its first
        writes, as ``_claim_at_once`` does: nothing can change it in between, and the claim
        costs no statement of its own. Elsewhere (PostgreSQL, when the claim cannot be one
        statement) the claim comes first (``claims.claim``: its update locks the row)."""
        now = utcnow()
        cutoff = stale_before(self.db, now, self.settings.stale_after_seconds)
        if holds_write_lock(conn):
            found = read(conn, execution_id)
            if found is None or not claimable(found.execution, cutoff):
                return None
            changes = self._start(found, conn, now, claiming=True)
            # The row read is the row written: its cancel_mode was read under the lock.
            if not self._write(changes, now, conn, unless_cancelled=False, claim=cutoff):
                return None  # not claimable after all (cannot happen under the lock)
            return changes
        claimed = claim(conn, execution_id, self.owner, now, cutoff)
        if claimed is None:
            return None
        changes = self._start(claimed, conn, now)
        # The claim holds the guard (the row is ours, its cancel_mode read under the claim).
        self._write(changes, now, conn, unless_cancelled=False)
        return changes

    def _claim_at_once(self, execution_id: uuid.UUID, conn: Connection) -> Changes | None:
        """Read the execution, then claim it with its first writes in one statement, guarded
        by the claim's conditions under the lease read and by no cancel since (PostgreSQL,
        each statement committing by itself). ``_NotAtOnce`` when the claim would end it (its
        end queues its webhooks in a transaction), the guard refused (it changed since it
        was read) or the connection was lost before the claim was sent: nothing was
        written."""
        now = utcnow()
        cutoff = stale_before(self.db, now, self.settings.stale_after_seconds)
        try:
            found = read(conn, execution_id)
            if found is None or not claimable(found.execution, cutoff):
                return None
            changes = self._start(found, conn, now, claiming=True)
        except Exception as exc:
            if not is_connection_failure(exc):
                raise
            raise _NotAtOnce from exc  # lost before anything was written
        if changes.finish is not None:
            raise _NotAtOnce
        if not self._write(changes, now, conn, unless_cancelled=True, claim=cutoff):
            raise _NotAtOnce
        return changes

    def _start(
        self, claimed: Claimed, conn: Connection, now: datetime, *, claiming: bool = False
    ) -> Changes:
        """What the engine holds of the execution (``Run``) and the changes that start it: its
        first steps, or its end. ``claiming``: the row was read before the claim, which its
        first writes make (its resumed count and start are the claim's)."""
        repo = EngineRepository(conn)
        row = claimed.execution
        execution_id = row.id
        resumed_count = row.resumed_count
        started_at = row.started_at
        if claiming:
            resumed_count += row.status == ExecutionStatus.running.value
            started_at = started_at or now
        # A first claim finds no context yet; a resumed execution reads what it had written.
        context = self._open_context(repo, row) if resumed_count else {}
        prompt, variables = row.prompt, row.variables
        if row.content_key_id is not None:
            opened = self.content.open_row(
                EXECUTIONS,
                {"prompt": prompt, "variables": variables},
                row_id=execution_id,
                execution_id=execution_id,
                account_id=row.account_id,
            )
            prompt, variables = opened["prompt"], opened["variables"]
        workflow = WorkflowDefinition.model_validate(row.workflow)
        agents = claimed.agents
        key_ids = {a.provider_key_id for a in agents.values() if a.provider_key_id}
        run = Run(
            id=execution_id,
            account_id=row.account_id,
            team_id=row.team_id,
            created_by=row.created_by,
            workflow=workflow,
            prompt=prompt,
            variables=dict(variables),
            budget=dict(row.budget or {}),
            started_at=started_at,
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            cost_usd=Decimal(row.cost_usd),
            steps={step["key"]: self._open_step(step, row) for step in claimed.steps},
            context={key: value for key, (_, value) in context.items()},
            versions={key: version for key, (version, _) in context.items()},
            agents=agents,
            keys={k.id: k for k in repo.provider_keys(key_ids)} if key_ids else {},
            # A first claim finds no messages yet either.
            messages=self._open_messages(repo, row) if resumed_count else [],
            directory=directory([s.model_dump() for s in workflow.steps]),
            lease=row.lease,
            content_key_id=row.content_key_id,
        )
        changes = Changes(run)
        # Steps that were running when a previous owner died start again.
        for key, step in run.steps.items():
            if step.status is StepStatus.running:
                changes.step(key).status = StepStatus.pending
                changes.step(key).started_at = None
        if resumed_count > self.settings.max_resumes:
            error = f"the execution was abandoned {resumed_count} times"
            self._end(changes, Finish(ExecutionStatus.failed, "abandoned", error=error), now)
        else:
            if resumed_count:
                changes.events.append(ExecutionResumed(resumed_count=resumed_count))
                log.info("execution_resumed", execution_id=str(execution_id))
            else:
                changes.events.append(ExecutionStarted(workflow_version=row.workflow_version))
            if row.cancel_mode is not None:
                self._end(changes, Finish(ExecutionStatus.cancelled, "cancelled"), now)
            else:
                self._expire_requests(changes, now)
                self._plan(changes, now)
        return changes

    # -- content sealed at rest (app.services.content) -----------------------------------------

    def _open_step(self, step: dict[str, Any], execution: Row[Any]) -> StepRecord:
        if step["content_key_id"] is not None:
            step = self.content.open_row(
                STEPS,
                step,
                row_id=step["id"],
                execution_id=execution.id,
                account_id=execution.account_id,
            )
        return StepRecord.from_row(step)

    def _open_context(self, repo: EngineRepository, execution: Row[Any]) -> dict[str, Any]:
        """The latest version of each context key, opened: ``{key: (version, value)}``."""
        context = {}
        for key, row in repo.context(execution.id).items():
            value = row.value
            if row.content_key_id is not None:
                value = self.content.open_row(
                    CONTEXT,
                    {"value": value},
                    row_id=row.id,
                    execution_id=execution.id,
                    account_id=execution.account_id,
                )["value"]
            context[key] = (row.version, value)
        return context

    def _open_messages(self, repo: EngineRepository, execution: Row[Any]) -> list[Message]:
        messages = []
        for row in repo.messages(execution.id):
            values = dict(row._mapping)
            if values.pop("content_key_id") is not None:
                values = self.content.open_row(
                    MESSAGES,
                    values,
                    row_id=values["id"],
                    execution_id=execution.id,
                    account_id=execution.account_id,
                )
            messages.append(Message(**values))
        return messages

    async def _commit(self, run: Run, results: list[StepResult]) -> Changes:
        """Commit steps' results and whatever follows from them, in one transaction. On
        PostgreSQL that is one statement, which commits by itself (``writes``); an end is
        written so only when its account has no webhook to queue (else it is refused, and
        written again with its webhooks in a transaction)."""
        now = utcnow()
        changes = Changes(run)
        for result in results:
            self._record(changes, result, now)
        self._expire_requests(changes, now)
        self._plan(changes, now)
        moves_on = bool(changes.starting or changes.finish)
        write = partial(self._write, changes, now, unless_cancelled=moves_on)
        if self.db.autocommits:
            one = partial(write, one_statement=True)
            written = await self.db.run_transaction(one, autocommit=True)
            if not written and changes.finish is not None:
                written = await self.db.run_transaction(write)
        else:
            written = await self.db.run_transaction(write)
        if written:
            return changes
        return await self.db.run_transaction(partial(self._refused, run, results))

    def _refused(self, run: Run, results: list[StepResult], conn: Connection) -> Changes:
        """The guard refused a commit: the execution is no longer ours (``ExecutionLost``), or
        it was ours under the next lease already (``CommitLanded``), or a cancel was committed:
        then the results are kept, nothing starts, and the execution ends once nothing runs."""
        repo = EngineRepository(conn)
        now = utcnow()
        control = repo.control(run.id)
        if (
            control is None
            or control.owner != self.owner
            or ExecutionStatus(control.status) is not ExecutionStatus.running
        ):
            raise ExecutionLost(str(run.id))
        if control.lease == run.lease + 1:
            raise CommitLanded(str(run.id))  # this commit's earlier attempt
        if control.lease != run.lease:
            raise ExecutionLost(str(run.id))
        changes = Changes(run)
        for result in results:
            self._record(changes, result, now)
        if not any(s.status is StepStatus.running for s in changes.states().values()):
            self._end(changes, Finish(ExecutionStatus.cancelled, "cancelled"), now)
        if not self._write(changes, now, conn, unless_cancelled=False):
            raise ExecutionLost(str(run.id))  # taken over since the control was read
        return changes

    def _write(
        self,
        changes: Changes,
        now: datetime,
        conn: Connection,
        *,
        unless_cancelled: bool,
        one_statement: bool = False,
        claim: datetime | None = None,
    ) -> bool:
        """Store ``changes`` behind the execution's guard (``writes.write``) and, when they end
        the execution, queue its webhooks; False if the guard did not hold (then nothing was
        written). With ``one_statement`` (a statement committing by itself) an end is written
        only if its account has no webhook to queue. With ``claim`` (the stale cut-off) the
        writes also claim the execution (``Writes.claim``)."""
        run = changes.run
        finish = changes.finish
        writes = Writes(
            execution_id=run.id,
            account_id=run.account_id,
            owner=self.owner,
            lease=run.lease,
            now=now,
            unless_cancelled=unless_cancelled,
            unless_webhooks=one_statement and finish is not None,
            claim=claim,
            tokens=changes.tokens,
            finish=None
            if finish is None
            else {
                "status": finish.status.value,
                "status_reason": finish.reason,
                "result": finish.result,
                "error": finish.error,
                "finished_at": now,
                "owner": None,
                "content_key_id": None,
            },
            steps=[step.row() for step in changes.steps.values()],
            context=changes.context_rows,
            ledger=changes.ledger_rows,
            events=[e.stored() for e in changes.events],
        )
        if changes.mail is not None:
            writes.messages = [m.row(run.id) for m in changes.mail.added]
            writes.message_statuses = changes.mail.statuses
        if run.content_key_id is not None:
            writes = sealed(writes, self.content, run.content_key_id)
        if write(conn, writes) is None:
            return False
        changes.lease = run.lease + 1
        changes.started = self._load_turn(changes)
        if finish is not None and not one_statement and has_webhooks(conn, run.account_id):
            enqueue_execution_ended(conn, changes, now)  # its webhooks, in this commit
        return True

    def _load_turn(self, changes: Changes) -> list[StartedStep]:
        """What the steps starting now need to run, in the transaction that starts them: their
        agent and key, the context, and their agent's inbox (held in memory, like the context)."""
        if not changes.starting:
            return []
        run = changes.run
        seconds = seconds_left(run.budget, run.started_at)
        messages = changes.current_messages
        started = []
        for planned in changes.starting:
            agent = run.agents.get(planned.agent_id)
            key = run.keys.get(agent.provider_key_id) if agent and agent.provider_key_id else None
            mailbox = Mailbox(inbox(messages, agent.id if agent else None), run.directory)
            started.append(
                StartedStep(
                    planned,
                    agent,
                    key,
                    changes.current_context,
                    run.variables,
                    seconds,
                    mailbox,
                    run.prompt,
                )
            )
        return started

    # -- decisions, in memory ----------------------------------------------------------------

    def _record(self, changes: Changes, result: StepResult, now: datetime) -> None:
        """A step's result: its row, context writes, ledger entry and events."""
        step = changes.step(result.key)
        step.finished_at = now
        if result.input is not None:
            step.input = result.input
        outcome = result.outcome
        if result.interrupted is not None:
            step.status = StepStatus.cancelled
            step.error = f"interrupted: {result.interrupted}"
            changes.events.append(StepCancelled(step=step.key, reason=result.interrupted))
            return
        if outcome is None:
            step.status = StepStatus.failed
            step.error = result.error
            error = result.failure or {"message": result.error}
            changes.events.append(StepFailed(step=step.key, error=error))
            return
        step.status = StepStatus.completed
        step.output = outcome.output
        step.input_tokens += outcome.input_tokens
        step.output_tokens += outcome.output_tokens
        step.cost_usd = Decimal(step.cost_usd) + outcome.cost_usd
        tokens_in, tokens_out, cost = changes.tokens
        changes.tokens = (
            tokens_in + outcome.input_tokens,
            tokens_out + outcome.output_tokens,
            cost + outcome.cost_usd,
        )
        changes.events.append(StepCompleted(step=step.key, output=outcome.output))
        self._post_messages(changes, step.key, step.agent_id, outcome, now)
        if outcome.context_writes:
            run = changes.run
            if changes.context is None:
                changes.context = dict(run.context)
            for key, value in outcome.context_writes.items():
                version = changes.versions.get(key, run.versions.get(key, 0)) + 1
                changes.versions[key] = version
                changes.context[key] = value
                changes.context_rows.append(
                    {
                        "execution_id": run.id,
                        "key": key,
                        "version": version,
                        "value": value,
                        "step_key": step.key,
                        "agent_id": step.agent_id,
                        "content_key_id": None,  # sealed by ``writes.sealed`` if need be
                    }
                )
                changes.events.append(ContextUpdated(key=key, version=version, step=step.key))
        if outcome.is_model_call:
            run = changes.run
            changes.ledger_rows.append(
                {
                    "account_id": run.account_id,
                    "execution_id": run.id,
                    "step_id": step.id,
                    "team_id": run.team_id,
                    "agent_id": step.agent_id,
                    "user_id": run.created_by,
                    "provider": outcome.provider,
                    "model": outcome.model,
                    "input_tokens": outcome.input_tokens,
                    "output_tokens": outcome.output_tokens,
                    "cost_usd": outcome.cost_usd,
                    "duration_ms": outcome.duration_ms,
                    "paid_by": outcome.paid_by or "platform",
                }
            )
            tokens_in, tokens_out, cost = changes.totals
            changes.events.append(
                CostUpdated(
                    step=step.key,
                    step_input_tokens=outcome.input_tokens,
                    step_output_tokens=outcome.output_tokens,
                    step_cost_usd=outcome.cost_usd,
                    total_input_tokens=tokens_in,
                    total_output_tokens=tokens_out,
                    total_cost_usd=cost,
                )
            )

    @staticmethod
    def _post_messages(
        changes: Changes,
        step_key: str,
        agent_id: uuid.UUID | None,
        outcome: AgentOutcome,
        now: datetime,
    ) -> None:
        """The messages a completed step sent, and its output to its `send_output_to`."""
        run = changes.run
        outgoing = list(outcome.messages)
        definition = next(s for s in run.workflow.steps if s.id == step_key)
        if definition.send_output_to:
            outgoing += output_messages(definition.send_output_to, outcome.output, run.directory)
        if outgoing:
            posted = changes.draft().post(
                outgoing, sender_agent_id=agent_id, sender_step=step_key, now=now
            )
            changes.events += posted

    @staticmethod
    def _expire_requests(changes: Changes, now: datetime, *, ending: bool = False) -> None:
        """Requests past their deadline (every pending one when the execution ends) time out."""
        if any(m.status == MessageStatus.pending for m in changes.current_messages):
            changes.events += changes.draft().expire(now, ending=ending)

    def _plan(self, changes: Changes, now: datetime) -> None:
        """Decide what follows the committed state plus ``changes``: steps to start (as many
        as the free slots allow), steps skipped or failed on the way, or the end."""
        run = changes.run
        states = changes.states()
        running = sum(s.status is StepStatus.running for s in states.values())
        breach = budget_breach(run.budget, changes.totals, run.started_at)
        if breach is not None:
            if not running:
                self._end(changes, breach, now)
            return
        while True:
            try:
                decision = decide(
                    run.workflow,
                    states,
                    prompt=run.prompt,
                    context=changes.current_context,
                    variables=run.variables,
                )
            except StepInputError as exc:
                step = changes.step(exc.step_key)
                step.status, step.error, step.finished_at = StepStatus.failed, str(exc), now
                states[step.key] = step.state()
                changes.events.append(StepFailed(step=step.key, error={"message": str(exc)}))
                continue
            if decision.finish is not None:
                finish = Finish(
                    decision.finish, decision.finish.value, decision.result, decision.error
                )
                self._end(changes, finish, now)
                return
            if decision.skip:
                for key in decision.skip:
                    step = changes.step(key)
                    step.status, step.finished_at = StepStatus.skipped, now
                    states[key] = step.state()
                    changes.events.append(StepSkipped(step=key, reason="condition is false"))
                continue
            if decision.run:
                free = (run.workflow.max_concurrency or len(decision.run)) - running
                for planned in decision.run[: max(free, 0)]:
                    step = changes.step(planned.key)
                    step.status, step.started_at = StepStatus.running, now
                    step.input = planned.input
                    step.attempts += 1
                    changes.starting.append(planned)
                    changes.events.append(
                        StepStarted(step=planned.key, agent_id=uuid.UUID(planned.agent_id))
                    )
                return
            if not running:
                error = "the workflow made no progress"
                self._end(changes, Finish(ExecutionStatus.failed, "failed", error=error), now)
            return

    @staticmethod
    def _end(changes: Changes, finish: Finish, now: datetime) -> None:
        changes.starting.clear()
        for key, step in changes.run.steps.items():
            if changes.steps.get(key, step).status in _UNFINISHED:
                changes.step(key).status = StepStatus.cancelled
                changes.step(key).finished_at = now
        ExecutionEngine._expire_requests(changes, now, ending=True)
        changes.finish = finish
        changes.events.append(execution_ended(finish.status, finish.reason, finish.error))

    # -- running steps ------------------------------------------------------------------------

    async def _drive(self, run: Run, first: list[StartedStep], interrupt: asyncio.Event) -> None:
        """Run the started steps and commit their results, until the execution ends. Results
        that land together are committed together (one transaction, each step's rows and
        events as if alone); each commit starts whatever follows. An interrupt (an immediate
        cancel) or, under fail_fast, a failure stops the running steps."""
        abort = asyncio.Event()
        stop = _Stop(interrupt, abort)
        watchers = {asyncio.ensure_future(interrupt.wait()), asyncio.ensure_future(abort.wait())}
        running: set[asyncio.Task[StepResult]] = set()

        def launch(steps: list[StartedStep]) -> None:
            for step in steps:
                running.add(asyncio.create_task(self._run_step(step, stop)))

        launch(first)
        try:
            while running:
                done, _ = await asyncio.wait(
                    running | watchers, return_when=asyncio.FIRST_COMPLETED
                )
                if done & watchers:
                    watchers -= done
                    for task in running - done:
                        task.cancel()
                landed = {task for task in running if task in done}
                if not landed:
                    continue
                running -= landed
                results = [task.result() for task in landed]
                try:
                    changes = await self._through_outage(
                        run.id, partial(self._commit, run, results)
                    )
                except ExecutionLost:
                    log.info("execution_lost", execution_id=str(run.id))
                    interrupt.set()
                    return
                except CommitLanded:
                    await self._through_outage(
                        run.id, partial(self._release, run.id, run.lease + 1)
                    )
                    raise
                changes.apply()
                self.hub.notify(run.id)
                self._observe(changes)
                if changes.finish is not None:
                    self._finished(run.id, changes.finish)
                    return
                if run.fail_fast and any(r.failed for r in results):
                    abort.set()
                launch(changes.started)
        finally:
            for pending in (*running, *watchers):
                pending.cancel()
            await asyncio.gather(*running, *watchers, return_exceptions=True)

    async def _run_step(self, step: StartedStep, stop: _Stop) -> StepResult:
        """Render one started step's input template and run its agent (both within what the
        time budget leaves); how it ended, to be committed. Cancelled by the drive when the
        running steps are stopped."""
        key = step.planned.key
        if stop.reason is not None:
            return StepResult(key, interrupted=stop.reason)
        if step.agent is None:
            return StepResult(key, error="the agent no longer exists")
        deadline = asyncio.timeout(step.seconds)
        step_input = None
        try:
            async with deadline:
                step_input = await render_input(
                    self.caller.templates,
                    step.planned,
                    prompt=step.prompt,
                    context=step.context,
                    variables=step.variables,
                    owner=step.agent.account_id,  # renders are shared fairly among accounts
                )
                outcome = await self.caller.call(
                    step.agent,
                    step.key,
                    step_input=step_input,
                    context=step.context,
                    variables=step.variables,
                    mailbox=step.mailbox,
                )
        except StepInputError as exc:
            return StepResult(key, error=str(exc), failure={"message": str(exc)})
        except asyncio.CancelledError:
            if stop.reason is None:
                raise  # the drive itself is being cancelled
            return StepResult(key, interrupted=stop.reason, input=step_input)
        except TimeoutError:
            if not deadline.expired():
                raise
            return StepResult(key, interrupted="timed_out", input=step_input)
        except ProviderError as exc:
            error = f"{exc.kind}: {exc.message}"
            return StepResult(key, error=error, failure=exc.to_dict(), input=step_input)
        return StepResult(key, outcome=outcome, input=step_input)

    def _observe(self, changes: Changes) -> None:
        """Tell the observers what a transaction committed; an observer's failure is logged
        and never reaches the execution."""
        for observer in self.observers:
            try:
                observer(changes)
            except Exception as exc:
                log.warning("engine_observer_failed", error_type=type(exc).__name__, exc_info=exc)

    @staticmethod
    def _finished(execution_id: uuid.UUID, finish: Finish) -> None:
        log.info("execution_finished", execution_id=str(execution_id), status=finish.status.value)

    # -- outages -------------------------------------------------------------------------------

    async def _through_outage(
        self, execution_id: uuid.UUID, attempt: Callable[[], Awaitable[T]]
    ) -> T:
        """Run one of the drive's transactions (``attempt``); while the database is away the
        execution pauses (its running steps go on, their results wait in memory) and the
        transaction is tried again once the database answers; after a deadlock or a
        serialization failure it is tried again after a short backoff, ``CONFLICT_RETRIES``
        times at most. Trying again is safe: every engine commit is fenced by the lease
        generation, so an attempt that landed although its answer was lost is recognised
        (``CommitLanded``) instead of applied twice."""
        paused_at: float | None = None
        conflicts = 0
        while True:
            try:
                result = await attempt()
            except Exception as exc:
                if not database_away(exc):
                    if not is_transient(exc) or conflicts == CONFLICT_RETRIES:
                        raise
                    conflicts += 1  # a deadlock or a serialization failure: rolled back
                    await asyncio.sleep(0.05 * 2**conflicts)
                    continue
                if paused_at is None:
                    paused_at = time.monotonic()
                    log.warning(
                        "execution_paused",
                        execution_id=str(execution_id),
                        error_type=type(exc).__name__,
                    )
                await self._until_database_answers()
                continue
            if paused_at is not None:
                log.info(
                    "execution_continued",
                    execution_id=str(execution_id),
                    paused_seconds=round(time.monotonic() - paused_at, 3),
                )
            return result

    async def _release(self, execution_id: uuid.UUID, lease: int) -> bool:
        """Give up the execution held under ``lease``: the next claim takes it at once."""
        return await self.db.run_transaction(
            lambda conn: EngineRepository(conn).release(execution_id, self.owner, lease)
        )

    async def _until_database_answers(self) -> None:
        """Wait until a probe reaches the database and no circuit breaker holds it closed off,
        backing off from 0.1 s to 2 s between tries."""
        delay = 0.1
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            breaker = self.db.breaker
            if breaker is not None and breaker.is_open:
                continue  # its watcher probes the database and closes it when it answers
            if await self._database_answers():
                return

    async def _database_answers(self) -> bool:
        try:
            await self.db.ping()
        except Exception:  # still away
            return False
        return True

    # -- ownership ------------------------------------------------------------------------------

    async def _heartbeat(self, execution_id: uuid.UUID, interrupt: asyncio.Event) -> None:
        """Keep ownership alive; notice an immediate cancel asked through another process."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                async with self.db.session() as session:
                    owned, cancel_mode = await ExecutionRepository(session).beat(
                        execution_id, self.owner, utcnow()
                    )
                    await session.commit()
            except Exception as exc:
                if not database_away(exc):
                    raise
                continue  # the database is away: beat again when it is back
            if not owned or cancel_mode == "immediate":
                interrupt.set()
