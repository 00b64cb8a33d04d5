"""``renum serve --workers N``: uvicorn's multiprocess supervisor, where SIGHUP reloads the
configuration instead of restarting the workers.

uvicorn's own supervisor answers SIGHUP by replacing every worker; a configuration that no
longer validates would then fail each new worker's start and stop the server. Here the
supervisor validates the configuration once, in the parent, and passes a valid one on to every
worker as the worker's own SIGHUP (each applies it live, exactly as a single process does); a
refused one is logged once and reaches no worker. When the file named by ``RENUM_CONFIG_FILE``
is watched, the parent watches it (the workers do not) and treats a change like SIGHUP. A
worker that applied ``POST /api/v1/ops/config/reload`` asks the supervisor to pass the reload
on to the others (``notify_supervisor``). Workers know they are supervised from
``RENUM_SUPERVISOR_PID``, which the supervisor sets before it spawns them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from socket import socket

from uvicorn import Config
from uvicorn.supervisors.multiprocess import Multiprocess

from app.capabilities.configuration.manager import read_and_validate
from app.core.config import Settings
from app.core.logging import get_logger

SUPERVISOR_ENV = "RENUM_SUPERVISOR_PID"

log = get_logger("app.configuration")

Validate = Callable[[], tuple[Settings | None, list[str]]]


def supervised() -> bool:
    """Whether this process is a worker of ``ReloadingSupervisor``."""
    return SUPERVISOR_ENV in os.environ


def notify_supervisor() -> bool:
    """Ask the supervisor (when there is one) to pass a reload on to every worker."""
    pid = os.environ.get(SUPERVISOR_ENV)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError, ValueError):
        os.kill(int(pid), signal.SIGHUP)
        return True
    return False


def serve_workers(config: Config, watch: Path | None) -> None:
    """Serve ``config`` (its ``workers`` > 1) under the reloading supervisor until stopped;
    ``watch`` is the config file the supervisor watches, if any."""
    ReloadingSupervisor(config, [config.bind_socket()], watch=watch).run()


class ReloadingSupervisor(Multiprocess):
    """uvicorn's ``Multiprocess`` with Renum's SIGHUP: validate once, then reload every worker."""

    def __init__(
        self,
        config: Config,
        sockets: list[socket],
        *,
        watch: Path | None = None,
        validate: Validate = read_and_validate,
    ) -> None:
        super().__init__(config, sockets)
        self._watch = watch
        self._validate = validate
        self._stop_watching = threading.Event()

    def run(self) -> None:
        os.environ[SUPERVISOR_ENV] = str(os.getpid())  # inherited by every worker it spawns
        watcher = None
        if self._watch is not None:
            watcher = threading.Thread(
                target=self._watch_file, args=(self._watch,), name="renum-config-watch"
            )
            watcher.start()
        try:
            super().run()
        finally:
            self._stop_watching.set()
            if watcher is not None:
                watcher.join()

    def _watch_file(self, path: Path) -> None:
        from watchfiles import watch

        target = path.resolve()
        changes = watch(
            target.parent,
            watch_filter=lambda _, name: name == str(target),
            stop_event=self._stop_watching,
            rust_timeout=500,
            yield_on_timeout=False,
        )
        for _ in changes:
            self.signal_queue.append(signal.SIGHUP)  # handled on the supervisor's own loop

    def handle_hup(self) -> None:
        pids = [process.pid for process in self.processes if process.pid is not None]
        forward_reload(self._validate, pids)


def forward_reload(
    validate: Validate, pids: list[int], kill: Callable[[int, int], None] = os.kill
) -> list[int] | None:
    """Validate the configuration once; when valid, send SIGHUP to every worker and return
    those reached; when refused, log why once and return None."""
    settings, problems = validate()
    if settings is None:
        log.error("configuration_reload_refused", trigger="supervisor", problems=problems)
        return None
    reached = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # a worker that just died is replaced
            kill(pid, signal.SIGHUP)
            reached.append(pid)
    log.info("configuration_reload_forwarded", workers=reached)
    return reached
