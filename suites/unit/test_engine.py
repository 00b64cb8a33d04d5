"""The execution engine in-process, on SQLite and PostgreSQL, with builtin agents and a caller
that acts between steps: the cancel guard (a cancel committed while a step runs keeps every
later step from starting), an execution taken over by another process or deleted mid-step,
budgets checked before each start, results that land together committed together, and the
events' order and numbering."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update
from template_support import OwnerRecorder

from app.core.config import Settings, TemplateSettings
from app.core.crypto import SecretBox
from app.core.templates import TemplateRenderer
from app.db import migrate
from app.db.base import utcnow
from app.db.breaker import CircuitBreaker
from app.db.database import SQLAlchemyManager
from app.models import (
    Account,
    Agent,
    ContextEntry,
    Delivery,
    Execution,
    ExecutionEvent,
    ExecutionMessage,
    ExecutionStep,
    LedgerEntry,
    Role,
    Team,
    User,
    Webhook,
)
from app.repositories.executions import STEP_STATE_FIELDS, EngineRepository
from app.schemas.executions import ExecutionCreate
from app.services.engine import engine as engine_module
from app.services.engine.agent_calls import AgentCaller, AgentOutcome
from app.services.engine.engine import NOT_YET, CommitLanded, ExecutionEngine, stale_before
from app.services.engine.runner import InProcessRunner
from app.services.events import EventHub
from app.services.executions import ExecutionService
from app.services.principal import Principal
from app.services.providers.prices import PriceTable
from qa import services

pytestmark = pytest.mark.anyio

Hook = Callable[[str], Awaitable[None]]


class _NoDispatch:
    """Executions are driven by the test; a cancel from "another process" reaches no runner."""

    def submit(self, execution_id: uuid.UUID) -> None:
        pass

    def interrupt(self, execution_id: uuid.UUID) -> None:
        pass


class _Caller(AgentCaller):
    """The real caller, with a hook that runs inside each agent call (between a step's start
    and its result's commit), and optional token usage per call."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, SecretBox.from_settings(settings), PriceTable.load({}), None)  # type: ignore[arg-type]
        self.hook: Hook | None = None
        self.tokens: tuple[int, int] | None = None
        self.calls: list[str] = []

    async def call(self, agent: Agent, provider_key: Any, **kwargs: Any) -> AgentOutcome:
        self.calls.append(kwargs["step_input"])
        if self.hook is not None:
            await self.hook(agent.name)
        outcome = await super().call(agent, provider_key, **kwargs)
        if self.tokens is None:
            return outcome
        tokens_in, tokens_out = self.tokens
        return AgentOutcome(
            output=outcome.output,
            provider="openai",
            model="gpt-4o-mini",
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            cost_usd=Decimal("0.001"),
            duration_ms=1,
            paid_by="platform",
        )


@dataclass
class World:
    database: SQLAlchemyManager
    settings: Settings
    principal: Principal
    agents: list[Agent]
    caller: _Caller
    engine: ExecutionEngine

    async def team(
        self,
        strategy: str,
        size: int,
        steps: dict[int, dict[str, Any]] | None = None,
        **workflow: Any,
    ) -> uuid.UUID:
        """A team of the first ``size`` agents, step ``n`` with the fields ``steps[n]``."""
        extra = steps or {}
        async with self.database.session() as session:
            team = Team(
                account_id=self.principal.account_id,
                name=f"{strategy}-{uuid.uuid4().hex[:6]}",
                workflow_version=1,
                workflow={
                    "strategy": strategy,
                    "steps": [
                        {"id": f"s{n}", "agent_id": str(agent.id), **extra.get(n, {})}
                        for n, agent in enumerate(self.agents[:size])
                    ],
                    **workflow,
                },
            )
            session.add(team)
            await session.commit()
            return team.id

    async def start(self, team_id: uuid.UUID, **budget: Any) -> uuid.UUID:
        async with self.database.session() as session:
            execution = await ExecutionService(session, self.settings).create(
                self.principal,
                team_id,
                ExecutionCreate(prompt="go", budget=budget),
                _NoDispatch(),  # type: ignore[arg-type]
            )
            return execution.id

    async def cancel(self, execution_id: uuid.UUID, mode: str) -> None:
        """Cancel as the API does, from another process (no in-process interrupt)."""
        async with self.database.session() as session:
            await ExecutionService(session, self.settings).cancel(
                self.principal, execution_id, mode, _NoDispatch(), EventHub()
            )

    async def execute(self, statement: Any) -> None:
        async with self.database.session() as session:
            await session.execute(statement)
            await session.commit()

    async def state(
        self, execution_id: uuid.UUID
    ) -> tuple[Execution | None, dict[str, ExecutionStep], list[ExecutionEvent]]:
        async with self.database.session() as session:
            execution = await session.get(Execution, execution_id)
            steps = await session.scalars(
                select(ExecutionStep).where(ExecutionStep.execution_id == execution_id)
            )
            events = await session.scalars(
                select(ExecutionEvent)
                .where(ExecutionEvent.execution_id == execution_id)
                .order_by(ExecutionEvent.seq)
            )
            return execution, {s.step_key: s for s in steps}, list(events)


async def _seed(database: SQLAlchemyManager) -> tuple[Principal, list[Agent]]:
    async with database.session() as session:
        account = Account(name="engine", name_key="engine")
        session.add(account)
        await session.flush()
        user = User(account_id=account.id, email="e@example.com", password_hash="x", role="owner")
        agents = [
            Agent(account_id=account.id, name=f"a{n}", provider="builtin", model="echo")
            for n in range(10)
        ]
        session.add_all([user, *agents])
        await session.commit()
        return Principal(user.id, account.id, Role.owner), agents


@pytest.fixture(params=["sqlite", "postgresql"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    async with _world(request.param, tmp_path) as built:
        yield built


@pytest.fixture
async def postgresql_world(tmp_path: Path) -> AsyncIterator[World]:
    """A world on PostgreSQL only: for what happens between a read and a claim there (on
    SQLite the claim is one transaction, so nothing comes between its steps)."""
    async with _world("postgresql", tmp_path) as built:
        yield built


@contextlib.asynccontextmanager
async def _world(flavour: str, tmp_path: Path) -> AsyncIterator[World]:
    name = None
    if flavour == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    else:
        name = f"renum_engine_{uuid.uuid4().hex[:10]}"
        url = await asyncio.to_thread(services.create_postgres_database, name)
    settings = Settings(environment="test", database={"url": url})
    database = SQLAlchemyManager(settings.database)
    try:
        await migrate.upgrade(database.engine)
        principal, agents = await _seed(database)
        caller = _Caller(settings)
        engine = ExecutionEngine(database, settings.executions, caller, EventHub(), "this-process")
        try:
            yield World(database, settings, principal, agents, caller, engine)
        finally:
            await caller.templates.close()
    finally:
        await database.dispose()
        if name is not None:
            await asyncio.to_thread(services.drop_postgres_database, name)


def _types(events: list[ExecutionEvent]) -> list[str]:
    return [f"{e.type}:{e.data['step']}" if "step" in e.data else e.type for e in events]


def _numbered(events: list[ExecutionEvent]) -> bool:
    return [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_a_sequential_execution_commits_every_step_in_order(world: World) -> None:
    execution_id = await world.start(await world.team("sequential", 3))
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.result, execution.owner) == ("completed", "go", None)
    assert [steps[k].status for k in ("s0", "s1", "s2")] == ["completed"] * 3
    assert all(s.attempts == 1 and s.started_at and s.finished_at for s in steps.values())
    assert _types(events) == [
        "execution_started",
        "step_started:s0",
        "step_completed:s0",
        "step_started:s1",
        "step_completed:s1",
        "step_started:s2",
        "step_completed:s2",
        "execution_completed",
    ]
    assert _numbered(events)
    assert execution.last_event_seq == len(events)
    # The fence: the claim (with its first writes) and each step's commit moved it on once.
    assert execution.lease == 4


@pytest.mark.parametrize("mode", ["after_step", "immediate"])
async def test_a_cancel_committed_between_steps_keeps_the_next_step_from_starting(
    world: World, mode: str
) -> None:
    """The cancel is committed while s0 runs, by another process: s0's result is kept, and
    the transaction that would start s1 finds the cancel and ends the execution instead."""
    execution_id = await world.start(await world.team("sequential", 3))

    async def cancel_during(agent: str) -> None:
        if agent == "a0":
            await world.cancel(execution_id, mode)

    world.caller.hook = cancel_during
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.status_reason) == ("cancelled", "cancelled")
    assert execution.cancel_mode == mode
    assert steps["s0"].status == "completed"
    for key in ("s1", "s2"):
        assert steps[key].status == "cancelled"
        assert (steps[key].attempts, steps[key].started_at) == (0, None)
    assert world.caller.calls == ["go"], "no agent call after the cancel"
    assert _types(events) == [
        "execution_started",
        "step_started:s0",
        "step_completed:s0",
        "execution_cancelled",
    ]
    assert _numbered(events)


async def test_a_cancel_while_parallel_steps_wait_for_a_slot_starts_none_of_them(
    world: World,
) -> None:
    execution_id = await world.start(await world.team("parallel", 3, max_concurrency=1))

    async def cancel_during(agent: str) -> None:
        if agent == "a0":
            await world.cancel(execution_id, "after_step")

    world.caller.hook = cancel_during
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert execution.status == "cancelled"
    assert [steps[k].status for k in ("s0", "s1", "s2")] == ["completed", "cancelled", "cancelled"]
    assert len(world.caller.calls) == 1
    assert [e.type for e in events].count("step_started") == 1


async def test_parallel_results_that_land_together_are_committed_together(
    world: World,
) -> None:
    execution_id = await world.start(await world.team("parallel", 10))
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert execution.status == "completed"
    assert execution.result == {"outputs": {f"s{n}": "go" for n in range(10)}, "failed": []}
    assert {s.status for s in steps.values()} == {"completed"}
    types = _types(events)
    assert types[0] == "execution_started"
    assert types[-1] == "execution_completed"
    assert sorted(types[1:11]) == sorted(f"step_started:s{n}" for n in range(10))
    assert sorted(types[11:21]) == sorted(f"step_completed:s{n}" for n in range(10))
    assert _numbered(events)


async def test_writers_to_one_key_committed_together_get_every_version_once(
    world: World,
) -> None:
    await world.execute(update(Agent).values(parameters={"output_key": "shared"}))
    execution_id = await world.start(await world.team("parallel", 10))
    await world.engine.run(execution_id, asyncio.Event())

    execution, _, events = await world.state(execution_id)
    assert execution is not None
    assert execution.status == "completed"
    async with world.database.session() as session:
        entries = list(
            await session.scalars(
                select(ContextEntry)
                .where(ContextEntry.execution_id == execution_id)
                .order_by(ContextEntry.version)
            )
        )
    assert [e.version for e in entries] == list(range(1, 11))
    assert sorted(e.step_key for e in entries) == sorted(f"s{n}" for n in range(10))
    updates = [e.data for e in events if e.type == "context_updated"]
    assert sorted(u["version"] for u in updates) == list(range(1, 11))


async def test_an_execution_claimed_by_another_process_is_left_to_it(world: World) -> None:
    """Our heartbeat went stale and another process claimed the execution while s0 ran: the
    result is dropped (the new owner runs s0 again) and nothing more is written."""
    execution_id = await world.start(await world.team("sequential", 3))

    async def taken_over(agent: str) -> None:
        await world.execute(
            update(Execution).where(Execution.id == execution_id).values(owner="another-process")
        )

    world.caller.hook = taken_over
    interrupt = asyncio.Event()
    await world.engine.run(execution_id, interrupt)

    assert interrupt.is_set()
    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.owner) == ("running", "another-process")
    assert steps["s0"].status == "running"
    assert _types(events) == ["execution_started", "step_started:s0"]


async def test_an_execution_deleted_mid_step_ends_its_drive(world: World) -> None:
    execution_id = await world.start(await world.team("sequential", 2))

    async def deleted(agent: str) -> None:
        await world.execute(delete(Execution).where(Execution.id == execution_id))

    world.caller.hook = deleted
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, events = await world.state(execution_id)
    assert (execution, steps, events) == (None, {}, [])
    assert len(world.caller.calls) == 1


async def test_an_execution_is_claimed_once(world: World) -> None:
    execution_id = await world.start(await world.team("sequential", 1))
    await world.engine.run(execution_id, asyncio.Event())
    await world.engine.run(execution_id, asyncio.Event())  # already finished: not claimed
    assert len(world.caller.calls) == 1


async def test_the_token_budget_is_checked_before_each_step_starts(world: World) -> None:
    execution_id = await world.start(await world.team("sequential", 3), max_tokens=10)
    world.caller.tokens = (4, 2)  # 6 tokens a step: s1 may start (6 < 10), s2 may not (12)
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.status_reason) == ("cancelled", "budget_exceeded")
    assert (execution.input_tokens, execution.output_tokens) == (8, 4)
    assert [steps[k].status for k in ("s0", "s1", "s2")] == ["completed", "completed", "cancelled"]
    assert steps["s2"].started_at is None
    costs = [e.data for e in events if e.type == "cost_updated"]
    assert [(c["total_input_tokens"], c["total_output_tokens"]) for c in costs] == [(4, 2), (8, 4)]
    assert [(c["step_input_tokens"], c["step_output_tokens"]) for c in costs] == [(4, 2), (4, 2)]
    async with world.database.session() as session:
        ledger = list(
            await session.scalars(
                select(LedgerEntry).where(LedgerEntry.execution_id == execution_id)
            )
        )
    assert sorted(e.step_id for e in ledger) == sorted([steps["s0"].id, steps["s1"].id])
    assert _numbered(events)


