"""The database manager's parts on their own: the circuit breaker's states, the measured pool
(waits, connection errors, the gate, terminating what is checked out), what counts as a lost
connection and as transient, the outage watcher's rounds, the pool figures on /metrics, reads
run again after a transient error (writes never), and the missing-driver refusal at start-up
(a real process that cannot import the driver)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.capabilities.database_manager import OutageWatch, PoolMetrics
from app.capabilities.database_manager.outage import install_answers
from app.capabilities.database_manager.retry import RetryTransientReads
from app.core.config import DatabaseSettings, Settings
from app.core.errors import DatabaseUnavailable
from app.core.metrics import Metrics
from app.db.breaker import BreakerState, CircuitBreaker
from app.db.database import SQLAlchemyManager, missing_driver
from app.db.pool import ConnectionFailed, MeasuredPool, is_connection_failure, is_transient
from qa import services
from qa.launcher import REPO_ROOT

CLOSED = "postgresql+asyncpg://renum@127.0.0.1:9/renum"  # loopback; nothing listens on 9


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(failures: int = 3, clock: Clock | None = None) -> tuple[CircuitBreaker, list[str]]:
    opened: list[str] = []
    made = CircuitBreaker(
        failures,
        retry_after=lambda: 7,
        on_open=lambda: opened.append("open"),
        clock=clock or Clock(),
    )
    return made, opened


def test_the_breaker_opens_after_consecutive_failures_only() -> None:
    made, opened = breaker(failures=3)
    made.failed()
    made.failed()
    made.succeeded()  # a success in between starts the count again
    made.failed()
    made.failed()
    assert made.state is BreakerState.closed
    made.check()  # closed: goes ahead
    made.failed()
    assert made.state is BreakerState.open
    assert opened == ["open"]


def test_an_open_breaker_refuses_with_retry_after_and_counts_and_closes() -> None:
    clock = Clock()
    made, opened = breaker(failures=1, clock=clock)
    made.open("probe failed")
    made.open("again")  # already open: no second outage, no second termination
    assert (made.outages, opened) == (1, ["open"])
    for _ in range(3):
        with pytest.raises(DatabaseUnavailable) as refused:
            made.check()
    assert refused.value.status == 503
    assert refused.value.headers == {"Retry-After": "7"}
    assert made.refused == 3
    clock.now += 4.5
    made.close()
    assert (made.state, made.last_outage_seconds) == (BreakerState.closed, 4.5)
    made.check()
    made.close()  # already closed: nothing changes
    assert made.outages == 1


class Cause(Exception):
    pass


class ConnectionDoesNotExistError(Exception):
    """Named as asyncpg names it: the classification goes by class name, not by import."""


class TargetServerAttributeNotMatched(Exception):
    """asyncpg's answer when every host of a multi-host URL answers and none takes writes."""


def wrapped(orig: BaseException) -> DBAPIError:
    return DBAPIError("select 1", None, orig)


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (ConnectionFailed("cannot connect"), True),
        (wrapped(ConnectionDoesNotExistError("closed in the middle of operation")), True),
        (wrapped(ConnectionResetError()), True),
        (TargetServerAttributeNotMatched("None of the hosts match"), True),
        (DBAPIError("select 1", None, Cause(), connection_invalidated=True), True),
        (IntegrityError("insert", None, Cause("duplicate key")), False),
        (ValueError("not a database error"), False),
    ],
)
def test_what_counts_as_a_lost_connection(error: BaseException, lost: bool) -> None:
    assert is_connection_failure(error) is lost


def test_a_driver_error_caused_by_a_reset_counts_as_lost() -> None:
    orig = Cause("driver error")
    orig.__cause__ = ConnectionResetError()
    assert is_connection_failure(wrapped(orig))


def sqlite(tmp_path: Path, **fields: object) -> SQLAlchemyManager:
    return SQLAlchemyManager(
        DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}", **fields)  # type: ignore[arg-type]
    )


@pytest.mark.anyio
async def test_a_checkout_that_waits_is_counted_with_its_wait(tmp_path: Path) -> None:
    database = sqlite(tmp_path, pool_size=1, max_overflow=0)
    try:
        first = await database.engine.connect()
        await first.execute(text("select 1"))

        async def connect() -> AsyncConnection:
            return await database.engine.connect()

        second = asyncio.create_task(connect())
        await asyncio.sleep(0.05)
        assert not second.done()  # waiting for the only connection
        await first.close()
        conn = await second
        await conn.close()
        status = database.pool_status()
        assert (status["size"], status["waits"], status["connection_errors"]) == (1, 1, 0)
        assert status["wait_seconds"] > 0
        assert status["checked_out"] == 0
    finally:
        await database.dispose()


