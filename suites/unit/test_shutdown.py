"""Graceful shutdown in-process: ``GracefulShutdown`` (begin once, its steps, held streams,
the server's signal handlers wrapped and a uvicorn server bounded), and what the shutdown
ends: event streams and waits on a closed hub. Signals are raised in this process with a
Python handler installed first, so a failure can never kill the test run."""

from __future__ import annotations

import asyncio
import functools
import signal
import uuid
from collections.abc import Iterator
from types import FrameType, SimpleNamespace
from typing import Any

import pytest
import uvicorn

from app.core import shutdown as shutdown_module
from app.core.shutdown import GracefulShutdown
from app.services import executions as executions_module
from app.services.events import EventHub, StreamsClosed
from app.services.executions import event_stream, wait_for_end
from qa.polling import wait_until_async

# Generous: only a broken implementation ever waits this long.
PATIENCE_SECONDS = 30.0


class Recorder:
    """A server's signal handler: records what it was called with."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, sig: int, frame: FrameType | None) -> None:
        self.calls.append(sig)


@pytest.fixture
def server_handler() -> Iterator[Recorder]:
    """A Python SIGTERM handler, as a server installs one; the original is put back after."""
    recorder = Recorder()
    original = signal.signal(signal.SIGTERM, recorder)
    try:
        yield recorder
    finally:
        signal.signal(signal.SIGTERM, original)


# Yield to the loop's tasks until a condition holds (the patience only guards a hang).
until = functools.partial(wait_until_async, timeout=PATIENCE_SECONDS)


async def settle(rounds: int = 20) -> None:
    """Let the event loop run every callback that is ready, a few times over."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def test_begin_runs_every_step_once_even_when_one_fails() -> None:
    async def scenario() -> list[str]:
        shutdown = GracefulShutdown(5.0)
        ran: list[str] = []
        shutdown.on_begin(lambda: ran.append("first"))
        shutdown.on_begin(lambda: 1 / 0)
        shutdown.on_begin(lambda: ran.append("third"))
        assert not shutdown.begun
        shutdown.begin("test")
        shutdown.begin("again")
        await asyncio.wait_for(shutdown.wait(), PATIENCE_SECONDS)
        assert shutdown.begun
        return ran

    assert asyncio.run(scenario()) == ["first", "third"]


def test_held_streams_are_counted_until_they_end() -> None:
    async def scenario() -> None:
        shutdown = GracefulShutdown(5.0)
        assert await shutdown.streams_closed(0)
        with shutdown.hold(), shutdown.hold():
            assert shutdown.open_streams == 2
            assert not await shutdown.streams_closed(0.01)
        assert shutdown.open_streams == 0
        assert await shutdown.streams_closed(0)

    asyncio.run(scenario())


def test_a_signal_begins_the_shutdown_and_reaches_the_server_once_streams_end(
    server_handler: Recorder,
) -> None:
    async def scenario() -> None:
        shutdown = GracefulShutdown(5.0)
        ended: list[str] = []
        shutdown.on_begin(lambda: ended.append("streams"))
        shutdown.hook_signals()
        try:
            with shutdown.hold():
                signal.raise_signal(signal.SIGTERM)
                await asyncio.wait_for(shutdown.wait(), PATIENCE_SECONDS)
                assert ended == ["streams"]
                await settle()
                assert server_handler.calls == []  # a stream is still saying goodbye
            await until(lambda: server_handler.calls == [signal.SIGTERM])
            signal.raise_signal(signal.SIGTERM)  # a second signal goes straight through
            assert server_handler.calls == [signal.SIGTERM, signal.SIGTERM]
        finally:
            shutdown.unhook_signals()
        assert signal.getsignal(signal.SIGTERM) is server_handler

    asyncio.run(scenario())


def test_a_stream_that_never_ends_does_not_hold_the_server(
    server_handler: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutdown_module, "STREAM_GOODBYE_SECONDS", 0.05)

    async def scenario() -> None:
        shutdown = GracefulShutdown(5.0)
        shutdown.hook_signals()
        try:
            with shutdown.hold():
                signal.raise_signal(signal.SIGTERM)
                await until(lambda: server_handler.calls == [signal.SIGTERM])
        finally:
            shutdown.unhook_signals()

    asyncio.run(scenario())


