"""System figures of one backend process, sampled in the background with psutil.

One ``sample()`` reads: the process's and the host's CPU (percent since the previous sample),
the process's resident memory and open file descriptors, the host's available memory, the
usage and free space of the disk holding the data directory, the event loop's lag (how late
the sampler's own timer fired), the database pool (size, checked out, overflow, and since the
start the checkouts that waited, their wait and the connections that failed) and the
executions this process drives and queues. Reading them costs a few system calls; the sampler
runs them in a thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import psutil

from app.db.pool import pool_status


class Figure(StrEnum):
    """The sampled figures."""

    process_cpu_percent = "process_cpu_percent"
    host_cpu_percent = "host_cpu_percent"
    process_rss_bytes = "process_rss_bytes"
    host_memory_available_bytes = "host_memory_available_bytes"
    host_memory_used_percent = "host_memory_used_percent"
    disk_used_percent = "disk_used_percent"
    disk_free_bytes = "disk_free_bytes"
    open_fds = "open_fds"
    loop_lag_ms = "loop_lag_ms"
    pool_size = "pool_size"
    pool_checked_out = "pool_checked_out"
    pool_overflow = "pool_overflow"
    pool_waits = "pool_waits"
    pool_wait_seconds = "pool_wait_seconds"
    pool_connection_errors = "pool_connection_errors"
    executions_running = "executions_running"
    executions_queued = "executions_queued"


# The figures, their units and what they say (the dashboard and the metrics read this table).
FIGURES: dict[Figure, tuple[str, str]] = {
    Figure.process_cpu_percent: ("%", "CPU used by this process (100% is one core)"),
    Figure.host_cpu_percent: ("%", "CPU used on the host, all cores"),
    Figure.process_rss_bytes: ("bytes", "resident memory of this process"),
    Figure.host_memory_available_bytes: ("bytes", "memory available on the host"),
    Figure.host_memory_used_percent: ("%", "memory used on the host"),
    Figure.disk_used_percent: ("%", "usage of the data directory's disk"),
    Figure.disk_free_bytes: ("bytes", "free space on the data directory's disk"),
    Figure.open_fds: ("count", "file descriptors this process holds open"),
    Figure.loop_lag_ms: ("ms", "how late the event loop ran a timer"),
    Figure.pool_size: ("count", "database pool size"),
    Figure.pool_checked_out: ("count", "database connections in use"),
    Figure.pool_overflow: ("count", "database connections beyond the pool size"),
    Figure.pool_waits: ("count", "checkouts that waited for a free connection, since the start"),
    Figure.pool_wait_seconds: ("s", "time checkouts waited for a free connection, since the start"),
    Figure.pool_connection_errors: ("count", "database connections that failed, since the start"),
    Figure.executions_running: ("count", "executions this process drives"),
    Figure.executions_queued: ("count", "executions waiting for a slot in this process"),
}


def data_directory(database_url: str) -> Path:
    """Where the data lives: an SQLite file's folder, else the working directory."""
    prefix = "sqlite+aiosqlite:///"
    if database_url.startswith(prefix):
        path = database_url.removeprefix(prefix).split("?", 1)[0]
        if path and path != ":memory:":
            return Path(path).expanduser().resolve().parent
    return Path.cwd()


def _pool_figures(pool: Any) -> dict[str, float | None]:
    """The pool's figures (``app.db.pool.pool_status``); None where it has no such count."""
    status = pool_status(pool)
    names = ("size", "checked_out", "overflow", "waits", "wait_seconds", "connection_errors")
    return {f"pool_{name}": status.get(name) for name in names}


@dataclass
class SystemSampler:
    """Reads the figures of ``FIGURES``; ``pool`` and ``load`` are read on each sample."""

    data_dir: Path
    pool: Callable[[], Any]
    load: Callable[[], tuple[int, int]]

    def __post_init__(self) -> None:
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent(None)  # the first call only starts the measurement
        psutil.cpu_percent(None)

    def sample(self, loop_lag_ms: float | None = None) -> dict[str, float | None]:
        """Every figure now (blocking: run it in a thread)."""
        with self._process.oneshot():
            figures: dict[str, float | None] = {
                "process_cpu_percent": self._process.cpu_percent(None),
                "process_rss_bytes": float(self._process.memory_info().rss),
                "open_fds": _open_fds(self._process),
            }
        memory = psutil.virtual_memory()
        figures["host_cpu_percent"] = psutil.cpu_percent(None)
        figures["host_memory_available_bytes"] = float(memory.available)
        figures["host_memory_used_percent"] = float(memory.percent)
        try:
            disk = psutil.disk_usage(str(self.data_dir))
            figures["disk_used_percent"] = float(disk.percent)
            figures["disk_free_bytes"] = float(disk.free)
        except OSError:  # the directory went away: no figure rather than a failed sample
            figures["disk_used_percent"] = figures["disk_free_bytes"] = None
        figures["loop_lag_ms"] = loop_lag_ms
        figures |= _pool_figures(self.pool())
        running, queued = self.load()
        figures["executions_running"] = float(running)
        figures["executions_queued"] = float(queued)
        return figures


def _open_fds(process: psutil.Process) -> float | None:
    try:
        return float(process.num_fds())
    except (AttributeError, psutil.Error):  # not on this platform
        return None


class LoopLag:
    """Measures how late the event loop runs a timer: the sampler's sleep is the timer."""

    def __init__(self) -> None:
        self._expected: float | None = None

    def expect(self, seconds: float) -> None:
        self._expected = time.monotonic() + seconds

    def woke(self) -> float | None:
        """Milliseconds past the expected wake-up (None before the first sleep)."""
        if self._expected is None:
            return None
        return max(0.0, (time.monotonic() - self._expected) * 1000)
