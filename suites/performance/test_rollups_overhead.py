"""What keeping the rollups costs an execution (issue 18): the same 3-agent sequential team of
builtin agents, with three model calls booked in its ledger, in-process, end to end as the API
sees it (created, driven by the engine to its end, read back), executions back to back, in
blocks with the rollup folder running (woken by each end, folding a second later while the
next executions run, as in the server) and blocks without it, the two taking turns in one
run, on SQLite and PostgreSQL. The figure is the ratio of the medians, with over without
(recorded in the JUnit report and printed); the assertion is on that ratio, never on wall
time. Every execution is rolled up by the end of the run.

    .nox/shared/bin/python -m pytest -s suites/performance/test_rollups_overhead.py
"""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from collections.abc import Callable
from decimal import Decimal

import pytest
from bench_support import Bench, create_execution, drive, open_bench, read_execution
from sqlalchemy import func, select

from app.db.base import Base, utcnow
from app.services.rollups import fold_all

TEAM = "sequential-3"
BLOCKS = 6
# Blocks last a few seconds (an execution takes about 16 ms here), several times the folder's
# delay after an end (``RENUM_ROLLUPS__DELAY_SECONDS``, 1 s): its folds land inside them.
PER_BLOCK = 200
WARMUP = 5  # executions at the start of each block left out (the folder starting)
MAX_RATIO = 1.05  # the bound: rollup maintenance adds at most 5%

LEDGER = Base.metadata.tables["ledger_entries"]


async def one(bench: Bench) -> float:
    """Seconds for one execution end to end, its three model calls booked as it runs."""
    started = time.perf_counter()
    execution_id = await create_execution(bench, TEAM)
    await book_calls(bench, execution_id)
    await drive(bench, execution_id)
    execution = await read_execution(bench, execution_id)
    elapsed = time.perf_counter() - started
    assert execution.status == "completed"
    return elapsed


async def book_calls(bench: Bench, execution_id: uuid.UUID) -> None:
    """Three ledger rows, as three model calls of the execution would leave."""
    rows = [
        {
            "id": uuid.uuid4(),
            "account_id": bench.principal.account_id,
            "execution_id": execution_id,
            "team_id": bench.teams[TEAM],
            "user_id": bench.principal.user_id,
            "provider": "openai",
            "model": "gpt-4o-mini",
            "input_tokens": 120,
            "output_tokens": 40,
            "cost_usd": Decimal("0.000042"),
            "duration_ms": 800,
            "paid_by": "platform",
            "created_at": utcnow(),
        }
        for _ in range(3)
    ]
    async with bench.database.engine.begin() as conn:
        await conn.execute(LEDGER.insert(), rows)


async def not_rolled_up(bench: Bench) -> int:
    async with bench.database.engine.connect() as conn:
        query = select(func.count()).select_from(LEDGER).where(~LEDGER.c.rolled_up)
        return int((await conn.execute(query)).scalar_one())


POSTGRESQL_NOT_REACHED = pytest.mark.xfail(
    strict=True,
    reason="not reached on PostgreSQL: 1.086 and 1.098 on 2026-12-06 (about 16.1 ms against "
    "14.6 per execution; SQLite 1.000 in the same run). A fold marks its rows rolled up, an "
    "indexed column, so PostgreSQL cannot update them in place (no HOT update): every index "
    "of executions and ledger_entries takes a new entry per folded row. Issue 18 stays open "
    "on it",
)


@pytest.mark.parametrize(
    "flavour", ["sqlite", pytest.param("postgresql", marks=POSTGRESQL_NOT_REACHED)]
)
def test_keeping_the_rollups_costs_an_execution_at_most_five_percent(
    flavour: str, record_property: Callable[[str, object], None]
) -> None:
    with contextlib.contextmanager(open_bench)(flavour) as bench:
        folder = bench.runtime.rollups
        times: dict[str, list[float]] = {"folding": [], "not": []}
        for _ in range(BLOCKS):
            for name in ("folding", "not"):
                if name == "folding":
                    # What the other arm left is folded first, outside the timing: each
                    # folding block folds its own executions only.
                    bench.run(fold_all(bench.database.engine, 1000))
                    bench.run(folder.start())
                for n in range(PER_BLOCK):
                    elapsed = bench.run(one(bench))
                    assert isinstance(elapsed, float)
                    if n >= WARMUP:
                        times[name].append(elapsed)
                bench.run(folder.stop())
        bench.run(fold_all(bench.database.engine, 1000))
        assert bench.run(not_rolled_up(bench)) == 0
        folding, plain = statistics.median(times["folding"]), statistics.median(times["not"])
    ratio = folding / plain
    record_property(f"rollups_{flavour}_folding_ms", round(folding * 1000, 2))
    record_property(f"rollups_{flavour}_not_ms", round(plain * 1000, 2))
    record_property(f"rollups_{flavour}_ratio", round(ratio, 3))
    print(
        f"\n{flavour}: with the folder {folding * 1000:.2f} ms, without {plain * 1000:.2f} ms "
        f"per execution, ratio {ratio:.3f}"
    )
    assert ratio <= MAX_RATIO, f"with the rollups kept an execution cost {ratio:.3f} times more"
