"""A fault-injection TCP proxy for tests: put it between the backend and a real service
(PostgreSQL, Redis, a model provider, ...) and make that service misbehave on demand without
touching the shared instance.

    with FaultProxy("127.0.0.1", 6379) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"   # give this to the backend
        proxy.hang()            # accepts TCP, never answers (new and live connections stall)
        proxy.add_latency(0.2)  # every chunk waits 200 ms in each direction
        proxy.cut()             # resets every live connection now
        proxy.refuse()          # stops listening: connects get "connection refused"
        proxy.pass_through()    # back to normal (listening again on the same port)

The proxy runs its own event loop in a background thread, so synchronous and asynchronous
tests drive it the same way. ``bytes_up`` / ``bytes_down`` count what went through, and
``connections_accepted`` counts connections, so a test can prove a code path made no calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

CHUNK = 65536


class FaultProxy:
    """A TCP proxy to ``upstream_host:upstream_port`` with switchable faults."""

    def __init__(
        self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = port
        self.latency = 0.0
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections_accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._init_and_listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def live_connections(self) -> int:
        return len(self._writers) // 2

    # --- faults ---------------------------------------------------------------------------

    def pass_through(self) -> None:
        """Forward everything, without added latency, listening again if refusing."""
        self.latency = 0.0
        self._call(self._resume())

    def refuse(self) -> None:
        """Stop listening (new connections are refused) and reset the live ones."""
        self._call(self._close_listener())
        self.cut()

    def hang(self) -> None:
        """Accept connections but forward nothing, on new and live connections alike."""
        self._call(self._set_flowing(False))

    def add_latency(self, seconds: float) -> None:
        """Delay every forwarded chunk (each direction) by ``seconds``."""
        if seconds < 0:
            raise ValueError("latency cannot be negative")
        self.latency = seconds

    def cut(self) -> None:
        """Reset every live connection now; the proxy keeps its current mode."""
        self._call(self._abort_all())

    # --- inside the proxy's loop ----------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, object]) -> None:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        future.result(10)

    async def _init_and_listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _resume(self) -> None:
        if self._server is None:
            await self._listen()
        await self._set_flowing(True)

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _shutdown(self) -> None:
        await self._close_listener()
        await self._abort_all()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Cancelled only by stop(): end quietly (asyncio's stream callback reports a task that
        # ends cancelled as an error).
        with contextlib.suppress(asyncio.CancelledError):
            await self._proxy(reader, writer)

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        self.connections_accepted += 1
        self._writers.add(writer)
        try:
            await self._flowing.wait()
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self._writers.discard(writer)
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pump(reader, up_writer, upstream=True),
            self._pump(up_reader, writer, upstream=False),
            return_exceptions=True,
        )
        for end in (writer, up_writer):
            self._writers.discard(end)
            end.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        assert self._flowing is not None
        try:
            while data := await reader.read(CHUNK):
                await self._flowing.wait()
                if self.latency:
                    await asyncio.sleep(self.latency)
                # Counted before sending, so a peer that got the bytes sees them counted.
                if upstream:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()
