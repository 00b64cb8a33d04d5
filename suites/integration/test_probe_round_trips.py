"""Round trips never hold their caller past its timeout, wherever the server stops answering:
during the query, or after it, while the connection is being closed (SQLAlchemy finishes that
close even when cancelled; on a hung server it waited for the command timeout, and the outage
watcher's breaker opened that much later while every request waited on its hung connection).
Health probes (``SQLAlchemyManager.on_probe_connection``, ``ping``) and sessions
(``SQLAlchemyManager.session``) alike.

In this process, no backend launched: PostgreSQL through ``qa/fault_proxy.py``, hung from inside
the round trip by an engine event."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
from faults_support import url_via
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.config import DatabaseSettings
from app.db.database import SQLAlchemyManager
from qa import services
from qa.fault_proxy import FaultProxy
from qa.polling import wait_until_async

pytestmark = pytest.mark.anyio

# Long enough that only the proxy's resumption could end a round trip held by its close.
COMMAND_TIMEOUT = 3600.0
# The test resumes the proxy after this long if the round trip has not let go of its caller:
# a bound on the failing case, never asserted on.
WATCHDOG_SECONDS = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[SQLAlchemyManager, FaultProxy]]:
    service = services.postgres()
    service.require()
    with FaultProxy(*service.address) as proxy:
        settings = DatabaseSettings(
            url=url_via(service.url, proxy.port),
            connect_timeout_seconds=3,
            command_timeout_seconds=COMMAND_TIMEOUT,
        )
        database = SQLAlchemyManager(settings)
        try:
            yield database, proxy
        finally:
            proxy.pass_through()
            await database.dispose()


async def _probe(database: SQLAlchemyManager) -> None:
    await database.ping()


async def _session(database: SQLAlchemyManager) -> None:
    async with database.session() as session:
        await session.execute(text("SELECT 1"))


# A health probe (its own connection) and a request's session (a pooled one, here with no
# breaker to end it: the database manager switched off).
ROUND_TRIPS = {"probe": (_probe, "probe_engine"), "session": (_session, "engine")}


@pytest.mark.parametrize("kind", ROUND_TRIPS)
@pytest.mark.parametrize("hang_at", ["before_cursor_execute", "after_cursor_execute"])
async def test_a_round_trip_lets_its_caller_go_while_the_server_still_hangs(
    proxied: tuple[SQLAlchemyManager, FaultProxy], hang_at: str, kind: str
) -> None:
    database, proxy = proxied
    round_trip, engine_name = ROUND_TRIPS[kind]
    await round_trip(database)  # connects and answers while all is well
    engine = getattr(database, engine_name).sync_engine
    resumed = threading.Event()
    order: list[str] = []

    def hang(*_: object) -> None:
        if not order:  # once
            order.append("hung")
            proxy.hang()

    def watchdog() -> None:
        if not resumed.wait(WATCHDOG_SECONDS):
            order.append("resumed by the watchdog")
            proxy.pass_through()

    event.listen(engine, hang_at, hang)
    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await round_trip(database)
    order.append("caller let go")
    resumed.set()
    proxy.pass_through()
    guard.join()
    event.remove(engine, hang_at, hang)

    assert order == ["hung", "caller let go"], "the round trip held its caller until it answered"
    await round_trip(database)  # the next round trip answers


async def test_a_round_trip_returns_what_its_work_returns(
    proxied: tuple[SQLAlchemyManager, FaultProxy],
) -> None:
    database, proxy = proxied
    version = await database.server_version()
    assert version.split(".")[0].isdigit()
    assert proxy.connections_accepted >= 1


async def test_a_round_trip_left_while_connecting_never_runs_its_work(
    proxied: tuple[SQLAlchemyManager, FaultProxy],
) -> None:
    database, proxy = proxied
    ran: list[str] = []

    async def work(conn: AsyncConnection) -> None:
        ran.append("work")

    proxy.hang()  # new connections stall before PostgreSQL greets them
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await database.on_probe_connection(work)
    proxy.pass_through()  # the stalled connection could now complete
    await wait_until_async(lambda: database.probes_under_way == 0, what="the round trip ended")
    assert ran == []
    await database.on_probe_connection(work)  # the next one runs
    assert ran == ["work"]
