"""Graceful shutdown as the application sees it: one ``GracefulShutdown`` per running app
(``app.state.shutdown``) that says when the process has been asked to stop, so that work
which never ends by itself (event streams, long waits, running executions) ends at once
instead of holding the server open.

Uvicorn (under ``renum serve`` or started directly) stops listening on SIGTERM or SIGINT, then
waits for open connections to finish (for ever unless ``timeout_graceful_shutdown`` is set) and
only then runs the application's lifespan shutdown. A Server-Sent Events stream or a WebSocket
never finishes by itself, so the application must learn of the shutdown when it begins:
``hook_signals`` (called by the lifespan at start-up, in the main thread) wraps the server's
own SIGTERM and SIGINT handlers. On the first signal:

1. the shutdown begins (``begin``): the event that stream loops and waits watch is set and the
   callbacks registered with ``on_begin`` run (the runtime closes its event hub and releases
   its running executions, so another process resumes them at once);
2. the streams held with ``hold`` end (an SSE stream ends, a WebSocket closes with 1001 "going
   away"); this is awaited for at most ``STREAM_GOODBYE_SECONDS``, so their goodbyes go out
   before the server cuts the connections;
3. the server's handler runs as if it had been called directly. When that server is a
   ``uvicorn.Server`` without a graceful timeout, it first gets what is left of
   ``shutdown_timeout_seconds`` as one: requests still open past it are cancelled, and the
   process exits in bounded time however uvicorn was started.

A second signal goes straight to the server (a second Ctrl+C still forces the exit). Without
a server handler to wrap (tests that drive the app in-process), nothing is hooked, and the
lifespan begins the shutdown itself when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from app.core.logging import get_logger

log = get_logger("app.shutdown")

# Longest wait for open streams to say goodbye before the server is told to stop.
STREAM_GOODBYE_SECONDS = 1.0
_SIGNALS = (signal.SIGTERM, signal.SIGINT)

SignalHandler = Callable[[int, FrameType | None], Any]


class GracefulShutdown:
    """The process's shutdown: whether it has begun, what runs when it does, and the streams
    that must end before the server closes their connections."""

    def __init__(self, timeout_seconds: float) -> None:
        self.timeout_seconds = timeout_seconds
        self._begun = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._held = 0
        self._callbacks: list[Callable[[], object]] = []
        self._previous: dict[int, SignalHandler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._began_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what the application uses ----------------------------------------------------------

    @property
    def begun(self) -> bool:
        return self._begun.is_set()

    async def wait(self) -> None:
        """Return once the shutdown has begun."""
        await self._begun.wait()

    def on_begin(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` (synchronous; it may start tasks) when the shutdown begins."""
        self._callbacks.append(callback)

    def begin(self, reason: str) -> None:
        """Begin the shutdown (once; later calls do nothing)."""
        if self._begun.is_set():
            return
        self._begun.set()
        with contextlib.suppress(RuntimeError):
            self._began_at = asyncio.get_running_loop().time()
        log.info("shutdown_started", reason=reason, timeout_seconds=self.timeout_seconds)
        for callback in self._callbacks:
            try:
                callback()
            except Exception as exc:  # one failing step must not stop the others
                log.error("shutdown_step_failed", error_type=type(exc).__name__, exc_info=exc)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Mark a live stream open for as long as the block runs; the server is told to stop
        only once every held stream has ended (or ``STREAM_GOODBYE_SECONDS`` passed)."""
        self._held += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._held -= 1
            if self._held == 0:
                self._idle.set()

    @property
    def open_streams(self) -> int:
        return self._held

    async def streams_closed(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for every held stream to end; whether they all did."""
        try:
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    # -- the server's signals ---------------------------------------------------------------

    def hook_signals(self) -> None:
        """Wrap the server's SIGTERM and SIGINT handlers (see the module's description). Call
        from the running event loop; does nothing outside the main thread or when no server
        installed a handler of its own."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            previous = signal.getsignal(sig)
            if not callable(previous) or previous is signal.default_int_handler:
                continue
            self._previous[sig] = previous
            signal.signal(sig, self._on_signal)

    def unhook_signals(self) -> None:
        """Put the server's handlers back (where ours is still installed)."""
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous)
        self._previous.clear()

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes: hand over to the event loop.
        loop = self._loop
        if self.begun or loop is None or loop.is_closed():
            self._forward(sig, frame)
            return
        try:
            loop.call_soon_threadsafe(self._begin_then_forward, sig)
        except RuntimeError:  # the loop is closing: nothing left to end gracefully
            self._forward(sig, frame)

    def _begin_then_forward(self, sig: int) -> None:
        if self.begun:  # a second signal, or the lifespan is already ending
            self._forward(sig, None)
            return
        self.begin(f"signal {signal.Signals(sig).name}")
        task = asyncio.get_running_loop().create_task(self._forward_when_streams_closed(sig))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward_when_streams_closed(self, sig: int) -> None:
        try:
            await self.streams_closed(min(STREAM_GOODBYE_SECONDS, self.timeout_seconds))
        finally:
            self._bound_uvicorn(sig)
            self._forward(sig, None)

    def _bound_uvicorn(self, sig: int) -> None:
        """Give an unbounded uvicorn server what is left of the shutdown timeout as its
        graceful timeout, so that it cancels requests still open past it."""
        import uvicorn

        server = getattr(self._previous.get(sig), "__self__", None)
        if not isinstance(server, uvicorn.Server):
            return
        if server.config.timeout_graceful_shutdown is not None:
            return
        elapsed = 0.0
        if self._began_at is not None:
            elapsed = asyncio.get_running_loop().time() - self._began_at
        # uvicorn's annotation says int; it only compares and sleeps with the value.
        remaining: Any = max(0.1, self.timeout_seconds - elapsed)
        server.config.timeout_graceful_shutdown = remaining

    def _forward(self, sig: int, frame: FrameType | None) -> None:
        previous = self._previous.get(sig)
        if previous is not None:
            previous(sig, frame)