def test_an_unbounded_uvicorn_server_gets_the_shutdown_timeout() -> None:
    server = uvicorn.Server(uvicorn.Config(app=lambda *args: None))
    assert server.config.timeout_graceful_shutdown is None
    original = signal.signal(signal.SIGTERM, server.handle_exit)

    async def scenario() -> None:
        shutdown = GracefulShutdown(3.0)
        shutdown.hook_signals()
        try:
            signal.raise_signal(signal.SIGTERM)
            await until(lambda: server.should_exit)
        finally:
            shutdown.unhook_signals()

    try:
        asyncio.run(scenario())
    finally:
        signal.signal(signal.SIGTERM, original)
    timeout = server.config.timeout_graceful_shutdown
    assert timeout is not None
    assert 0 < timeout <= 3.0


def test_a_bounded_uvicorn_server_keeps_its_own_timeout() -> None:
    server = uvicorn.Server(uvicorn.Config(app=lambda *args: None, timeout_graceful_shutdown=9))
    original = signal.signal(signal.SIGTERM, server.handle_exit)

    async def scenario() -> None:
        shutdown = GracefulShutdown(3.0)
        shutdown.hook_signals()
        try:
            signal.raise_signal(signal.SIGTERM)
            await until(lambda: server.should_exit)
        finally:
            shutdown.unhook_signals()

    try:
        asyncio.run(scenario())
    finally:
        signal.signal(signal.SIGTERM, original)
    assert server.config.timeout_graceful_shutdown == 9


def test_without_a_server_handler_nothing_is_hooked() -> None:
    original = signal.signal(signal.SIGTERM, signal.SIG_DFL)

    async def scenario() -> None:
        shutdown = GracefulShutdown(3.0)
        shutdown.hook_signals()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        shutdown.unhook_signals()

    try:
        asyncio.run(scenario())
    finally:
        signal.signal(signal.SIGTERM, original)


# --- what the shutdown ends -----------------------------------------------------------------


class _Session:
    async def get(self, model: Any, key: Any) -> Any:
        return SimpleNamespace(status="running")


class _Database:
    """Reads an execution that runs and has no events yet."""

    def session(self) -> Any:
        database = self

        class _Context:
            async def __aenter__(self) -> _Session:
                database.reads += 1
                return _Session()

            async def __aexit__(self, *exc: object) -> None:
                return None

        return _Context()

    def __init__(self) -> None:
        self.reads = 0


class _NoEvents:
    def __init__(self, session: Any) -> None:
        pass

    async def events(self, execution_id: uuid.UUID, *, after: int, limit: int) -> list[Any]:
        return []


def test_closing_the_hub_ends_a_waiting_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executions_module, "ExecutionRepository", _NoEvents)

    async def scenario() -> None:
        hub, database = EventHub(), _Database()
        received: list[Any] = []

        async def read() -> None:
            async for event in event_stream(database, hub, uuid.uuid4(), 0, PATIENCE_SECONDS):  # type: ignore[arg-type]
                received.append(event)

        reader = asyncio.create_task(read())
        await until(lambda: database.reads == 1)  # read once, now waiting for news
        hub.close()
        with pytest.raises(StreamsClosed):
            await asyncio.wait_for(reader, PATIENCE_SECONDS)
        assert received == []
        with pytest.raises(StreamsClosed):  # a stream opened afterwards ends at once
            async for _ in event_stream(database, hub, uuid.uuid4(), 0, PATIENCE_SECONDS):  # type: ignore[arg-type]
                pass
        assert database.reads == 1

    asyncio.run(scenario())


def test_closing_the_hub_ends_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        hub, database = EventHub(), _Database()
        waiting = asyncio.create_task(
            wait_for_end(database, hub, uuid.uuid4(), PATIENCE_SECONDS)  # type: ignore[arg-type]
        )
        await until(lambda: database.reads == 1)
        hub.close()
        await asyncio.wait_for(waiting, PATIENCE_SECONDS)
        await asyncio.wait_for(
            wait_for_end(database, hub, uuid.uuid4(), PATIENCE_SECONDS),  # type: ignore[arg-type]
            PATIENCE_SECONDS,
        )
        assert database.reads == 1

    asyncio.run(scenario())


def test_a_runner_whose_release_fails_still_stops() -> None:
    """The database is gone at shutdown: the executions will be resumed once their heartbeat
    is stale; stopping neither raises nor hangs, and later submissions are refused."""
    from app.core.config import ExecutionSettings
    from app.services.engine.runner import InProcessRunner

    class _Gone:
        async def run_transaction(self, work: Any) -> Any:
            raise ConnectionError("the database is gone")

    async def scenario() -> None:
        engine = SimpleNamespace(owner="this-process")
        runner = InProcessRunner(engine, _Gone(), ExecutionSettings())  # type: ignore[arg-type]
        await asyncio.wait_for(runner.stop(), PATIENCE_SECONDS)
        runner.submit(uuid.uuid4())
        assert runner._running == {}

    asyncio.run(scenario())