async def test_a_budget_spent_by_parallel_steps_ends_the_execution_once_they_land(
    world: World,
) -> None:
    execution_id = await world.start(
        await world.team("parallel", 4, max_concurrency=2), max_tokens=5
    )
    world.caller.tokens = (3, 0)
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, _ = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.status_reason) == ("cancelled", "budget_exceeded")
    assert [steps[k].status for k in ("s0", "s1", "s2", "s3")] == [
        "completed",
        "completed",
        "cancelled",
        "cancelled",
    ]
    assert execution.input_tokens == 6
    assert len(world.caller.calls) == 2


async def test_an_execution_resumed_too_often_fails_as_abandoned(world: World) -> None:
    execution_id = await world.start(await world.team("sequential", 2))
    await world.execute(
        update(Execution)
        .where(Execution.id == execution_id)
        .values(status="running", owner="dead-process", heartbeat_at=None, resumed_count=3)
    )
    await world.execute(
        update(ExecutionStep)
        .where(ExecutionStep.execution_id == execution_id, ExecutionStep.step_key == "s0")
        .values(status="running", attempts=1)
    )
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.status_reason) == ("failed", "abandoned")
    assert execution.error == "the execution was abandoned 4 times"
    assert {s.status for s in steps.values()} == {"cancelled"}
    assert _types(events) == ["execution_failed"]
    assert world.caller.calls == []


