"""Readiness probe throughput against a bare route of the same app, measured in the same run.

The issue's target: ``/health/ready`` serves at least 90% of the requests per second of a
bare route (same middleware, a handler returning a constant), with zero dependency calls per
probe. Two measurements, both asserting on the ratio, never on wall time:

- ``test_ready_vs_bare_in_process``: the ASGI app called directly (the app's own cost per
  request, no network); database pool checkouts and check runs are counted during the burst.
  Neither route ever yields to the event loop, so no background task (the reaper, the health
  monitor's checks) can run during the burst either: a checkout there means a probe touched
  the database, or waited on something (such as a plain ``def`` dependency, which FastAPI runs
  in a worker thread) and let background work in. ``suites/unit/test_probe_no_database.py``
  checks the same cheaply in the default run.
- ``test_ready_vs_bare_over_http``: a real server process of the same app (plus the bare
  route), launched by the harness's launcher on PostgreSQL behind the fault proxy, loaded over
  keep-alive HTTP connections; the proxy counts the bytes sent to PostgreSQL during the burst.

In both, requests alternate between the two routes one by one, so whatever else the machine
is doing slows both alike; the ratio is the median over rounds.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from sqlalchemy import event

from app.capabilities.health.routes import PASS_BODY
from app.core.config import Settings
from app.main import create_app
from qa import services
from qa.asgi import Call, asgi_caller
from qa.fault_proxy import FaultProxy
from qa.launcher import LaunchedBackend

TARGET_RATIO = 0.90
READY = "/health/ready"
BARE = "/bench/bare"
# Background checks far apart: the burst measures the probe, not the monitor.
QUIET_HEALTH = {"interval_seconds": 3600, "ttl_seconds": 7200}


def add_bare_route(app: Any) -> None:
    """The baseline: a route of the same app that returns the same body and does nothing."""
    from fastapi.responses import Response

    async def bare() -> Response:
        return Response(PASS_BODY, media_type="application/json")

    app.add_api_route(BARE, bare, include_in_schema=False)


# --- in-process -----------------------------------------------------------------------------


async def interleaved(call: Call, rounds: int, requests: int) -> dict[str, list[float]]:
    """Rounds of requests alternating the two routes one by one (so a busy machine slows both
    alike); each route's rate per round is its requests over the time they took."""
    rates: dict[str, list[float]] = {READY: [], BARE: []}
    for _ in range(rounds):
        busy = {READY: 0.0, BARE: 0.0}
        for index in range(requests):
            path = READY if index % 2 == 0 else BARE
            start = time.perf_counter()
            assert await call(path) == 200
            busy[path] += time.perf_counter() - start
        for path in (READY, BARE):
            rates[path].append((requests // 2) / busy[path])
    return rates


def report(name: str, rates: dict[str, list[float]], record: Callable[[str, object], None]):
    """The median of the per-round ratios, with the median rates for the log."""
    ready, bare = statistics.median(rates[READY]), statistics.median(rates[BARE])
    ratio = statistics.median(r / b for r, b in zip(rates[READY], rates[BARE], strict=True))
    record(f"{name}_ready_rps", round(ready))
    record(f"{name}_bare_rps", round(bare))
    record(f"{name}_ratio", round(ratio, 3))
    print(f"\n{name}: /health/ready {ready:.0f} req/s, bare {bare:.0f} req/s, ratio {ratio:.3f}")
    return ratio


def test_ready_vs_bare_in_process(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    settings = Settings(
        environment="test",
        secret_key="probe-bench-secret-key-0123456789abcdefghijkl",
        log_level="WARNING",
        database={"url": f"sqlite+aiosqlite:///{tmp_path / 'bench.db'}"},
        providers={"openai_base_url": "http://127.0.0.1:9/v1"},
        health=QUIET_HEALTH,
    )
    app = create_app(settings)
    add_bare_route(app)

    async def measure() -> tuple[dict[str, list[float]], int, int]:
        async with app.router.lifespan_context(app):
            call = asgi_caller(app)
            await interleaved(call, rounds=1, requests=300)  # warm up both paths
            checkouts = 0

            def count_checkout(*_: object) -> None:
                nonlocal checkouts
                checkouts += 1

            pool = app.state.database.engine.sync_engine.pool
            event.listen(pool, "checkout", count_checkout)
            validator = app.state.health_monitor.validator
            original = validator.run_check
            check_runs = 0

            async def counted(check: Any) -> Any:
                nonlocal check_runs
                check_runs += 1
                return await original(check)

            validator.run_check = counted
            rates = await interleaved(call, rounds=9, requests=4000)
            event.remove(pool, "checkout", count_checkout)
            return rates, checkouts, check_runs

    rates, checkouts, check_runs = asyncio.run(measure())
    ratio = report("in_process", rates, record_property)
    assert checkouts == 0, (
        "the database was used during the burst: a readiness probe touched it, or yielded to "
        "the event loop (a plain def dependency?) and let background work run"
    )
    assert check_runs == 0, "a readiness probe ran a dependency check"
    assert ratio >= TARGET_RATIO, f"/health/ready at {ratio:.1%} of the bare route"


# --- over HTTP ------------------------------------------------------------------------------


def bench_app() -> Any:
    """The application with the bare route beside it: what ``ProbeBench`` serves."""
    app = create_app()
    add_bare_route(app)
    return app


class ProbeBench(LaunchedBackend):
    """A backend launched like any other (free port, fresh database, the loopback guard, a
    clean SIGTERM stop) that serves ``bench_app``."""

    app_factory = "suites.performance.test_probe_throughput:bench_app"


QUIET_ENV = {
    "RENUM_LOG_LEVEL": "WARNING",
    "RENUM_HEALTH__INTERVAL_SECONDS": "3600",
    "RENUM_HEALTH__TTL_SECONDS": "7200",
    # The execution reaper also sweeps the database now and then: not during the burst.
    "RENUM_EXECUTIONS__REAPER_INTERVAL_SECONDS": "3600",
    # So does the dispatcher of outbound deliveries (webhooks), every second.
    "RENUM_DELIVERIES__ENABLED": "false",
}


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, FaultProxy]]:
    """The app (with the bare route) launched on PostgreSQL reached through a fault proxy: the
    launcher creates (and drops) the database through the proxy's address."""
    postgres = services.postgres()
    postgres.require()
    with FaultProxy(*postgres.address) as proxy:
        parts = urlsplit(postgres.url)
        netloc = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
        via_proxy = urlunsplit(parts._replace(netloc=f"{netloc}:{proxy.port}"))
        monkeypatch.setenv(services.POSTGRES_URL_ENV, via_proxy)
        server = ProbeBench.start("postgresql", extra_env=QUIET_ENV)
        try:
            yield server.base_url, proxy
        finally:
            server.stop()


async def http_round(
    client: httpx.AsyncClient, requests: int, connections: int
) -> dict[str, float]:
    """One round: every connection alternates the two routes request by request, so whatever
    else the machine does hits both alike; each route's rate is its requests over the time its
    requests took (summed over the connections running at once)."""
    busy = {READY: 0.0, BARE: 0.0}
    count = {READY: 0, BARE: 0}

    async def worker(first: str) -> None:
        paths = (READY, BARE) if first == READY else (BARE, READY)
        for index in range(requests // connections):
            path = paths[index % 2]
            start = time.perf_counter()
            response = await client.get(path)
            busy[path] += time.perf_counter() - start
            count[path] += 1
            assert response.status_code == 200

    await asyncio.gather(*(worker((READY, BARE)[n % 2]) for n in range(connections)))
    return {path: count[path] * connections / busy[path] for path in (READY, BARE)}


def test_ready_vs_bare_over_http(
    http_server: tuple[str, FaultProxy], record_property: Callable[[str, object], None]
) -> None:
    base_url, proxy = http_server

    async def measure() -> dict[str, list[float]]:
        rates: dict[str, list[float]] = {READY: [], BARE: []}
        limits = httpx.Limits(max_keepalive_connections=4)
        async with httpx.AsyncClient(base_url=base_url, limits=limits) as client:
            await http_round(client, 400, 4)  # warm up, open the connections
            for _ in range(11):
                measured = await http_round(client, 800, 4)
                for path in (READY, BARE):
                    rates[path].append(measured[path])
        return rates

    sent_before = proxy.bytes_up
    rates = asyncio.run(measure())
    assert proxy.bytes_up == sent_before, "a readiness probe sent bytes to PostgreSQL"
    ratio = report("http", rates, record_property)
    assert ratio >= TARGET_RATIO, f"/health/ready at {ratio:.1%} of the bare route over HTTP"
