"""Orchestration overhead of the engine with instant builtin agents, every step durably
persisted, for a 3-agent sequential team and a 10-agent parallel team, on SQLite and
PostgreSQL:

- ``test_step_overhead``: the engine alone driving an execution from claim to end (the
  execution is created before each round, outside the timing); milliseconds per step.
- ``test_execution_throughput``: an execution end to end in-process (created as the API
  creates it, driven, read back); executions per second.

`nox -s performance` compares each run with the previous saved one and fails when a median
regresses by more than the threshold the session states.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from bench_support import Bench

from app.models import Execution, ExecutionStatus
from app.schemas.executions import ExecutionCreate
from app.services.executions import ExecutionService

TEAMS = [("sequential-3", 3), ("parallel-10", 10)]


class _Collect:
    """A dispatcher that remembers the submitted execution, so the benchmark drives it."""

    def __init__(self) -> None:
        self.ids: list[object] = []

    def submit(self, execution_id: object) -> None:
        self.ids.append(execution_id)

    def interrupt(self, execution_id: object) -> None:  # pragma: no cover - never cancelled
        raise AssertionError("no cancel in benchmarks")


async def _create(bench: Bench, team: str) -> uuid.UUID:
    async with bench.database.session() as session:
        execution = await ExecutionService(session, bench.settings).create(
            bench.principal,
            bench.teams[team],
            ExecutionCreate(prompt="benchmark"),
            _Collect(),  # type: ignore[arg-type]
        )
    return execution.id


async def _drive(bench: Bench, execution_id: uuid.UUID) -> None:
    await bench.runtime.runner.engine.run(execution_id, asyncio.Event())


async def _read(bench: Bench, execution_id: uuid.UUID) -> Execution:
    async with bench.database.session() as session:
        return await ExecutionService(session, bench.settings).get(bench.principal, execution_id)


async def _one_execution(bench: Bench, team: str) -> str:
    execution_id = await _create(bench, team)
    await _drive(bench, execution_id)
    return (await _read(bench, execution_id)).status


@pytest.mark.parametrize(("team", "steps"), TEAMS)
def test_step_overhead(
    benchmark: pytest.FixtureRequest, bench: Bench, team: str, steps: int
) -> None:
    assert bench.run(_one_execution(bench, team)) == ExecutionStatus.completed.value  # warm up
    driven: list[uuid.UUID] = []

    def setup() -> tuple[tuple[uuid.UUID], dict[str, object]]:
        execution_id = bench.run(_create(bench, team))
        driven.append(execution_id)  # type: ignore[arg-type]
        return (execution_id,), {}  # type: ignore[return-value]

    benchmark.pedantic(
        lambda execution_id: bench.run(_drive(bench, execution_id)),
        setup=setup,
        rounds=60,
        warmup_rounds=3,
    )
    finished = [bench.run(_read(bench, execution_id)) for execution_id in driven]
    assert {e.status for e in finished} == {ExecutionStatus.completed.value}
    assert all(e.result is not None for e in finished)
    median = benchmark.stats.stats.median
    benchmark.extra_info["steps"] = steps
    benchmark.extra_info["ms_per_step"] = round(median * 1000 / steps, 3)


@pytest.mark.parametrize(("team", "steps"), TEAMS)
def test_execution_throughput(
    benchmark: pytest.FixtureRequest, bench: Bench, team: str, steps: int
) -> None:
    status = bench.run(_one_execution(bench, team))  # warm the pools and caches
    assert status == ExecutionStatus.completed.value

    result = benchmark.pedantic(
        lambda: bench.run(_one_execution(bench, team)), rounds=40, warmup_rounds=3
    )
    assert result == ExecutionStatus.completed.value
    median = benchmark.stats.stats.median
    benchmark.extra_info["steps"] = steps
    benchmark.extra_info["ms_per_step"] = round(median * 1000 / steps, 3)
    benchmark.extra_info["executions_per_second"] = round(1 / median, 1)