async def test_a_resumed_execution_runs_its_interrupted_step_again(world: World) -> None:
    execution_id = await world.start(await world.team("sequential", 2))
    await world.execute(
        update(Execution)
        .where(Execution.id == execution_id)
        .values(status="running", owner="dead-process", heartbeat_at=None, last_event_seq=0)
    )
    await world.execute(
        update(ExecutionStep)
        .where(ExecutionStep.execution_id == execution_id, ExecutionStep.step_key == "s0")
        .values(status="running", attempts=1)
    )
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert execution.status == "completed"
    assert execution.resumed_count == 1
    assert (steps["s0"].attempts, steps["s1"].attempts) == (2, 1)
    assert _types(events)[:2] == ["execution_resumed", "step_started:s0"]
    assert _numbered(events)


async def test_a_resumed_execution_reads_the_messages_committed_before(world: World) -> None:
    """Messages live in memory while an execution runs; a resumption reads them back, times
    out the requests whose deadline passed meanwhile, and answers the others."""
    execution_id = await world.start(await world.team("sequential", 2))
    asker, answerer = world.agents[0], world.agents[1]
    await world.execute(
        update(Agent)
        .where(Agent.id == answerer.id)
        .values(
            model="template",
            parameters={
                "template": "{% for m in inbox %}{{ m.correlation_id }}={{ m.status }};"
                "{% if m.status == 'pending' %}{{ reply(m, 'yes') }}{% endif %}{% endfor %}"
            },
        )
    )
    await world.execute(
        update(Execution)
        .where(Execution.id == execution_id)
        .values(status="running", owner="dead-process", heartbeat_at=None, last_event_seq=0)
    )
    await world.execute(
        update(ExecutionStep)
        .where(ExecutionStep.execution_id == execution_id, ExecutionStep.step_key == "s0")
        .values(status="completed", output="asked", attempts=1)
    )
    now = utcnow()
    for seq, (correlation_id, expires_in) in enumerate((("old", -5), ("fresh", 600)), 1):
        await world.execute(
            insert(ExecutionMessage).values(
                id=uuid.uuid4(),
                execution_id=execution_id,
                seq=seq,
                kind="request",
                status="pending",
                sender_agent_id=asker.id,
                sender_step="s0",
                recipient_agent_id=answerer.id,
                correlation_id=correlation_id,
                body="?",
                expires_at=now + timedelta(seconds=expires_in),
                created_at=now,
            )
        )
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert execution.status == "completed"
    assert steps["s1"].output == "old=timed_out;fresh=pending;"
    async with world.database.session() as session:
        rows = await session.scalars(
            select(ExecutionMessage)
            .where(ExecutionMessage.execution_id == execution_id)
            .order_by(ExecutionMessage.seq)
        )
        statuses = [(m.seq, m.kind, m.correlation_id, m.status) for m in rows]
    assert statuses == [
        (1, "request", "old", "timed_out"),
        (2, "request", "fresh", "answered"),
        (3, "response", "fresh", "delivered"),
    ]
    assert _types(events) == [
        "execution_resumed",
        "message_timed_out",
        "step_started:s1",
        "step_completed:s1",
        "message",
        "execution_completed",
    ]
    assert _numbered(events)


