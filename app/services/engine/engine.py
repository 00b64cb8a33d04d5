"""The engine: a small state machine over persisted steps.

Each turn reads the committed state, lets the strategy decide, commits the decision (steps
started, skipped, or the end) and only then calls agents; each step's result, context writes,
ledger entry and events are committed together. Because every decision reads committed state,
any process can resume an execution after a crash, and a cancel is a state change checked
(under the same row guard) before anything new starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import ExecutionSettings
from app.core.logging import get_logger
from app.db.base import utcnow
from app.db.database import Database
from app.models import (
    Agent,
    ContextEntry,
    Execution,
    ExecutionStatus,
    ExecutionStep,
    LedgerEntry,
    ProviderKey,
    StepStatus,
)
from app.repositories.executions import ExecutionRepository
from app.schemas.workflows import WorkflowDefinition
from app.services.engine.agent_calls import AgentCaller, AgentOutcome
from app.services.engine.strategies import PlannedStep, StepInputError, StepState, decide
from app.services.events import EventHub
from app.services.providers.base import ProviderError

log = get_logger("app.engine")

_FINISH_EVENTS = {
    ExecutionStatus.completed: "execution_completed",
    ExecutionStatus.failed: "execution_failed",
    ExecutionStatus.cancelled: "execution_cancelled",
    ExecutionStatus.timed_out: "execution_cancelled",
}
_COMMIT_ATTEMPTS = 5


@dataclass(frozen=True)
class Turn:
    """What one turn starts: the steps, and what they need to run outside any transaction."""

    steps: list[PlannedStep]
    agents: Mapping[str, Agent]
    keys: Mapping[uuid.UUID, ProviderKey]
    context: Mapping[str, Any]
    variables: Mapping[str, Any]
    max_concurrency: int | None
    fail_fast: bool


class StepInterrupted(Exception):
    """A step's agent call was abandoned: an immediate cancel, or the time budget ran out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def budget_breach(execution: Execution) -> tuple[ExecutionStatus, str] | None:
    """Whether the execution has used up its budget; checked before anything new starts."""
    budget = execution.budget or {}
    max_tokens = budget.get("max_tokens")
    if max_tokens is not None and execution.input_tokens + execution.output_tokens >= max_tokens:
        return ExecutionStatus.cancelled, "budget_exceeded"
    max_cost = budget.get("max_cost_usd")
    if max_cost is not None and Decimal(execution.cost_usd) >= Decimal(str(max_cost)):
        return ExecutionStatus.cancelled, "budget_exceeded"
    left = seconds_left(execution)
    if left is not None and left <= 0:
        return ExecutionStatus.timed_out, "timed_out"
    return None


def seconds_left(execution: Execution) -> float | None:
    max_seconds = (execution.budget or {}).get("max_seconds")
    if max_seconds is None or execution.started_at is None:
        return None
    return (execution.started_at + timedelta(seconds=max_seconds) - utcnow()).total_seconds()


