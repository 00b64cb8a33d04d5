"""What the database manager costs a request that uses the database: the same app with the
manager on and off, in one run.

Both apps serve the same small route, which runs one statement through a pooled session (the
pool's gate and figures, the circuit breaker's check, the query counter and the slow-query
timing all run; the outage answers and the retry of reads wrap it). Requests alternate between
the two apps one by one, each app called directly as ASGI, so whatever else the machine does
slows both alike. The figure is the median over rounds of the per-round ratio of requests per
second, manager on over manager off. Target: a ratio of 0.90 or more. Never an assertion on
wall time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from bench_support import alternating_rates
from fastapi import Depends
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import get_database
from app.core.config import Settings
from app.db.database import SQLAlchemyManager
from app.main import create_app

TARGET_RATIO = 0.90
ROUTE = "/api/v1/bench/database"
QUIET_HEALTH = {"interval_seconds": 3600, "ttl_seconds": 7200}


def bench_app(tmp_path: Path, name: str, manager: bool) -> Any:
    settings = Settings(
        environment="test",
        secret_key="database-bench-secret-key-0123456789abcdefghijk",
        log_level="WARNING",
        database={"url": f"sqlite+aiosqlite:///{tmp_path / f'{name}.db'}"},
        providers={"openai_base_url": "http://127.0.0.1:9/v1"},
        health=QUIET_HEALTH,
        database_manager={"enabled": manager},
        configuration={"enabled": False},  # no signal handlers: two apps share this process
    )
    app = create_app(settings)

    async def one_statement(
        database: Annotated[SQLAlchemyManager, Depends(get_database)],
    ) -> JSONResponse:
        async with database.session() as session:
            value = (await session.execute(text("select 1"))).scalar_one()
        return JSONResponse({"value": value})

    app.add_api_route(ROUTE, one_statement, include_in_schema=False)
    app.router.routes.insert(0, app.router.routes.pop())  # tried first, as in the monitor's
    return app


def test_the_database_manager_costs_at_most_ten_percent(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    with_manager = bench_app(tmp_path, "on", manager=True)
    without = bench_app(tmp_path, "off", manager=False)

    def the_manager_ran() -> None:  # its breaker guarded the measured app's checkouts
        assert with_manager.state.database.breaker is not None
        assert without.state.database.breaker is None

    rates = asyncio.run(
        alternating_rates(
            with_manager, without, ROUTE, rounds=7, requests=1500, while_running=the_manager_ran
        )
    )
    on, off, ratio = rates.on, rates.off, rates.ratio
    record_property("database_manager_on_rps", round(on))
    record_property("database_manager_off_rps", round(off))
    record_property("database_manager_ratio", round(ratio, 3))
    print(f"\ndatabase manager on {on:.0f} req/s, off {off:.0f} req/s, ratio {ratio:.3f}")
    assert ratio >= TARGET_RATIO, f"the manager's app served {ratio:.1%} of the other's rate"