async def test_the_heartbeat_goes_on_while_a_step_finishes_after_an_after_step_cancel(
    world: World,
) -> None:
    """A step running past an `after_step` cancel keeps its execution owned (the reaper must
    not take it over), and its result is kept."""
    fast = world.settings.executions.model_copy(update={"heartbeat_seconds": 0.05})
    engine = ExecutionEngine(world.database, fast, world.caller, EventHub(), "this-process")
    execution_id = await world.start(await world.team("sequential", 2))
    beats = []

    async def long_step(agent: str) -> None:
        await world.cancel(execution_id, "after_step")
        for _ in range(2):
            await asyncio.sleep(0.5)
            execution, _, _ = await world.state(execution_id)
            assert execution is not None
            beats.append(execution.heartbeat_at)

    world.caller.hook = long_step
    await engine.run(execution_id, asyncio.Event())

    execution, steps, _ = await world.state(execution_id)
    assert execution is not None
    assert execution.status == "cancelled"
    assert (steps["s0"].status, steps["s1"].status) == ("completed", "cancelled")
    assert beats[0] is not None
    assert beats[1] > beats[0]


async def test_a_cancel_committed_before_a_resumption_ends_it(world: World) -> None:
    execution_id = await world.start(await world.team("sequential", 2))
    await world.execute(
        update(Execution)
        .where(Execution.id == execution_id)
        .values(status="running", owner="dead-process", heartbeat_at=None, cancel_mode="after_step")
    )
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.status_reason) == ("cancelled", "cancelled")
    assert {s.status for s in steps.values()} == {"cancelled"}
    assert _types(events) == ["execution_resumed", "execution_cancelled"]
    assert world.caller.calls == []


async def test_an_immediate_cancel_in_this_process_abandons_the_running_step(
    world: World,
) -> None:
    execution_id = await world.start(await world.team("sequential", 2))
    interrupt = asyncio.Event()

    async def interrupted(agent: str) -> None:
        await world.cancel(execution_id, "immediate")
        interrupt.set()  # what the runner does for a cancel through this process
        await asyncio.sleep(10)  # a slow call, abandoned

    world.caller.hook = interrupted
    await asyncio.wait_for(world.engine.run(execution_id, interrupt), timeout=5)

    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert execution.status == "cancelled"
    assert steps["s0"].status == "cancelled"
    assert steps["s0"].error == "interrupted: cancelled"
    assert steps["s1"].started_at is None
    assert _types(events) == [
        "execution_started",
        "step_started:s0",
        "step_cancelled:s0",
        "execution_cancelled",
    ]


async def test_a_cancel_found_while_other_steps_run_waits_for_them_to_land(
    world: World,
) -> None:
    """s0 lands after the cancel while s1 still runs: s0's result is kept, s2 never starts,
    and the execution ends once s1 has landed too."""
    execution_id = await world.start(await world.team("parallel", 3, max_concurrency=2))

    async def s0_landed() -> None:
        with world.engine.hub.listening(execution_id) as news:
            while (await world.state(execution_id))[1]["s0"].status != "completed":
                await news.wait()
                news.clear()

    async def hook(agent: str) -> None:
        if agent == "a0":
            await world.cancel(execution_id, "after_step")
        else:
            await asyncio.wait_for(s0_landed(), timeout=10)

    world.caller.hook = hook
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert execution.status == "cancelled"
    assert [steps[k].status for k in ("s0", "s1", "s2")] == ["completed", "completed", "cancelled"]
    assert steps["s2"].started_at is None
    assert _types(events)[-3:] == ["step_completed:s0", "step_completed:s1", "execution_cancelled"]
    assert _numbered(events)