class ExecutionEngine:
    def __init__(
        self,
        database: Database,
        settings: ExecutionSettings,
        caller: AgentCaller,
        hub: EventHub,
        owner: str,
    ) -> None:
        self.db = database
        self.settings = settings
        self.caller = caller
        self.hub = hub
        self.owner = owner

    async def run(self, execution_id: uuid.UUID, interrupt: asyncio.Event) -> None:
        """Drive one execution to its end, if this process can claim it."""
        if not await self._claim(execution_id):
            return
        heartbeat = asyncio.create_task(self._heartbeat(execution_id, interrupt))
        try:
            await self._drive(execution_id, interrupt)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _claim(self, execution_id: uuid.UUID) -> bool:
        now = utcnow()
        stale_before = now - timedelta(seconds=self.settings.stale_after_seconds)
        async with self.db.session() as session:
            repo = ExecutionRepository(session)
            if not await repo.claim(execution_id, self.owner, now, stale_before):
                await session.rollback()
                return False
            execution = await self._load(session, execution_id)
            # Steps that were running when a previous owner died start again.
            await session.execute(
                update(ExecutionStep)
                .where(
                    ExecutionStep.execution_id == execution_id,
                    ExecutionStep.status == StepStatus.running.value,
                )
                .values(status=StepStatus.pending.value, started_at=None)
            )
            if execution.resumed_count > self.settings.max_resumes:
                steps = {s.step_key: s for s in await repo.steps(execution_id)}
                await self._finish(
                    session, execution, steps, ExecutionStatus.failed, "abandoned",
                    error=f"the execution was abandoned {execution.resumed_count} times",
                )  # fmt: skip
                return False
            if execution.resumed_count:
                event = ("execution_resumed", {"resumed_count": execution.resumed_count})
                log.info("execution_resumed", execution_id=str(execution_id))
            else:
                event = ("execution_started", {"workflow_version": execution.workflow_version})
            await repo.append_events(execution_id, [event])
            await session.commit()
        self.hub.notify(execution_id)
        return True

    async def _heartbeat(self, execution_id: uuid.UUID, interrupt: asyncio.Event) -> None:
        """Keep ownership alive; notice an immediate cancel asked through another process."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            async with self.db.session() as session:
                repo = ExecutionRepository(session)
                if not await repo.beat(execution_id, self.owner, utcnow()):
                    execution = await self._load(session, execution_id)
                    if execution.cancel_mode == "immediate" or execution.owner != self.owner:
                        interrupt.set()
                await session.commit()

    @staticmethod
    async def _load(session: AsyncSession, execution_id: uuid.UUID) -> Execution:
        result = await session.execute(
            select(Execution)
            .where(Execution.id == execution_id)
            .execution_options(populate_existing=True)
        )
        return result.scalar_one()

    async def _drive(self, execution_id: uuid.UUID, interrupt: asyncio.Event) -> None:
        while (turn := await self._next_turn(execution_id)) is not None:
            gate = asyncio.Semaphore(turn.max_concurrency or len(turn.steps))
            # Under fail_fast, the first failure stops the turn's other steps.
            abort = asyncio.Event()

            async def one(step: PlannedStep, turn: Turn = turn, gate: asyncio.Semaphore = gate,
                          abort: asyncio.Event = abort) -> None:  # fmt: skip
                async with gate:
                    failed = await self._run_one(execution_id, step, turn, interrupt, abort)
                if failed and turn.fail_fast:
                    abort.set()

            await asyncio.gather(*(one(step) for step in turn.steps))

    async def _next_turn(self, execution_id: uuid.UUID) -> Turn | None:
        """Decide and commit the next move; return the steps to run, or None at the end."""
        while True:
            async with self.db.session() as session:
                repo = ExecutionRepository(session)
                execution = await self._load(session, execution_id)
                if execution.owner != self.owner or execution.status != "running":
                    return None
                steps = {s.step_key: s for s in await repo.steps(execution_id)}
                context = {
                    k: e.value for k, e in (await repo.context_current(execution_id)).items()
                }
                if execution.cancel_mode is not None:
                    await self._finish(
                        session, execution, steps, ExecutionStatus.cancelled, "cancelled"
                    )
                    return None
                breach = budget_breach(execution)
                if breach is not None:
                    await self._finish(session, execution, steps, *breach)
                    return None
                workflow = WorkflowDefinition.model_validate(execution.workflow)
                states = {
                    key: StepState(StepStatus(s.status), s.output, s.error)
                    for key, s in steps.items()
                }
                try:
                    decision = decide(
                        workflow,
                        states,
                        prompt=execution.prompt,
                        context=context,
                        variables=execution.variables,
                    )
                except StepInputError as exc:
                    await self._fail_step(session, execution_id, steps[exc.step_key], str(exc))
                    continue
                if decision.finish is not None:
                    await self._finish(
                        session,
                        execution,
                        steps,
                        decision.finish,
                        decision.finish.value,
                        result=decision.result,
                        error=decision.error,
                    )
                    return None
                if decision.skip:
                    events = []
                    for key in decision.skip:
                        steps[key].status = StepStatus.skipped.value
                        steps[key].finished_at = utcnow()
                        events.append(
                            ("step_skipped", {"step": key, "reason": "condition is false"})
                        )
                    await repo.append_events(execution_id, events)
                    await session.commit()
                    self.hub.notify(execution_id)
                    continue
                if not decision.run:
                    await self._finish(
                        session, execution, steps, ExecutionStatus.failed, "failed",
                        error="the workflow made no progress",
                    )  # fmt: skip
                    return None
                agent_ids = {uuid.UUID(p.agent_id) for p in decision.run}
                agents = {
                    str(a.id): a
                    for a in await session.scalars(select(Agent).where(Agent.id.in_(agent_ids)))
                }
                key_ids = {a.provider_key_id for a in agents.values() if a.provider_key_id}
                keys = (
                    {
                        k.id: k
                        for k in await session.scalars(
                            select(ProviderKey).where(ProviderKey.id.in_(key_ids))
                        )
                    }
                    if key_ids
                    else {}
                )
                return Turn(
                    steps=decision.run,
                    agents=agents,
                    keys=keys,
                    context=context,
                    variables=dict(execution.variables),
                    max_concurrency=workflow.max_concurrency,
                    fail_fast=workflow.strategy == "parallel"
                    and workflow.failure_policy == "fail_fast",
                )

    async def _run_one(
        self,
        execution_id: uuid.UUID,
        step: PlannedStep,
        turn: Turn,
        interrupt: asyncio.Event,
        abort: asyncio.Event,
    ) -> bool:
        """Start and run one step; return whether it failed."""
        if interrupt.is_set() or abort.is_set():
            return False
        started, seconds = await self._start_step(execution_id, step)
        if not started:
            return False
        agent = turn.agents.get(step.agent_id)
        if agent is None:
            await self._commit_step(execution_id, step.key, error="the agent no longer exists")
            return True
        key = turn.keys.get(agent.provider_key_id) if agent.provider_key_id else None
        call = asyncio.ensure_future(
            self.caller.call(
                agent, key, step_input=step.input, context=turn.context, variables=turn.variables
            )
        )
        try:
            outcome = await self._race(call, interrupt, abort, seconds)
        except StepInterrupted as stop:
            await self._commit_step(execution_id, step.key, interrupted=stop.reason)
        except ProviderError as exc:
            await self._commit_step(
                execution_id, step.key, error=f"{exc.kind}: {exc.message}", failure=exc.to_dict()
            )
            return True
        else:
            await self._commit_step(execution_id, step.key, outcome=outcome)
        return False

    async def _start_step(
        self, execution_id: uuid.UUID, step: PlannedStep
    ) -> tuple[bool, float | None]:
        """Mark the step running unless a cancel has been committed or the budget is spent
        (the guard that keeps any step from starting once a cancel has returned); return
        whether it started and the seconds its time budget leaves."""
        async with self.db.session() as session:
            repo = ExecutionRepository(session)
            if not await repo.beat(execution_id, self.owner, utcnow()):
                await session.rollback()
                return False, None
            execution = await self._load(session, execution_id)
            if budget_breach(execution):
                await session.rollback()  # the next turn ends the execution
                return False, None
            seconds = seconds_left(execution)
            await session.execute(
                update(ExecutionStep)
                .where(
                    ExecutionStep.execution_id == execution_id,
                    ExecutionStep.step_key == step.key,
                )
                .values(
                    status=StepStatus.running.value,
                    input=step.input,
                    attempts=ExecutionStep.attempts + 1,
                    started_at=utcnow(),
                )
            )
            await repo.append_events(
                execution_id, [("step_started", {"step": step.key, "agent_id": step.agent_id})]
            )
            await session.commit()
        self.hub.notify(execution_id)
        return True, seconds

    @staticmethod
    async def _race(
        call: asyncio.Future[AgentOutcome],
        interrupt: asyncio.Event,
        abort: asyncio.Event,
        seconds: float | None,
    ) -> AgentOutcome:
        stops = [asyncio.ensure_future(interrupt.wait()), asyncio.ensure_future(abort.wait())]
        try:
            done, _ = await asyncio.wait(
                {call, *stops}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for stop in stops:
                stop.cancel()
        if call in done:
            return call.result()
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await call
        if interrupt.is_set():
            raise StepInterrupted("cancelled")
        raise StepInterrupted("another step failed" if abort.is_set() else "timed_out")

    async def _commit_step(
        self,
        execution_id: uuid.UUID,
        step_key: str,
        *,
        outcome: AgentOutcome | None = None,
        error: str | None = None,
        failure: dict[str, Any] | None = None,
        interrupted: str | None = None,
    ) -> None:
        """Commit one step's result with its context writes, ledger entry and events."""
        for attempt in range(_COMMIT_ATTEMPTS):
            try:
                async with self.db.session() as session:
                    await self._write_step(
                        session, execution_id, step_key, outcome, error, failure, interrupted
                    )
                    await session.commit()
                break
            except IntegrityError:
                if attempt == _COMMIT_ATTEMPTS - 1:
                    raise
        self.hub.notify(execution_id)

    async def _write_step(
        self,
        session: AsyncSession,
        execution_id: uuid.UUID,
        step_key: str,
        outcome: AgentOutcome | None,
        error: str | None,
        failure: dict[str, Any] | None,
        interrupted: str | None,
    ) -> None:
        tokens_in = outcome.input_tokens if outcome else 0
        tokens_out = outcome.output_tokens if outcome else 0
        cost = outcome.cost_usd if outcome else Decimal(0)
        # Updating the execution row first serialises concurrent step commits on it.
        await session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(
                input_tokens=Execution.input_tokens + tokens_in,
                output_tokens=Execution.output_tokens + tokens_out,
                cost_usd=Execution.cost_usd + cost,
            )
        )
        repo = ExecutionRepository(session)
        execution = await self._load(session, execution_id)
        step = (
            await session.scalars(
                select(ExecutionStep).where(
                    ExecutionStep.execution_id == execution_id, ExecutionStep.step_key == step_key
                )
            )
        ).one()
        step.finished_at = utcnow()
        events: list[tuple[str, dict[str, Any]]] = []
        if interrupted is not None:
            step.status = StepStatus.cancelled.value
            step.error = f"interrupted: {interrupted}"
            events.append(("step_cancelled", {"step": step_key, "reason": interrupted}))
        elif outcome is None:
            step.status = StepStatus.failed.value
            step.error = error
            events.append(
                ("step_failed", {"step": step_key, "error": failure or {"message": error}})
            )
        else:
            step.status = StepStatus.completed.value
            step.output = outcome.output
            step.input_tokens += tokens_in
            step.output_tokens += tokens_out
            step.cost_usd = Decimal(step.cost_usd) + cost
            events.append(("step_completed", {"step": step_key, "output": outcome.output}))
            current = await repo.context_current(execution_id) if outcome.context_writes else {}
            for key, value in outcome.context_writes.items():
                version = current[key].version + 1 if key in current else 1
                session.add(
                    ContextEntry(
                        execution_id=execution_id,
                        key=key,
                        version=version,
                        value=value,
                        step_key=step_key,
                        agent_id=step.agent_id,
                    )
                )
                events.append(
                    ("context_updated", {"key": key, "version": version, "step": step_key})
                )
            if outcome.is_model_call:
                session.add(
                    LedgerEntry(
                        account_id=execution.account_id,
                        execution_id=execution_id,
                        step_id=step.id,
                        team_id=execution.team_id,
                        agent_id=step.agent_id,
                        user_id=execution.created_by,
                        provider=outcome.provider,
                        model=outcome.model,
                        input_tokens=tokens_in,
                        output_tokens=tokens_out,
                        cost_usd=cost,
                        duration_ms=outcome.duration_ms,
                        paid_by=outcome.paid_by or "platform",
                    )
                )
                events.append(
                    (
                        "cost_updated",
                        {
                            "step": step_key,
                            "input_tokens": execution.input_tokens,
                            "output_tokens": execution.output_tokens,
                            "cost_usd": str(execution.cost_usd),
                        },
                    )
                )
        await repo.append_events(execution_id, events)

    async def _fail_step(
        self, session: AsyncSession, execution_id: uuid.UUID, step: ExecutionStep, error: str
    ) -> None:
        step.status = StepStatus.failed.value
        step.error = error
        step.finished_at = utcnow()
        await ExecutionRepository(session).append_events(
            execution_id, [("step_failed", {"step": step.step_key, "error": {"message": error}})]
        )
        await session.commit()
        self.hub.notify(execution_id)

    async def _finish(
        self,
        session: AsyncSession,
        execution: Execution,
        steps: Mapping[str, ExecutionStep],
        status: ExecutionStatus,
        reason: str,
        *,
        result: Any = None,
        error: str | None = None,
    ) -> None:
        now = utcnow()
        for step in steps.values():
            if step.status in (StepStatus.pending.value, StepStatus.running.value):
                step.status = StepStatus.cancelled.value
                step.finished_at = now
        execution.status = status.value
        execution.status_reason = reason
        execution.result = result
        execution.error = error
        execution.finished_at = now
        execution.owner = None
        repo = ExecutionRepository(session)
        await repo.release_slot(execution.account_id)
        await repo.append_events(
            execution.id,
            [(_FINISH_EVENTS[status], {"status": status.value, "reason": reason, "error": error})],
        )
        await session.commit()
        self.hub.notify(execution.id)
        log.info("execution_finished", execution_id=str(execution.id), status=status.value)
