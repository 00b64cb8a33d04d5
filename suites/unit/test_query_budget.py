"""The database manager's query hygiene: statements counted per request (``app.db.queries``,
the ``QueryBudget`` request observer) and slow statements reported with their route, never
their parameters.

Requests go through the real base middleware (``RequestContextMiddleware``) into a small
FastAPI app whose routes sit under ``/api/v1`` the way the backend's do (a router with its own
prefix, included under another), on an SQLite file in the test's folder. No test asserts a
duration: the slow-query tests use a threshold no statement can beat (or a statement that
takes far longer than the threshold) and look for the log event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from structlog.testing import capture_logs

from app.capabilities.database_manager.query_budget import BACKGROUND, QueryBudget, RequestQueries
from app.core.config import Settings
from app.core.metrics import Metrics
from app.core.middleware import RequestContextMiddleware, hold_open
from app.core.request_context import UNMATCHED, route_template
from app.db import queries
from app.db.queries import (
    MAX_STATEMENT_CHARS,
    TRUNCATED,
    QueryCounter,
    QueryHooks,
    SlowQuery,
    instrument,
    statement_text,
    uninstrument,
)
from suites.unit.conftest import MakeSettings

ROUTE = "GET /api/v1/things/{thing_id}"
GATHER_ROUTE = "GET /api/v1/things/{thing_id}/gather"
SECRET = "hunter2-do-not-log-me"
NEVER_SLOW_MS = 3_600_000.0  # an hour: no statement of these tests comes close
ALWAYS_SLOW_MS = 1e-6  # a nanosecond: no statement beats it


class Harness:
    """A small app on an instrumented SQLite engine, with the observer under test."""

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = Metrics("test", settings.environment.value)
        self.budget = QueryBudget(lambda: self.settings, self.metrics)
        instrument(engine.sync_engine, self.budget.hooks)
        self.seen: list[QueryCounter | None] = []
        things = APIRouter(prefix="/things")

        @things.get("/{thing_id}")
        async def get_thing(thing_id: str, queries_: int = 1, secret: str = "") -> dict[str, int]:
            async with engine.connect() as conn:
                for _ in range(queries_):
                    await conn.execute(text("select :value"), {"value": secret})
            self.seen.append(queries.current())
            return {"ok": 1}

        @things.get("/{thing_id}/stream")
        async def stream_thing(request: Request, thing_id: str) -> dict[str, int]:
            hold_open(request.scope)  # its statements grow with the time it stays open
            async with engine.connect() as conn:
                for _ in range(20):
                    await conn.execute(text("select 1"))
            return {"ok": 1}

        self.left_running: list[asyncio.Task[None]] = []
        self.answered = asyncio.Event()

        @things.get("/{thing_id}/background")
        async def background_thing(thing_id: str) -> dict[str, int]:
            async def detached() -> None:
                queries.detach()  # as the engine's runner does
                async with engine.connect() as conn:
                    await conn.execute(text("select 1 as detached"))

            async def later() -> None:  # runs once the request was answered
                await self.answered.wait()
                async with engine.connect() as conn:
                    await conn.execute(text("select 2 as later"))

            await asyncio.create_task(detached())
            self.left_running.append(asyncio.create_task(later()))
            return {"ok": 1}

        @things.get("/{thing_id}/gather")
        async def gather_things(thing_id: str, children: int = 3) -> dict[str, int]:
            async def child() -> None:
                async with engine.connect() as conn:
                    await conn.execute(text("select 1"))
                    await conn.execute(text("select 2"))

            await asyncio.gather(*(child() for _ in range(children)))
            return {"ok": 1}

        api = APIRouter(prefix="/api/v1")
        api.include_router(things)
        app = FastAPI()
        app.include_router(api)
        app.add_middleware(
            RequestContextMiddleware, max_body_bytes=1_000_000, observers=[self.budget]
        )
        self.app = app

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t")

    def slow_queries(self, route: str) -> float:
        value = self.metrics.shared.get_sample_value(
            "renum_database_slow_queries_total", {"route": route}
        )
        return value or 0.0


@pytest.fixture(autouse=True)
def no_counter_left() -> Iterator[None]:
    """A test that fails before it detaches leaves no counter to the next one (nor a detached
    context)."""
    yield
    queries.clear()


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}", hide_parameters=True)
    yield engine
    await engine.dispose()


@pytest.fixture
def sync_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'sync.db'}", hide_parameters=True)
    yield engine
    engine.dispose()


def _settings(make_settings: MakeSettings, environment: str = "test", **section: Any) -> Settings:
    values: dict[str, Any] = {"slow_query_ms": NEVER_SLOW_MS, "query_budget": 5, **section}
    return make_settings(environment=environment, database_manager=values)


def _events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# --- counting per request -----------------------------------------------------------------


@pytest.mark.anyio
async def test_a_request_within_its_budget_logs_nothing(
    make_settings: MakeSettings, engine: AsyncEngine
) -> None:
    harness = Harness(_settings(make_settings), engine)
    async with harness.client() as client:
        with capture_logs() as logs:
            assert (await client.get("/api/v1/things/7", params={"queries_": 5})).status_code == 200
    assert _events(logs, "query_budget_exceeded") == []
    counter = harness.seen[0]
    assert isinstance(counter, RequestQueries)
    assert counter.count == 5
    assert not counter.open  # closed when the request ended
    assert not counter.counting
    assert queries.current() is None  # nothing leaks into the caller's context


@pytest.mark.anyio
async def test_a_request_over_its_budget_is_logged_with_route_count_and_budget(
    make_settings: MakeSettings, engine: AsyncEngine
) -> None:
    harness = Harness(_settings(make_settings), engine)
    async with harness.client() as client:
        with capture_logs() as logs:
            await client.get("/api/v1/things/7", params={"queries_": 9})
    [event] = _events(logs, "query_budget_exceeded")
    assert event["route"] == ROUTE  # the template, never the raw path
    assert event["count"] == 9
    assert event["budget"] == 5
    assert event["log_level"] == "warning"


@pytest.mark.anyio
async def test_statements_of_gathered_child_tasks_count_into_the_request(
    make_settings: MakeSettings, engine: AsyncEngine
) -> None:
    harness = Harness(_settings(make_settings), engine)
    async with harness.client() as client:
        with capture_logs() as logs:
            await client.get("/api/v1/things/7/gather", params={"children": 4})
    [event] = _events(logs, "query_budget_exceeded")
    assert event["route"] == GATHER_ROUTE
    assert event["count"] == 8  # 4 children, 2 statements each, all in one counter
    assert event["budget"] == 5


@pytest.mark.anyio
async def test_a_request_held_open_on_purpose_is_not_checked(
    make_settings: MakeSettings, engine: AsyncEngine
) -> None:
    harness = Harness(_settings(make_settings), engine)
    async with harness.client() as client:
        with capture_logs() as logs:
            assert (await client.get("/api/v1/things/7/stream")).status_code == 200
    assert _events(logs, "query_budget_exceeded") == []


@pytest.mark.anyio
async def test_a_route_s_own_budget_replaces_the_default(
    make_settings: MakeSettings, engine: AsyncEngine
) -> None:
    settings = _settings(make_settings, query_budgets={ROUTE: 20, GATHER_ROUTE: 1})
    harness = Harness(settings, engine)
    async with harness.client() as client:
        with capture_logs() as logs:
            await client.get("/api/v1/things/7", params={"queries_": 12})  # within its 20
            await client.get("/api/v1/things/7/gather", params={"children": 1})  # 2 > its 1
    [event] = _events(logs, "query_budget_exceeded")
    assert (event["route"], event["count"], event["budget"]) == (GATHER_ROUTE, 2, 1)


@pytest.mark.anyio
async def test_budgets_are_read_live(make_settings: MakeSettings, engine: AsyncEngine) -> None:
    harness = Harness(_settings(make_settings), engine)
    async with harness.client() as client:
        with capture_logs() as logs:
            await client.get("/api/v1/things/7", params={"queries_": 7})
            harness.settings = _settings(make_settings, query_budgets={ROUTE: 7})  # a reload
            await client.get("/api/v1/things/7", params={"queries_": 7})
    assert len(_events(logs, "query_budget_exceeded")) == 1


@pytest.mark.anyio
async def test_an_unmatched_request_is_checked_under_its_own_label(
    make_settings: MakeSettings, engine: AsyncEngine
) -> None:
    harness = Harness(_settings(make_settings, query_budget=1), engine)
    queries.start(RequestQueries({"method": "GET", "path": "/nowhere"}))
    counter = queries.current()
    assert counter is not None
    counter.count = 3
    with capture_logs() as logs:
        assert harness.budget.check(counter)
    assert _events(logs, "query_budget_exceeded")[0]["route"] == f"GET {UNMATCHED}"
    queries.detach()


@pytest.mark.anyio
@pytest.mark.parametrize("environment", ["staging", "production"])
async def test_requests_are_not_counted_in_staging_and_production(
    make_settings: MakeSettings, engine: AsyncEngine, environment: str
) -> None:
    harness = Harness(_settings(make_settings, environment, secret_key="s" * 64), engine)
    async with harness.client() as client:
        with capture_logs() as logs:
            await client.get("/api/v1/things/7", params={"queries_": 30})
    assert _events(logs, "query_budget_exceeded") == []
    assert harness.seen == [None]  # no counter: nothing is done per request there


@pytest.mark.anyio
async def test_development_counts(make_settings: MakeSettings, engine: AsyncEngine) -> None:
    harness = Harness(_settings(make_settings, "development"), engine)
    async with harness.client() as client:
        with capture_logs() as logs:
            await client.get("/api/v1/things/7", params={"queries_": 6})
    assert len(_events(logs, "query_budget_exceeded")) == 1


# --- the slow-query report ----------------------------------------------------------------


@pytest.mark.anyio
async def test_a_slow_statement_is_logged_with_its_route_and_no_parameter(
    make_settings: MakeSettings, engine: AsyncEngine
) -> None:
    harness = Harness(_settings(make_settings, slow_query_ms=ALWAYS_SLOW_MS), engine)
    async with harness.client() as client:
        with capture_logs() as logs:
            await client.get("/api/v1/things/7", params={"secret": SECRET})
    assert SECRET not in repr(logs)
    [event] = _events(logs, "slow_query")
    assert event["route"] == ROUTE
    assert event["statement"] == "select ?"  # the parameter as its placeholder
    assert event["threshold_ms"] == ALWAYS_SLOW_MS
    assert event["failed"] is False
    assert event["log_level"] == "warning"
    assert harness.slow_queries(ROUTE) == 1.0


@pytest.mark.anyio
async def test_slow_statements_are_reported_in_production_too(
    make_settings: MakeSettings, engine: AsyncEngine
) -> None:
    settings = _settings(
        make_settings, "production", secret_key="s" * 64, slow_query_ms=ALWAYS_SLOW_MS
    )
    harness = Harness(settings, engine)
    async with harness.client() as client:
        with capture_logs() as logs:
            await client.get("/api/v1/things/7", params={"queries_": 2})
    assert [event["route"] for event in _events(logs, "slow_query")] == [ROUTE, ROUTE]
    assert harness.slow_queries(ROUTE) == 2.0
    assert b'renum_database_slow_queries_total{route="GET /api/v1/things/{thing_id}"} 2.0' in (
        harness.metrics.exposition()
    )


@pytest.mark.anyio
@pytest.mark.parametrize("environment", ["test", "production"])
async def test_statements_of_work_a_request_started_belong_to_no_route(
    make_settings: MakeSettings, engine: AsyncEngine, environment: str
) -> None:
    """A task that detached (the engine's runner) while the request is still being answered,
    and one that runs after it was answered, issue statements of no request."""
    settings = _settings(
        make_settings, environment, secret_key="s" * 64, slow_query_ms=ALWAYS_SLOW_MS
    )
    harness = Harness(settings, engine)
    async with harness.client() as client:
        with capture_logs() as logs:
            assert (await client.get("/api/v1/things/7/background")).status_code == 200
            harness.answered.set()
            await asyncio.gather(*harness.left_running)
    routes = {event["statement"]: event["route"] for event in _events(logs, "slow_query")}
    assert routes == {"select 1 as detached": None, "select 2 as later": None}
    assert harness.slow_queries(BACKGROUND) == 2.0


@pytest.mark.anyio
async def test_nothing_is_reported_under_the_threshold(
    make_settings: MakeSettings, engine: AsyncEngine
) -> None:
    harness = Harness(_settings(make_settings), engine)
    async with harness.client() as client:
        with capture_logs() as logs:
            await client.get("/api/v1/things/7", params={"queries_": 3})
    assert _events(logs, "slow_query") == []
    assert harness.slow_queries(ROUTE) == 0.0


def test_a_deliberately_slow_statement_outside_a_request(
    make_settings: MakeSettings, sync_engine: Engine
) -> None:
    """A recursive CTE of 200,000 rows takes tens of milliseconds; the threshold is 1 ms."""
    settings = _settings(make_settings, slow_query_ms=1.0)
    metrics = Metrics("test", "test")
    instrument(sync_engine, QueryBudget(lambda: settings, metrics).hooks)
    statement = """
        with recursive numbers(n) as (
            select 1 union all select n + 1 from numbers where n < :last
        )
        select count(*) from numbers where n != :secret
    """
    with capture_logs() as logs, sync_engine.connect() as conn:
        assert conn.execute(text(statement), {"last": 200_000, "secret": SECRET}).scalar() == (
            200_000
        )
        conn.execute(text("select 1"))  # fast: not reported
    assert SECRET not in repr(logs)
    [event] = _events(logs, "slow_query")
    assert event["route"] is None
    assert event["statement"] == (
        "with recursive numbers(n) as ( select 1 union all select n + 1 from numbers "
        "where n < ? ) select count(*) from numbers where n != ?"
    )
    slow = metrics.shared.get_sample_value(
        "renum_database_slow_queries_total", {"route": BACKGROUND}
    )
    assert slow == 1.0


def test_a_failed_slow_statement_is_reported_as_failed(sync_engine: Engine) -> None:
    reported: list[SlowQuery] = []
    instrument(sync_engine, QueryHooks(lambda: ALWAYS_SLOW_MS, reported.append))
    with sync_engine.connect() as conn, pytest.raises(OperationalError):
        conn.execute(text("select * from no_such_table where name = :name"), {"name": SECRET})
    [query] = reported
    assert query.failed
    assert query.statement == "select * from no_such_table where name = ?"
    assert query.route is None


def test_a_report_that_fails_never_fails_the_statement(sync_engine: Engine) -> None:
    def broken(query: SlowQuery) -> None:
        raise RuntimeError("the report broke")

    instrument(sync_engine, QueryHooks(lambda: ALWAYS_SLOW_MS, broken))
    with capture_logs() as logs, sync_engine.connect() as conn:
        assert conn.execute(text("select 41 + 1")).scalar() == 42
    assert _events(logs, "slow_query_report_failed")[0]["error_type"] == "RuntimeError"


def test_the_default_report_logs(sync_engine: Engine) -> None:
    instrument(sync_engine, QueryHooks(lambda: ALWAYS_SLOW_MS))
    with capture_logs() as logs, sync_engine.connect() as conn:
        conn.execute(text("select 1"))
    assert _events(logs, "slow_query")[0]["statement"] == "select 1"


# --- the counter and the instrumentation ----------------------------------------------------


def test_a_counter_counts_this_context_s_statements(sync_engine: Engine) -> None:
    instrument(sync_engine, QueryHooks(lambda: NEVER_SLOW_MS))
    with sync_engine.connect() as conn:
        conn.execute(text("select 1"))  # no counter yet: counted nowhere
        counter = queries.start()
        assert queries.current() is counter
        conn.execute(text("select 1"))
        conn.execute(text("select 2"))
        assert counter.count == 2
        counter.close()  # the request ended; work it left running counts no more
        conn.execute(text("select 3"))
        assert counter.count == 2
        assert counter.route() is None
        queries.detach()
        assert queries.current() is None


@pytest.mark.anyio
async def test_threads_started_with_to_thread_count_into_the_same_counter(
    sync_engine: Engine,
) -> None:
    instrument(sync_engine, QueryHooks(lambda: NEVER_SLOW_MS))

    def work() -> None:
        with sync_engine.connect() as conn:
            conn.execute(text("select 1"))

    counter = queries.start()
    await asyncio.gather(asyncio.to_thread(work), asyncio.to_thread(work))
    assert counter.count == 2
    queries.detach()


@pytest.mark.anyio
async def test_a_detached_background_task_counts_into_no_request(sync_engine: Engine) -> None:
    instrument(sync_engine, QueryHooks(lambda: NEVER_SLOW_MS))

    async def background() -> None:
        queries.detach()  # its own copy of the context only
        with sync_engine.connect() as conn:
            conn.execute(text("select 1"))

    counter = queries.start()
    await asyncio.create_task(background())
    assert counter.count == 0
    assert queries.current() is counter
    queries.detach()


def test_instrumenting_again_replaces_the_hooks(sync_engine: Engine) -> None:
    first: list[SlowQuery] = []
    second: list[SlowQuery] = []
    instrument(sync_engine, QueryHooks(lambda: ALWAYS_SLOW_MS, first.append))
    instrument(sync_engine, QueryHooks(lambda: ALWAYS_SLOW_MS, second.append))
    counter = queries.start()
    with sync_engine.connect() as conn:
        conn.execute(text("select 1"))
    assert counter.count == 1  # counted once, not once per instrument call
    assert (len(first), len(second)) == (0, 1)
    uninstrument(sync_engine)
    uninstrument(sync_engine)  # nothing left: no error
    with sync_engine.connect() as conn:
        conn.execute(text("select 1"))
    assert counter.count == 1
    queries.detach()


def test_request_finished_leaves_a_counter_it_did_not_start(make_settings: MakeSettings) -> None:
    settings = _settings(make_settings, query_budget=1)
    budget = QueryBudget(lambda: settings, Metrics("test", "test"))
    other = queries.start()
    other.count = 10
    with capture_logs() as logs:
        budget.request_finished({"method": "GET", "path": "/x"}, 200, 0.01)
    assert _events(logs, "query_budget_exceeded") == []
    assert other.open  # not ours to close
    assert queries.current() is None


@pytest.mark.parametrize(
    ("statement", "shown"),
    [
        ("select ?", "select ?"),
        ("SELECT *\n  FROM t\n\tWHERE a = $1", "SELECT * FROM t WHERE a = $1"),
        (
            "select * from t where name = 'ada' and note = 'it''s'",
            "select * from t where name = '?' and note = '?'",
        ),
        ("insert into t values (%(a)s, %(b)s)", "insert into t values (%(a)s, %(b)s)"),
    ],
)
def test_statement_text(statement: str, shown: str) -> None:
    assert statement_text(statement) == shown


def test_statement_text_cuts_long_statements() -> None:
    rows = ", ".join(["(?, ?)"] * 5000)
    long = f"insert into t values {rows}"  # noqa: S608  (placeholders only: no SQL is run)
    shown = statement_text(long)
    assert len(shown) <= MAX_STATEMENT_CHARS
    assert shown.endswith(TRUNCATED)
    assert shown.startswith("insert into t values (?, ?), (?, ?)")
    assert statement_text("select 1", limit=5) == "sel" + TRUNCATED


# --- route templates ----------------------------------------------------------------------


class _Route:
    def __init__(self, path_format: str) -> None:
        self.path_format = path_format


@pytest.mark.parametrize(
    ("scope", "template"),
    [
        ({"path": "/nowhere"}, UNMATCHED),
        ({"path": "/api/v1/teams", "route": _Route("/teams")}, "/api/v1/teams"),
        (
            {
                "path": "/api/v1/teams/42",
                "route": _Route("/teams/{team_id}"),
                "path_params": {"team_id": 42},
            },
            "/api/v1/teams/{team_id}",
        ),
        (  # a parameter's value that equals a fixed segment
            {
                "path": "/api/v1/teams/teams",
                "route": _Route("/teams/{team_id}"),
                "path_params": {"team_id": "teams"},
            },
            "/api/v1/teams/{team_id}",
        ),
        (  # a parameter in the prefix of an including router
            {
                "path": "/api/v1/orgs/o1/teams/t1",
                "route": _Route("/teams/{team_id}"),
                "path_params": {"org": "o1", "team_id": "t1"},
            },
            "/api/v1/orgs/{org}/teams/{team_id}",
        ),
        (  # a value spanning segments ({name:path})
            {
                "path": "/static/css/site.css",
                "route": _Route("/static/{path:path}"),
                "path_params": {"path": "css/site.css"},
            },
            "/static/{path}",
        ),
        (  # no usable path_format
            {"path": "/files/f1", "route": object(), "path_params": {"file": "f1"}},
            "/files/{file}",
        ),
    ],
)
def test_route_template(scope: dict[str, Any], template: str) -> None:
    assert route_template(scope) == template
