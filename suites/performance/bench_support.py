"""What the performance suite runs on: an event loop, a migrated database of each flavour, and
a tenant with builtin agents, all in-process so the benchmarks measure the engine itself; and
the engine's per-step cost on both flavours, measured alternately in one run
(``engine_step_costs``), which ``test_engine_overhead`` compares with the saved baseline
``baselines/engine.json``. Run as a script, it measures that baseline again:

    .nox/shared/bin/python suites/performance/bench_support.py engine-baseline
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse

from app.core.config import Settings
from app.core.crypto import SecretBox
from app.core.logging import configure_logging
from app.db import migrate
from app.db.database import SQLAlchemyManager
from app.main import create_app
from app.models import Account, Agent, Execution, Role, Team, TeamMember, User
from app.schemas.executions import ExecutionCreate
from app.services.executions import ExecutionService
from app.services.principal import Principal
from app.services.runtime import Runtime
from qa import services
from qa.asgi import asgi_caller


@dataclass(frozen=True)
class Rates:
    """Two apps' requests per second (medians over the measured rounds) and the median of the
    rounds' ratios ``on / off``."""

    on: float
    off: float
    ratio: float


async def alternating_rates(
    on: Any,
    off: Any,
    route: str,
    *,
    rounds: int,
    requests: int,
    while_running: Callable[[], None] = lambda: None,
) -> Rates:
    """Start both apps, then GET ``route`` alternately from one and the other, each called
    directly as ASGI (whatever else the machine does slows both alike): a warm-up round of a
    tenth of ``requests``, then ``rounds`` rounds of ``requests``. A round's rate of an app is
    its requests over the time spent in its calls. ``while_running`` checks the apps before
    they stop."""
    async with contextlib.AsyncExitStack() as stack:
        for app in (on, off):
            await stack.enter_async_context(app.router.lifespan_context(app))
        calls = {"on": asgi_caller(on), "off": asgi_caller(off)}
        rates: dict[str, list[float]] = {"on": [], "off": []}
        for round_ in range(rounds + 1):
            busy = {"on": 0.0, "off": 0.0}
            count = requests // 10 if round_ == 0 else requests
            for index in range(count):
                name = "on" if index % 2 == 0 else "off"
                start = time.perf_counter()
                assert await calls[name](route) == 200
                busy[name] += time.perf_counter() - start
            if round_ == 0:
                continue  # the warm-up round
            for name in rates:
                rates[name].append((count // 2) / busy[name])
        while_running()
    pairs = zip(rates["on"], rates["off"], strict=True)
    return Rates(
        on=statistics.median(rates["on"]),
        off=statistics.median(rates["off"]),
        ratio=statistics.median(a / b for a, b in pairs),
    )


SMALL_ROUTE = "/bench/json"
QUIET_HEALTH = {"interval_seconds": 3600, "ttl_seconds": 7200}


def bench_app(tmp_path: Path, name: str, route: str = SMALL_ROUTE, **overrides: Any) -> Any:
    """Renum's app with ``overrides`` to its settings and the small JSON route ``SMALL_ROUTE``
    tried first, as an API route is tried before any capability's (see
    ``test_monitor_overhead``): what differs between two such apps is the capabilities' own
    work per request."""
    settings = Settings(
        environment="test",
        secret_key="overhead-bench-secret-key-0123456789abcdefghijk",
        log_level="WARNING",
        database={"url": f"sqlite+aiosqlite:///{tmp_path / f'{name}.db'}"},
        providers={"openai_base_url": "http://127.0.0.1:9/v1"},
        health=QUIET_HEALTH,
        configuration={"enabled": False},  # no signal handlers: two apps share this process
        **overrides,
    )
    app = create_app(settings)

    async def small_json() -> JSONResponse:
        return JSONResponse({"status": "ok", "items": [1, 2, 3]})

    app.add_api_route(route, small_json, include_in_schema=False)
    app.router.routes.insert(0, app.router.routes.pop())
    assert getattr(app.router.routes[0], "path", None) == route
    return app


@dataclass
class Bench:
    loop: asyncio.AbstractEventLoop
    settings: Settings
    database: SQLAlchemyManager
    runtime: Runtime
    principal: Principal
    teams: dict[str, uuid.UUID]

    def run(self, coroutine: object) -> object:
        return self.loop.run_until_complete(coroutine)  # type: ignore[arg-type]


async def _seed(database: SQLAlchemyManager) -> tuple[Principal, dict[str, uuid.UUID]]:
    async with database.session() as session:
        account = Account(name="bench", name_key="bench")
        session.add(account)
        await session.flush()
        user = User(
            account_id=account.id, email="bench@example.com", password_hash="x", role="owner"
        )
        session.add(user)
        agents = [
            Agent(account_id=account.id, name=f"echo-{n}", provider="builtin", model="echo")
            for n in range(10)
        ]
        session.add_all(agents)
        await session.flush()
        teams: dict[str, uuid.UUID] = {}
        for name, strategy, size in (
            ("sequential-3", "sequential", 3),
            ("parallel-10", "parallel", 10),
        ):
            members = agents[:size]
            team = Team(
                account_id=account.id,
                name=name,
                workflow_version=1,
                workflow={
                    "strategy": strategy,
                    "steps": [
                        {"id": f"s{n}", "agent_id": str(a.id)} for n, a in enumerate(members)
                    ],
                },
            )
            session.add(team)
            await session.flush()
            session.add_all(
                TeamMember(team_id=team.id, agent_id=a.id, position=n)
                for n, a in enumerate(members)
            )
            teams[name] = team.id
        await session.commit()
        return Principal(user.id, account.id, Role.owner), teams


def open_bench(flavour: str) -> Iterator[Bench]:
    """A migrated, seeded database of ``flavour`` with a runtime around it; cleaned up after."""
    workdir = Path(tempfile.mkdtemp(prefix="renum-bench-"))
    name = None
    if flavour == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    else:
        name = f"renum_bench_{uuid.uuid4().hex[:10]}"
        url = services.create_postgres_database(name)
    settings = Settings(
        environment="test",
        database={"url": url},
        executions={"max_concurrent_per_account": 10_000},
        log_level="WARNING",
    )
    configure_logging(settings)  # as the app does: WARNING, so the benchmarks log nothing
    loop = asyncio.new_event_loop()
    database = SQLAlchemyManager(settings.database)
    loop.run_until_complete(migrate.upgrade(database.engine))
    principal, teams = loop.run_until_complete(_seed(database))
    runtime = Runtime.build(settings, database, SecretBox.from_settings(settings))
    try:
        yield Bench(loop, settings, database, runtime, principal, teams)
    finally:
        loop.run_until_complete(runtime.http.aclose())
        loop.run_until_complete(database.dispose())
        loop.close()
        if name is not None:
            services.drop_postgres_database(name)


# The benchmark teams (all builtin echo agents) and their steps per execution.
ENGINE_TEAMS = {"sequential-3": 3, "parallel-10": 10}
FLAVOURS = ("sqlite", "postgresql")
BASELINE = Path(__file__).parent / "baselines" / "engine.json"
BASELINE_COMMAND = ".nox/shared/bin/python suites/performance/bench_support.py engine-baseline"


class _Collect:
    """A dispatcher that remembers the submitted execution, so the benchmark drives it."""

    def __init__(self) -> None:
        self.ids: list[object] = []

    def submit(self, execution_id: object) -> None:
        self.ids.append(execution_id)

    def interrupt(self, execution_id: object) -> None:  # pragma: no cover - never cancelled
        raise AssertionError("no cancel in benchmarks")


async def create_execution(bench: Bench, team: str) -> uuid.UUID:
    """A pending execution of ``team``, created as the API creates it (not driven)."""
    async with bench.database.session() as session:
        execution = await ExecutionService(session, bench.settings).create(
            bench.principal,
            bench.teams[team],
            ExecutionCreate(prompt="benchmark"),
            _Collect(),  # type: ignore[arg-type]
        )
    return execution.id


async def drive(bench: Bench, execution_id: uuid.UUID) -> None:
    """The engine alone, from claim to end."""
    await bench.runtime.runner.engine.run(execution_id, asyncio.Event())


async def read_execution(bench: Bench, execution_id: uuid.UUID) -> Execution:
    async with bench.database.session() as session:
        return await ExecutionService(session, bench.settings).get(bench.principal, execution_id)


def engine_step_costs(
    benches: Mapping[str, Bench], *, blocks: int = 5, rounds: int = 40, warmup: int = 10
) -> dict[str, dict[str, float]]:
    """Milliseconds per step of each bench's engine for each team in ``ENGINE_TEAMS``: the time
    the engine takes to drive an execution from claim to end (created beforehand, outside the
    timing), over its steps. The flavours take turns execution by execution, so whatever else
    the machine does slows them alike. The executions run in ``blocks`` of ``rounds`` each
    (after ``warmup`` untimed ones); a block's figure is its median, and the figure kept is the
    lowest block's: a burst of other work on the machine spoils a block, not the figure. Every
    execution measured must have completed."""
    costs: dict[str, dict[str, float]] = {name: {} for name in benches}
    for team, steps in ENGINE_TEAMS.items():
        medians: dict[str, list[float]] = {name: [] for name in benches}
        driven: dict[str, list[uuid.UUID]] = {name: [] for name in benches}
        for block in range(-1, blocks):  # block -1: the warm-up
            times: dict[str, list[float]] = {name: [] for name in benches}
            for _ in range(warmup if block < 0 else rounds):
                for name, bench in benches.items():
                    execution_id = bench.run(create_execution(bench, team))
                    started = time.perf_counter()
                    bench.run(drive(bench, execution_id))
                    times[name].append(time.perf_counter() - started)
                    driven[name].append(execution_id)
            if block >= 0:
                for name in benches:
                    medians[name].append(statistics.median(times[name]))
        for name, bench in benches.items():
            for execution_id in driven[name][:: max(1, len(driven[name]) // 10)]:
                execution = bench.run(read_execution(bench, execution_id))
                assert execution.status == "completed", execution.status  # type: ignore[attr-defined]
            costs[name][team] = round(min(medians[name]) * 1000 / steps, 4)
    return costs


@contextlib.contextmanager
def on_one_cpu() -> Iterator[None]:
    """Run the block with this process's threads, and those they start, on one CPU (where the
    operating system allows it). Left to the scheduler, the event loop and SQLite's worker
    thread share a CPU in some runs and not in others, which moves SQLite's cost per step by
    about a fifth from one run to the next; the database server's processes run where they
    like either way."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    allowed = os.sched_getaffinity(0)
    threads = Path("/proc/self/task")

    def pin(cpus: set[int]) -> None:
        for tid in os.listdir(threads):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(int(tid), cpus)

    pin({min(allowed)})
    try:
        yield
    finally:
        pin(allowed)


@contextlib.contextmanager
def both_flavours() -> Iterator[dict[str, Bench]]:
    """A bench of each flavour in ``FLAVOURS``, open together, on one CPU (``on_one_cpu``)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(on_one_cpu())
        benches = {}
        for flavour in FLAVOURS:
            benches[flavour] = stack.enter_context(contextlib.contextmanager(open_bench)(flavour))
        yield benches


def load_baseline(path: Path = BASELINE) -> dict[str, Any]:
    baseline: dict[str, Any] = json.loads(path.read_text())
    return baseline


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} CPUs, {system}, Python {platform.python_version()}"


def save_engine_baseline(
    path: Path, runs: int, commit: str | None = None, note: str | None = None
) -> dict[str, Any]:
    """Measure ``engine_step_costs`` ``runs`` times (a fresh pair of databases each time) and
    save each run's figures and their medians, with the commit measured (``git rev-parse HEAD``
    unless given: the code may be an export of it), to ``path``."""
    command = f"{BASELINE_COMMAND} --runs {runs}"
    if commit is not None:
        command += f" --commit {commit}"
    else:
        git = shutil.which("git")
        if git is None:
            raise SystemExit("git is not on PATH: name the commit measured with --commit")
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(  # noqa: S603 - git, fixed arguments
            [git, "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    measured = []
    for run in range(runs):
        with both_flavours() as benches:
            measured.append(engine_step_costs(benches))
        print(f"run {run + 1}/{runs}: {json.dumps(measured[-1])}", file=sys.stderr)
    medians = {
        flavour: {
            team: round(statistics.median(run[flavour][team] for run in measured), 4)
            for team in ENGINE_TEAMS
        }
        for flavour in FLAVOURS
    }
    baseline = {
        "what": "The engine's cost per step in ms (bench_support.engine_step_costs: builtin echo "
        "teams, SQLite and PostgreSQL alternately, the lowest median of five blocks of 40 "
        "executions, this process on one CPU) in each run, and the median of the runs "
        "(ms_per_step).",
        "commit": commit,
        "date": datetime.now(UTC).date().isoformat(),
        "machine": _machine(),
        "command": command,
        "note": note,
        "runs": measured,
        "ms_per_step": medians,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(baseline, indent=2) + "\n")
    return baseline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    engine = commands.add_parser("engine-baseline", help="measure and save the engine baseline")
    engine.add_argument("--runs", type=int, default=5)
    engine.add_argument("--out", type=Path, default=BASELINE)
    engine.add_argument("--commit", help="the commit measured (default: git rev-parse HEAD)")
    engine.add_argument("--note", help="how it was measured, for whoever measures it again")
    args = parser.parse_args(argv)
    baseline = save_engine_baseline(args.out, args.runs, args.commit, args.note)
    print(json.dumps(baseline["ms_per_step"], indent=2))


if __name__ == "__main__":
    main()