async def test_under_fail_fast_a_failure_interrupts_the_other_steps(world: World) -> None:
    await world.execute(
        update(Agent)
        .where(Agent.id == world.agents[0].id)
        .values(model="template", parameters={"template": "{{ undefined_name }}"})
    )
    execution_id = await world.start(await world.team("parallel", 3, failure_policy="fail_fast"))

    async def slow_others(agent: str) -> None:
        if agent != "a0":
            await asyncio.sleep(10)

    world.caller.hook = slow_others
    await asyncio.wait_for(world.engine.run(execution_id, asyncio.Event()), timeout=5)

    execution, steps, _ = await world.state(execution_id)
    assert execution is not None
    assert execution.status == "failed"
    assert execution.error is not None
    assert execution.error.startswith("step 's0' failed")
    assert steps["s0"].status == "failed"
    for key in ("s1", "s2"):
        assert steps[key].status == "cancelled"
        assert steps[key].error == "interrupted: another step failed"


async def test_a_step_whose_agent_is_gone_fails(world: World) -> None:
    execution_id = await world.start(await world.team("sequential", 2))
    await world.execute(delete(Agent).where(Agent.id == world.agents[1].id))
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, _ = await world.state(execution_id)
    assert execution is not None
    assert execution.status == "failed"
    assert steps["s0"].status == "completed"
    assert steps["s1"].status == "failed"
    assert steps["s1"].error == "the agent no longer exists"
    assert len(world.caller.calls) == 1


async def test_an_immediate_cancel_landing_just_after_a_start_keeps_the_agent_from_running(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel commits and interrupts this process right after the transaction that started
    s0, before s0's agent is called: s0 is recorded as interrupted without a call."""
    execution_id = await world.start(await world.team("sequential", 2))
    interrupt = asyncio.Event()
    run_transaction = world.database.run_transaction

    async def then_cancel(work: Any, **options: Any) -> Any:
        result = await run_transaction(work, **options)
        if not interrupt.is_set():
            await world.cancel(execution_id, "immediate")
            interrupt.set()  # what the runner does for a cancel through this process
        return result

    monkeypatch.setattr(world.database, "run_transaction", then_cancel)
    await world.engine.run(execution_id, interrupt)

    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert execution.status == "cancelled"
    assert steps["s0"].error == "interrupted: cancelled"
    assert steps["s1"].started_at is None
    assert world.caller.calls == []
    assert _types(events) == [
        "execution_started",
        "step_started:s0",
        "step_cancelled:s0",
        "execution_cancelled",
    ]


async def test_a_step_past_the_time_budget_is_stopped_and_the_execution_times_out(
    world: World,
) -> None:
    execution_id = await world.start(await world.team("sequential", 2), max_seconds=0.5)

    async def slow(agent: str) -> None:
        await asyncio.sleep(10)

    world.caller.hook = slow
    await asyncio.wait_for(world.engine.run(execution_id, asyncio.Event()), timeout=5)

    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.status_reason) == ("timed_out", "timed_out")
    assert steps["s0"].error == "interrupted: timed_out"
    assert steps["s1"].started_at is None
    assert _types(events)[-2:] == ["step_cancelled:s0", "execution_cancelled"]


async def test_an_unexpected_agent_error_leaves_the_execution_to_the_reaper(
    world: World,
) -> None:
    """Not a provider's error (those fail the step): the drive stops, the execution stays
    claimed and running, and the reaper resumes it once the heartbeat is stale."""
    execution_id = await world.start(await world.team("sequential", 2))

    async def broken(agent: str) -> None:
        raise TimeoutError("a bug, not a budget")

    world.caller.hook = broken
    with pytest.raises(TimeoutError, match="a bug"):
        await world.engine.run(execution_id, asyncio.Event())

    execution, steps, _ = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.owner) == ("running", "this-process")
    assert steps["s0"].status == "running"


async def test_a_drive_cancelled_with_its_process_leaves_steps_to_run_again(
    world: World,
) -> None:
    execution_id = await world.start(await world.team("parallel", 2))
    started = asyncio.Event()

    async def hang(agent: str) -> None:
        started.set()
        await asyncio.sleep(10)

    world.caller.hook = hang
    drive = asyncio.create_task(world.engine.run(execution_id, asyncio.Event()))
    await asyncio.wait_for(started.wait(), timeout=5)
    drive.cancel()
    with pytest.raises(asyncio.CancelledError):
        await drive

    execution, steps, _ = await world.state(execution_id)
    assert execution is not None
    assert execution.status == "running"
    assert {s.status for s in steps.values()} == {"running"}


async def test_a_skip_is_decided_with_the_result_and_an_input_template_fails_its_step(
    world: World,
) -> None:
    """After s0, s1's guard is false: skipped in the transaction that commits s0's result,
    which also starts s2. s2's input template renders when s2 runs (outside any transaction)
    and fails: s2 fails with the reason, its agent is never called, the execution fails."""
    team = await world.team(
        "conditional",
        3,
        steps={
            1: {"when": {"path": "missing", "op": "exists"}},
            2: {"input_template": "{{ undefined_name }}"},
        },
    )
    execution_id = await world.start(team)
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert execution.status == "failed"
    assert [steps[k].status for k in ("s0", "s1", "s2")] == ["completed", "skipped", "failed"]
    assert steps["s2"].error == (
        "step 's2': input template failed: template error: 'undefined_name' is undefined"
    )
    assert execution.error == f"step 's2' failed: {steps['s2'].error}"
    assert _types(events) == [
        "execution_started",
        "step_started:s0",
        "step_completed:s0",
        "step_skipped:s1",
        "step_started:s2",
        "step_failed:s2",
        "execution_failed",
    ]
    assert events[-2].data["error"] == {"message": steps["s2"].error}
    assert len(world.caller.calls) == 1


