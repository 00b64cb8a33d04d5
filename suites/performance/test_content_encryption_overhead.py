"""What sealing executions' content at rest costs an execution (issue 17): the same 3-agent
sequential team of builtin agents, in-process, end to end as the API sees it (created, driven
by the engine, read back with its steps, context, messages and events), with its account
listed in ``security.content_encryption.accounts`` and not, the two taking turns execution by
execution in one run, on SQLite and PostgreSQL. The figure is the ratio of the medians, sealed
over plaintext (recorded in the JUnit report and printed); the assertion is a loose bound on
that ratio, never on wall time.

    .nox/shared/bin/python -m pytest -s suites/performance/test_content_encryption_overhead.py
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import Callable

import pytest
from bench_support import Bench, open_bench

from app.schemas.executions import ExecutionCreate
from app.services.content import NOTHING, SealingPolicy
from app.services.executions import ExecutionService

TEAM = "sequential-3"
ROUNDS = 60
WARMUP = 5
# Sealing is a few AES-GCM operations per row (microseconds) against a handful of statements
# per step: it must not make an execution cost half as much again.
MAX_RATIO = 1.5
PROMPT = " ".join(["Summarise the quarterly report for the board."] * 20)  # ~1 kB


class _Collect:
    def submit(self, execution_id: object) -> None:
        pass

    def interrupt(self, execution_id: object) -> None:  # pragma: no cover - never cancelled
        raise AssertionError("no cancel in benchmarks")


async def _one(bench: Bench) -> float:
    """Seconds for one execution end to end: created, driven, read back as the API does."""
    content = bench.runtime.content
    started = time.perf_counter()
    async with bench.database.session() as session:
        service = ExecutionService(session, bench.settings, content)
        execution = await service.create(
            bench.principal,
            bench.teams[TEAM],
            ExecutionCreate(prompt=PROMPT, variables={"topic": "batteries"}),
            _Collect(),  # type: ignore[arg-type]
        )
        execution_id: uuid.UUID = execution.id
    await bench.runtime.runner.engine.run(execution_id, asyncio.Event())
    async with bench.database.session() as session:
        service = ExecutionService(session, bench.settings, content)
        view = await service.view(bench.principal, execution_id)
        execution = await service.get(bench.principal, execution_id)
        await service.context(execution)
        await service.messages(execution, after=0, limit=100, kind=None, agent_id=None)
        events = await service.events(execution, after=0, limit=100)
    elapsed = time.perf_counter() - started
    assert view.status == "completed"
    assert view.prompt == PROMPT
    assert any(e.data.get("output") == PROMPT for e in events)
    return elapsed


@pytest.mark.parametrize("flavour", ["sqlite", "postgresql"])
def test_sealing_content_costs_an_execution_little(
    flavour: str, record_property: Callable[[str, object], None]
) -> None:
    with contextlib.contextmanager(open_bench)(flavour) as bench:
        sealing = SealingPolicy(frozenset({bench.principal.account_id}))
        times: dict[str, list[float]] = {"sealed": [], "plain": []}
        for round_ in range(WARMUP + ROUNDS):
            for name, policy in (("sealed", sealing), ("plain", NOTHING)):
                bench.runtime.content.policy = policy
                elapsed = bench.run(_one(bench))
                if round_ >= WARMUP:
                    times[name].append(elapsed)
        sealed, plain = statistics.median(times["sealed"]), statistics.median(times["plain"])
    ratio = sealed / plain
    record_property(f"content_encryption_{flavour}_sealed_ms", round(sealed * 1000, 2))
    record_property(f"content_encryption_{flavour}_plain_ms", round(plain * 1000, 2))
    record_property(f"content_encryption_{flavour}_ratio", round(ratio, 3))
    print(
        f"\n{flavour}: sealed {sealed * 1000:.2f} ms, plaintext {plain * 1000:.2f} ms per "
        f"execution, ratio {ratio:.3f}"
    )
    assert ratio <= MAX_RATIO, f"a sealed execution cost {ratio:.2f} times a plaintext one"
