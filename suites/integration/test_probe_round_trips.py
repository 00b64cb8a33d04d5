"""Health round trips (``SQLAlchemyManager.on_probe_connection``, ``ping``) never hold their
caller past its timeout, wherever the server stops answering: during the query, or after it,
while the connection is being closed (SQLAlchemy finishes that close even when cancelled; on a
hung server it waited for the command timeout, and the outage watcher's breaker opened that much
later while every request waited on its hung connection).

In this process, no backend launched: PostgreSQL through ``qa/fault_proxy.py``, hung from inside
the round trip by an engine event."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
from faults_support import url_via
from sqlalchemy import event

from app.core.config import DatabaseSettings
from app.db.database import SQLAlchemyManager
from qa import services
from qa.fault_proxy import FaultProxy

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


@pytest.mark.parametrize("hang_at", ["before_cursor_execute", "after_cursor_execute"])
async def test_a_round_trip_lets_its_caller_go_while_the_server_still_hangs(
    proxied: tuple[SQLAlchemyManager, FaultProxy], hang_at: str
) -> None:
    database, proxy = proxied
    await database.ping()  # connects and answers while all is well
    resumed = threading.Event()
    order: list[str] = []

    def hang(*_: object) -> None:
        proxy.hang()
        event.remove(database.probe_engine.sync_engine, hang_at, hang)

    def watchdog() -> None:
        if not resumed.wait(WATCHDOG_SECONDS):
            order.append("resumed by the watchdog")
            proxy.pass_through()

    event.listen(database.probe_engine.sync_engine, hang_at, hang)
    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await database.ping()
    order.append("caller let go")
    resumed.set()
    proxy.pass_through()
    guard.join()

    assert order == ["caller let go"], "the round trip held its caller until the server answered"
    await database.ping()  # the next round trip answers on a fresh connection


async def test_a_round_trip_returns_what_its_work_returns(
    proxied: tuple[SQLAlchemyManager, FaultProxy],
) -> None:
    database, proxy = proxied
    version = await database.server_version()
    assert version.split(".")[0].isdigit()
    assert proxy.connections_accepted >= 1