async def test_an_input_template_renders_when_its_step_runs(world: World) -> None:
    """It sees the context as its step starts (s0's write included), and the step's stored
    input is the rendered one."""
    await world.execute(
        update(Agent)
        .where(Agent.id == world.agents[0].id)
        .values(model="template", parameters={"template": "{{ remember('k', 'v') }}out"})
    )
    team = await world.team(
        "pipeline", 2, steps={1: {"input_template": "{{ input }}+{{ context.k }}+{{ prompt }}"}}
    )
    execution_id = await world.start(team)
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, _ = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.result) == ("completed", "out+v+go")
    assert (steps["s0"].input, steps["s1"].input) == ("go", "out+v+go")
    assert world.caller.calls == ["go", "out+v+go"]


async def test_an_input_template_renders_as_its_account(world: World) -> None:
    """Renders are shared fairly among accounts: an input template's render names the
    execution's account, like a template agent's."""
    recorder = OwnerRecorder()
    world.caller.templates = recorder
    team = await world.team("pipeline", 2, steps={1: {"input_template": "{{ input }}!"}})
    execution_id = await world.start(team)
    await world.engine.run(execution_id, asyncio.Event())
    assert recorder.renders == [("{{ input }}!", world.principal.account_id)]


async def test_a_hostile_input_template_fails_its_step_and_frees_the_account(
    world: World,
) -> None:
    """range(10**9) once escaped the template error handling inside the claim's transaction,
    leaving the execution pending and its account's slot taken: now its step fails."""
    team = await world.team(
        "sequential", 2, steps={1: {"input_template": "{{ range(10**9) | list }}"}}
    )
    execution_id = await world.start(team)
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, _ = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.owner) == ("failed", None)
    assert steps["s1"].status == "failed"
    assert steps["s1"].error is not None
    assert "template stopped: more than 100000 iterations" in steps["s1"].error
    again = await world.start(team)  # the account's slot was released
    await world.engine.run(again, asyncio.Event())
    execution, _, _ = await world.state(again)
    assert execution is not None
    assert execution.status == "failed"


async def test_the_time_budget_bounds_an_input_template(world: World) -> None:
    """A render slower than what the execution's time budget leaves is stopped with the step
    (its worker killed), and the execution times out."""
    slow = TemplateRenderer(TemplateSettings(timeout_seconds=30, max_iterations=10**8))
    await world.caller.templates.close()
    world.caller.templates = slow
    loops = "{% for i in range(10**5) %}{% for j in range(10**5) %}{% endfor %}{% endfor %}"
    team = await world.team("sequential", 2, steps={0: {"input_template": loops}})
    execution_id = await world.start(team, max_seconds=0.5)
    await asyncio.wait_for(world.engine.run(execution_id, asyncio.Event()), timeout=10)

    execution, steps, _ = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.status_reason) == ("timed_out", "timed_out")
    assert steps["s0"].error == "interrupted: timed_out"
    assert world.caller.calls == []
    assert slow.pids == [], "the busy worker was killed"


async def test_a_budget_spent_while_a_step_runs_waits_for_it_then_ends(world: World) -> None:
    execution_id = await world.start(
        await world.team("parallel", 4, max_concurrency=2), max_tokens=5
    )
    world.caller.tokens = (3, 0)

    async def slow_a1(agent: str) -> None:
        if agent == "a1":
            await asyncio.sleep(0.3)

    world.caller.hook = slow_a1
    await world.engine.run(execution_id, asyncio.Event())

    # s0 lands (3 tokens) and frees a slot for s2, which lands too (6): the budget is spent
    # while s1 still runs, so nothing more starts and the end waits for s1.
    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.status_reason) == ("cancelled", "budget_exceeded")
    assert [steps[k].status for k in ("s0", "s1", "s2", "s3")] == [
        "completed",
        "completed",
        "completed",
        "cancelled",
    ]
    assert execution.input_tokens == 9
    assert _types(events)[-2:] == ["cost_updated:s1", "execution_cancelled"]


async def test_a_stopped_runner_releases_its_executions_to_another_process_at_once(
    world: World,
) -> None:
    """On shutdown the runner cancels the drive mid-step and clears owner and heartbeat: a
    process with a long staleness window claims the execution at once and runs the
    interrupted step again. Executions submitted after the stop stay pending."""
    execution_id = await world.start(await world.team("sequential", 2))
    entered, never = asyncio.Event(), asyncio.Event()

    async def hang(agent: str) -> None:
        entered.set()
        await never.wait()

    world.caller.hook = hang
    runner = InProcessRunner(world.engine, world.database, world.settings.executions)
    runner.submit(execution_id)
    await asyncio.wait_for(entered.wait(), 30)
    execution, _, _ = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.owner) == ("running", "this-process")

    await asyncio.gather(runner.stop(), runner.stop(), runner.stop())
    execution, steps, _ = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.owner, execution.heartbeat_at) == ("running", None, None)
    assert steps["s0"].status == "running"  # nothing of the cancelled drive was committed

    later = await world.start(await world.team("sequential", 1))
    runner.submit(later)
    execution, _, _ = await world.state(later)
    assert execution is not None
    assert execution.status == "pending"

    world.caller.hook = None
    patient = world.settings.executions.model_copy(update={"stale_after_seconds": 86_400})
    other = ExecutionEngine(world.database, patient, world.caller, EventHub(), "next-process")
    await other.run(execution_id, asyncio.Event())
    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.resumed_count) == ("completed", 1)
    assert "execution_resumed" in _types(events)


