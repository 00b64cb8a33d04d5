"""The probes answer from memory: no database checkout, no check run, and no pause.

The performance suite measures ``/health/ready`` against a bare route (at least 90% of its
rate), but the default run does not include that session. This is the cheap, exact half of it:
a running app (lifespan, background monitor, reaper and every other background task started)
answers each probe a few times in-process while the database pool's checkouts and the
validator's check runs are counted, and each probe must finish without ever yielding to the
event loop. A probe that yields waited on something (I/O, a lock, a worker thread): a plain
``def`` dependency, which FastAPI runs in its thread pool, cost ``/health/ready`` two thirds of
its rate and let the reaper's database sweeps run in the middle of the probe burst.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from sqlalchemy import event

from app.api.roles import api_routes
from app.core.config import Settings
from app.main import create_app
from qa.asgi import asgi_caller

pytestmark = pytest.mark.anyio

# The memory-only probes; /health/dependencies without credentials reads the snapshot too.
PROBES = ("/health/ready", "/readyz", "/health/live", "/livez", "/health/dependencies")
CALLS_PER_PROBE = 5


def _runs_on_the_loop(call: Any) -> bool:
    """``async def`` (or an async generator): FastAPI awaits it; anything else goes to a
    worker thread. A dependency may also be an instance with such a ``__call__``."""
    method = getattr(call, "__call__", None)  # noqa: B004 (not a callable() test)
    return any(
        inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f) for f in (call, method)
    )


def _dependencies(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _dependencies(sub)


def sync_dependencies(app: FastAPI, path: str) -> list[str]:
    """The plain (not ``async``) dependencies of a route: FastAPI runs each in a worker
    thread."""
    route = next(r for r in api_routes(app.routes) if r.path == path)
    return [
        getattr(call, "__qualname__", repr(call))
        for call in _dependencies(route.dependant)
        if not _runs_on_the_loop(call)
    ]


async def answer(app: FastAPI, path: str) -> tuple[int, bool]:
    """One GET straight into the ASGI app: its status, and whether it yielded to the event loop
    (a callback scheduled before the call runs only if the call let the loop run)."""
    yielded: list[bool] = []
    marker = asyncio.get_running_loop().call_soon(yielded.append, True)
    try:
        status = await asgi_caller(app, host="probe")(path)
    finally:
        marker.cancel()
    return status, bool(yielded)


async def test_probes_touch_no_database_and_never_yield(settings: Settings) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        checkouts: list[str] = []
        pool = app.state.database.engine.sync_engine.pool

        def count_checkout(*_: object) -> None:
            task = asyncio.current_task()
            checkouts.append(task.get_name() if task else "?")

        validator = app.state.health_monitor.validator
        original = validator.run_check
        check_runs: list[str] = []

        async def counted(check: Any) -> Any:
            check_runs.append(check.spec.name)
            return await original(check)

        validator.run_check = counted
        event.listen(pool, "checkout", count_checkout)
        try:
            for path in PROBES:
                for _ in range(CALLS_PER_PROBE):
                    status, yielded = await answer(app, path)
                    assert status == 200, path
                    assert not yielded, (
                        f"{path} yielded to the event loop: it waited on something instead "
                        f"of reading memory; plain def dependencies (run in a worker thread): "
                        f"{sync_dependencies(app, path)}"
                    )
        finally:
            event.remove(pool, "checkout", count_checkout)
            validator.run_check = original

    assert checkouts == [], "a probe touched the database"
    assert check_runs == [], "a probe ran a dependency check"


def test_probe_routes_declare_only_async_dependencies(settings: Settings) -> None:
    """The cause named directly: no probe has a dependency FastAPI would run in a thread."""
    app = create_app(settings)
    assert {path: sync_dependencies(app, path) for path in PROBES} == {path: [] for path in PROBES}


def test_no_route_hops_to_a_worker_thread_but_the_login_form(settings: Settings) -> None:
    """Every route's handler and dependencies run on the event loop; the one exception is the
    login form's class (OAuth2's form model), on the one route that hashes a password anyway."""
    app = create_app(settings)
    hops = {}
    for route in api_routes(app.routes):
        calls = [route.endpoint, *_dependencies(route.dependant)]
        found = [getattr(c, "__qualname__", repr(c)) for c in calls if not _runs_on_the_loop(c)]
        if found:
            hops[route.name] = found
    assert hops == {"login": ["LoginForm"]}