@pytest.mark.anyio
async def test_sqlite_gets_the_configured_pragmas(tmp_path: Path) -> None:
    database = sqlite(tmp_path, sqlite_busy_timeout_ms=1234, sqlite_synchronous="FULL")
    try:
        async with database.engine.connect() as conn:
            busy = (await conn.execute(text("pragma busy_timeout"))).scalar_one()
            synchronous = (await conn.execute(text("pragma synchronous"))).scalar_one()
        assert (busy, synchronous) == (1234, 2)  # FULL is 2
    finally:
        await database.dispose()


@pytest.mark.anyio
async def test_a_refused_connection_is_counted_and_told_to_the_gate() -> None:
    database = SQLAlchemyManager(DatabaseSettings(url=CLOSED, connect_timeout_seconds=2))
    made, opened = breaker(failures=2)
    database.attach_breaker(made)
    try:
        for _ in range(2):
            with pytest.raises(ConnectionFailed, match="cannot connect to the database"):
                async with database.engine.connect():
                    pass
        assert database.pool_status()["connection_errors"] == 2
        assert made.is_open
        assert opened == ["open"]
        with pytest.raises(DatabaseUnavailable):  # open: refused before any connection
            async with database.session() as session:
                await session.execute(text("select 1"))
        with pytest.raises(DatabaseUnavailable):
            await database.run_transaction(lambda conn: None)
        assert database.pool_status()["connection_errors"] == 2
        database.attach_breaker(None)  # detached: the pool tries again
        with pytest.raises(ConnectionFailed):
            async with database.engine.connect():
                pass
    finally:
        await database.dispose()


@pytest.mark.anyio
async def test_while_open_no_new_connection_is_opened_either(tmp_path: Path) -> None:
    """A checkout that passed the gate before the breaker opened may need a new connection (a
    pre-ping replacing one the breaker terminated): it is refused at once too, not left to
    wait for the connect timeout."""
    database = sqlite(tmp_path)
    made, _opened = breaker(failures=1)
    database.attach_breaker(made)
    try:
        made.open("a test")
        pool = database.engine.sync_engine.pool
        assert isinstance(pool, MeasuredPool)
        with pytest.raises(DatabaseUnavailable):
            pool._invoke_creator(None)  # type: ignore[arg-type]  # what a replacement calls
        assert made.refused == 1
        assert database.pool_status()["connection_errors"] == 0  # refused, never attempted
        made.close()
        async with database.engine.connect() as conn:
            assert (await conn.execute(text("select 1"))).scalar_one() == 1
    finally:
        await database.dispose()


@pytest.mark.anyio
async def test_opening_terminates_a_statement_hung_on_postgresql(tmp_path: Path) -> None:
    """A statement waiting on the server when the breaker opens fails at once (its connection
    is terminated), and its connection leaves the pool's count of those in use. On SQLite
    nothing is terminated (there is no server to hang on)."""
    service = services.postgres()
    service.require()
    database = SQLAlchemyManager(DatabaseSettings(url=service.url))
    made = CircuitBreaker(1, retry_after=lambda: 1, on_open=database.terminate_in_use)
    database.attach_breaker(made)

    async def hung() -> None:
        async with database.engine.connect() as conn:
            await conn.execute(text("select pg_sleep(60)"))

    try:
        waiting = asyncio.create_task(hung())
        for _ in range(1000):  # until its connection is checked out (10 s at most)
            if database.pool_stats.in_use:
                break
            await asyncio.sleep(0.01)
        assert len(database.pool_stats.in_use) == 1
        await asyncio.sleep(0.1)  # the statement is on the server
        made.open("test")
        with pytest.raises(DBAPIError):  # terminated under it, long before pg_sleep ends
            await asyncio.wait_for(waiting, timeout=30)
        assert not database.pool_stats.in_use
    finally:
        await database.dispose()
    local = sqlite(tmp_path)
    try:
        async with local.engine.connect() as conn:
            await conn.execute(text("select 1"))
            local.terminate_in_use()
            assert (await conn.execute(text("select 2"))).scalar_one() == 2
    finally:
        await local.dispose()


@pytest.mark.anyio
async def test_the_watcher_opens_on_a_failed_probe_and_closes_on_an_answer(tmp_path: Path) -> None:
    settings = Settings(database={"url": CLOSED, "connect_timeout_seconds": 2})
    down = SQLAlchemyManager(settings.database)
    made, _ = breaker()
    watch = OutageWatch(down, made, lambda: settings)
    try:
        await watch.round()
        assert made.is_open
    finally:
        await down.dispose()
    up = sqlite(tmp_path)
    watch = OutageWatch(up, made, lambda: settings)
    try:
        async with up.engine.connect():  # the file exists: a probe never creates it
            pass
        await watch.round()
        assert not made.is_open
        assert watch.probes == 1
        watch.start()
        await watch.stop()
    finally:
        await up.dispose()