async def test_a_commit_that_landed_unanswered_is_released_and_driven_again(
    world: World,
) -> None:
    """The lease moved on by exactly one commit while s0 ran, under our own name: a commit of
    ours landed although its answer was lost. The drive does not apply it again; it releases
    the execution, and driving it again from the committed state completes it."""
    execution_id = await world.start(await world.team("sequential", 2))

    async def landed(agent: str) -> None:
        if len(world.caller.calls) == 1:
            await world.execute(
                update(Execution)
                .where(Execution.id == execution_id)
                .values(lease=Execution.lease + 1)
            )

    world.caller.hook = landed
    with pytest.raises(CommitLanded):
        await world.engine.run(execution_id, asyncio.Event())
    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.owner, execution.heartbeat_at) == ("running", None, None)
    assert steps["s0"].status == "running"  # the "landed" commit is the test's stand-in

    world.caller.hook = None
    await world.engine.run(execution_id, asyncio.Event())
    execution, _, events = await world.state(execution_id)
    assert execution is not None
    assert execution.status == "completed"
    assert _numbered(events)
    assert "execution_resumed" in _types(events)


async def test_a_lease_taken_by_a_newer_claim_of_the_same_process_changes_nothing(
    world: World,
) -> None:
    """Same owner name, newer generation (a claim made since): the older drive is fenced."""
    execution_id = await world.start(await world.team("sequential", 2))

    async def reclaimed(agent: str) -> None:
        await world.execute(
            update(Execution).where(Execution.id == execution_id).values(lease=Execution.lease + 2)
        )

    world.caller.hook = reclaimed
    interrupt = asyncio.Event()
    await world.engine.run(execution_id, interrupt)
    assert interrupt.is_set()
    _, steps, events = await world.state(execution_id)
    assert steps["s0"].status == "running"
    assert _types(events) == ["execution_started", "step_started:s0"]


async def test_a_drive_pauses_while_the_database_is_away_and_goes_on_after(world: World) -> None:
    """The breaker opens while s0 runs: its commit waits, the heartbeat keeps trying, and once
    the database is back the same drive commits s0's result and finishes, with no resume."""
    breaker = CircuitBreaker(1, retry_after=lambda: 1)
    world.database.attach_breaker(breaker)
    execution_id = await world.start(await world.team("sequential", 2))
    closed: list[asyncio.Task[None]] = []

    async def close_later() -> None:
        await asyncio.sleep(0.3)
        breaker.close()

    async def outage(agent: str) -> None:
        if agent == "a0":
            breaker.open("test outage")
            closed.append(asyncio.create_task(close_later()))

    world.caller.hook = outage
    try:
        await world.engine.run(execution_id, asyncio.Event())
    finally:
        world.database.attach_breaker(None)
    await asyncio.gather(*closed)
    execution, _, events = await world.state(execution_id)
    assert execution is not None
    assert execution.status == "completed"
    assert len(world.caller.calls) == 2  # s0 was not run again
    assert breaker.refused >= 1
    assert _numbered(events)
    assert "execution_resumed" not in _types(events)


async def _deliveries(world: World) -> list[tuple[str, uuid.UUID | None]]:
    async with world.database.session() as session:
        rows = await session.execute(select(Delivery.event, Delivery.webhook_id))
        return [(event, webhook_id) for event, webhook_id in rows]


async def test_an_end_queues_its_webhooks_in_the_commit_that_ends_it(world: World) -> None:
    """An account without webhooks gets no delivery; one with an enabled webhook subscribed to
    the end gets one, committed with the end (on PostgreSQL an end is one statement only when
    its account has no webhook: refused otherwise, it is written again in a transaction)."""
    quiet = await world.start(await world.team("sequential", 2))
    await world.engine.run(quiet, asyncio.Event())
    assert await _deliveries(world) == []

    async with world.database.session() as session:
        hook = Webhook(
            account_id=world.principal.account_id,
            url="https://hooks.example.com/renum",
            events=["execution.completed"],
            sealed_secret="sealed",
            encryption_key_id="test",
        )
        session.add(hook)
        await session.commit()
    execution_id = await world.start(await world.team("sequential", 2))
    await world.engine.run(execution_id, asyncio.Event())

    execution, _, events = await world.state(execution_id)
    assert execution is not None
    assert execution.status == "completed"
    assert _numbered(events)
    assert await _deliveries(world) == [("execution.completed", hook.id)]


