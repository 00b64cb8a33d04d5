"""What the performance suite runs on: an event loop, a migrated database of each flavour, and
a tenant with builtin agents, all in-process so the benchmarks measure the engine itself."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse

from app.core.config import Settings
from app.core.crypto import SecretBox
from app.db import migrate
from app.db.database import SQLAlchemyManager
from app.main import create_app
from app.models import Account, Agent, Role, Team, TeamMember, User
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


def bench_app(tmp_path: Path, name: str, **overrides: Any) -> Any:
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

    app.add_api_route(SMALL_ROUTE, small_json, include_in_schema=False)
    app.router.routes.insert(0, app.router.routes.pop())
    assert getattr(app.router.routes[0], "path", None) == SMALL_ROUTE
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