@pytest.mark.anyio
async def test_the_figures_reach_metrics_as_counters_and_a_gauge(tmp_path: Path) -> None:
    database = sqlite(tmp_path)
    made, _ = breaker(failures=1)
    database.attach_breaker(made)
    metrics = Metrics("test", "test")
    PoolMetrics(metrics, database)
    try:
        made.open("test")
        with pytest.raises(DatabaseUnavailable):
            made.check()
        text_format = metrics.exposition().decode()
        assert "renum_database_breaker_open 1.0" in text_format
        assert "renum_database_outages_total 1.0" in text_format
        assert "renum_database_refused_requests_total 1.0" in text_format
        made.close()
        again = metrics.exposition().decode()  # folded twice: counted once
        assert "renum_database_outages_total 1.0" in again
        assert "renum_database_breaker_open 0.0" in again
    finally:
        await database.dispose()


def shim(tmp_path: Path, module: str) -> Path:
    """A folder that makes ``import module`` fail, put first on the path of a child process."""
    package = tmp_path / "shim" / module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f'raise ModuleNotFoundError("No module named {module!r}", name={module!r})\n'
    )
    return package.parent


@pytest.mark.parametrize(
    ("url", "module"),
    [(CLOSED, "asyncpg"), ("sqlite+aiosqlite:///./renum.db", "aiosqlite")],
)
def test_a_missing_driver_stops_the_start_with_the_install_command(
    tmp_path: Path, url: str, module: str
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RENUM_")},
        "PYTHONPATH": os.pathsep.join([str(shim(tmp_path, module)), str(REPO_ROOT)]),
        "RENUM_DATABASE__URL": url,
        "COLUMNS": "200",
    }
    for command in (["doctor"], ["db", "current"]):
        done = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
            [sys.executable, "-m", "app", *command],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert f"python -m pip install '{module}" in done.stderr
        assert "Traceback" not in done.stderr
    factory = subprocess.run(
        [sys.executable, "-c", "from app.main import create_app; create_app()"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "MissingDriver" in factory.stderr
    assert f"driver `{module}` cannot be imported" in factory.stderr


def test_an_installed_driver_is_no_problem() -> None:
    assert missing_driver(DatabaseSettings()) is None
    assert missing_driver(DatabaseSettings(url=CLOSED)) is None


class Conflict(Exception):
    """A driver error carrying a SQLSTATE, as asyncpg's and SQLAlchemy's adapters do."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


class OperationalError(Exception):
    """Named as sqlite3 names it."""


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (wrapped(Conflict("40001")), True),  # serialization failure
        (wrapped(Conflict("40P01")), True),  # deadlock
        (wrapped(OperationalError("database is locked")), True),
        (ConnectionResetError(), True),
        (wrapped(Conflict("23505")), False),  # unique violation: the same again fails again
        (IntegrityError("insert", None, Cause("duplicate key")), False),
    ],
)
def test_what_counts_as_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def retrying_app(failures: int, retries: int) -> tuple[FastAPI, list[str]]:
    """An app whose GET and POST fail with a deadlock ``failures`` times, then answer."""
    app = FastAPI()
    app.state.settings = Settings(database_manager={"transient_retries": retries})
    app.state.database = type("Database", (), {"breaker": None})()
    calls: list[str] = []

    def flaky(method: str) -> dict[str, str]:
        calls.append(method)
        if len(calls) <= failures:
            raise wrapped(Conflict("40P01"))
        return {"answer": method}

    app.get("/api/v1/thing")(lambda: flaky("GET"))
    app.post("/api/v1/thing")(lambda: flaky("POST"))
    install_answers(app)
    app.add_middleware(RetryTransientReads, settings=lambda: app.state.settings)
    return app, calls


@pytest.mark.anyio
async def test_a_read_that_met_a_deadlock_is_run_again_before_anyone_sees_it() -> None:
    app, calls = retrying_app(failures=2, retries=3)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as http:
        response = await http.get("/api/v1/thing")
    assert (response.status_code, response.json()) == (200, {"answer": "GET"})
    assert calls == ["GET"] * 3


@pytest.mark.anyio
async def test_a_read_still_failing_after_its_retries_answers_503_once() -> None:
    app, calls = retrying_app(failures=10, retries=2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as http:
        response = await http.get("/api/v1/thing")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.headers["content-type"] == "application/problem+json"
    assert calls == ["GET"] * 3  # the first try and two retries


@pytest.mark.anyio
async def test_a_write_is_never_run_again() -> None:
    app, calls = retrying_app(failures=1, retries=3)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as http:
        response = await http.post("/api/v1/thing")
    assert response.status_code == 503
    assert calls == ["POST"]
