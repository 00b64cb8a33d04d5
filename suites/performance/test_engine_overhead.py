"""Orchestration overhead of the engine with instant builtin agents, every step durably
persisted: executions per second and milliseconds per step, for a 3-agent sequential team and
a 10-agent parallel team, on SQLite and PostgreSQL.

`nox -s performance` compares each run with the previous saved one and fails when a median
regresses by more than the threshold the session states.
"""

from __future__ import annotations

import asyncio

import pytest
from bench_support import Bench

from app.models import ExecutionStatus
from app.schemas.executions import ExecutionCreate
from app.services.executions import ExecutionService


class _Collect:
    """A dispatcher that remembers the submitted execution, so the benchmark drives it."""

    def __init__(self) -> None:
        self.ids: list[object] = []

    def submit(self, execution_id: object) -> None:
        self.ids.append(execution_id)

    def interrupt(self, execution_id: object) -> None:  # pragma: no cover - never cancelled
        raise AssertionError("no cancel in benchmarks")


async def _one_execution(bench: Bench, team: str) -> str:
    collect = _Collect()
    async with bench.database.session() as session:
        service = ExecutionService(session, bench.settings)
        execution = await service.create(
            bench.principal,
            bench.teams[team],
            ExecutionCreate(prompt="benchmark"),
            collect,  # type: ignore[arg-type]
        )
    engine = bench.runtime.runner.engine
    await engine.run(execution.id, asyncio.Event())
    async with bench.database.session() as session:
        service = ExecutionService(session, bench.settings)
        return (await service.get(bench.principal, execution.id)).status


@pytest.mark.parametrize(("team", "steps"), [("sequential-3", 3), ("parallel-10", 10)])
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