async def test_a_cancel_between_the_read_and_the_claim_ends_the_execution_at_its_claim(
    postgresql_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the execution is read, then claimed with its first writes in one
    statement, guarded by no cancel since: a cancel committed in between refuses that
    statement, and the claim made in a transaction instead ends the execution, cancelled."""
    world = postgresql_world
    execution_id = await world.start(await world.team("sequential", 2))
    read = engine_module.read

    def read_then_cancel(conn: Any, execution: uuid.UUID) -> Any:
        found = read(conn, execution)
        conn.execute(  # commits at once: each statement does here
            update(Execution).where(Execution.id == execution).values(cancel_mode="after_step")
        )
        return found

    monkeypatch.setattr(engine_module, "read", read_then_cancel)
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.status_reason) == ("cancelled", "cancelled")
    assert {s.status for s in steps.values()} == {"cancelled"}
    assert world.caller.calls == []
    assert _types(events) == ["execution_started", "execution_cancelled"]
    assert _numbered(events)


async def test_a_claim_by_another_process_between_the_read_and_the_claim_wins(
    postgresql_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process claims the execution after this one read it: the lease read no longer
    holds, nothing of this process's claim is written, and the claim in a transaction finds
    the execution owned, so this process leaves it alone."""
    world = postgresql_world
    execution_id = await world.start(await world.team("sequential", 2))
    read = engine_module.read

    def read_then_taken(conn: Any, execution: uuid.UUID) -> Any:
        found = read(conn, execution)
        conn.execute(
            update(Execution)
            .where(Execution.id == execution)
            .values(
                status="running",
                owner="another-process",
                heartbeat_at=utcnow(),
                lease=Execution.lease + 1,
            )
        )
        return found

    monkeypatch.setattr(engine_module, "read", read_then_taken)
    await world.engine.run(execution_id, asyncio.Event())

    execution, steps, events = await world.state(execution_id)
    assert execution is not None
    assert (execution.status, execution.owner) == ("running", "another-process")
    assert {s.status for s in steps.values()} == {"pending"}
    assert events == []
    assert world.caller.calls == []


def test_staleness_is_counted_from_the_database_s_return() -> None:
    class Database:
        breaker: CircuitBreaker | None = None

    database = Database()
    start = utcnow()
    wall = [start]
    assert stale_before(database, start, 30) == start - timedelta(seconds=30)  # type: ignore[arg-type]
    breaker = CircuitBreaker(1, retry_after=lambda: 1, wall=lambda: wall[0])
    database.breaker = breaker

    def at(seconds: float) -> datetime:
        wall[0] = start + timedelta(seconds=seconds)
        return wall[0]

    def cutoff_at(seconds: float) -> datetime:
        return stale_before(database, at(seconds), 30)  # type: ignore[arg-type]

    # A process takes nothing over before it has seen the database answer for stale_after.
    assert cutoff_at(0) == NOT_YET
    breaker.answered()  # the first answer, at 0 s
    assert cutoff_at(29) == NOT_YET
    assert cutoff_at(30) == start
    at(40)
    breaker.answered()  # the last answer before the outage
    at(45)
    breaker.open("a test")  # noticed at 45 s: the outage began at the last answer
    protected = start + timedelta(seconds=40 - 30)  # heartbeats older than the outage by 30 s
    assert cutoff_at(140) == protected  # still away
    breaker.answered()
    breaker.close()  # back at 140 s
    assert cutoff_at(150) == protected  # back for less than stale_after
    assert cutoff_at(170) == start + timedelta(seconds=140)  # back for 30 s: the usual cut-off
    breaker.answered()  # the probes go on answering (the last at 170 s)
    at(171)
    breaker.open("again")  # a new outage, 30 s after the first ended: a separate one
    breaker.close()
    assert cutoff_at(180) == start + timedelta(seconds=170 - 30)  # only the new one counts


def test_outages_closer_than_the_grace_count_as_one() -> None:
    start = utcnow()
    wall = [start]
    breaker = CircuitBreaker(1, retry_after=lambda: 1, wall=lambda: wall[0])
    grace = timedelta(seconds=30)

    def at(seconds: float) -> datetime:
        wall[0] = start + timedelta(seconds=seconds)
        return wall[0]

    assert breaker.unreachable_since(at(0), grace) is None
    at(0)
    breaker.answered()
    at(2)
    breaker.open("first")  # began at the answer, 0 s
    at(60)
    breaker.answered()
    breaker.close()
    at(65)  # 5 s later, before any owner had its 30 s: away again
    breaker.answered()
    breaker.open("second")
    assert breaker.unreachable_since(at(70), grace) == start  # the first's beginning
    at(80)
    breaker.close()
    assert breaker.unreachable_since(at(100), grace) == start
    assert breaker.unreachable_since(at(110), grace) is None  # back for 30 s
    # Without any answer before it (started during the outage): from when it was noticed.
    fresh = CircuitBreaker(1, retry_after=lambda: 1, wall=lambda: wall[0])
    at(200)
    fresh.open("at start-up")
    assert fresh.unreachable_since(at(210), grace) == start + timedelta(seconds=200)


def test_a_long_run_of_short_outages_keeps_its_beginning() -> None:
    """Beyond the outages remembered, the oldest merge: the run's beginning stays."""
    start = utcnow()
    wall = [start]
    breaker = CircuitBreaker(1, retry_after=lambda: 1, wall=lambda: wall[0])
    for index in range(40):  # away 1 s, back 1 s, forty times
        wall[0] = start + timedelta(seconds=2 * index)
        breaker.answered()
        breaker.open("flapping")
        wall[0] += timedelta(seconds=1)
        breaker.close()
    assert len(breaker.recent) == 16
    now = start + timedelta(seconds=85)
    assert breaker.unreachable_since(now, timedelta(seconds=30)) == start


async def test_a_step_row_of_another_execution_is_never_written(world: World) -> None:
    """The engine writes steps by id, always within its own execution: a row naming another
    execution's step changes nothing there."""
    mine = await world.start(await world.team("sequential", 2))
    other = await world.start(await world.team("sequential", 2))
    _, other_steps, _ = await world.state(other)
    target = other_steps["s0"]
    row = {name: getattr(target, name) for name in STEP_STATE_FIELDS}
    row.update(step_id=target.id, status="completed", output="written by another execution")

    await world.database.run_transaction(
        lambda conn: EngineRepository(conn).write_steps(mine, [row])
    )

    _, after, _ = await world.state(other)
    assert (after["s0"].status, after["s0"].output) == (target.status, target.output)
