"""The configuration capability: live reload of the settings that allow it (on SIGHUP, when
the file named by ``RENUM_CONFIG_FILE`` changes, or through
``POST /api/v1/ops/config/reload``), the effective configuration at ``GET /api/v1/ops/config``,
its health check (the fingerprint and the last reload), and the supervisor of
``renum serve --workers N`` that validates a reload once and passes it to every worker.
Profiles, sources and the rules that refuse unsafe settings are building blocks in
``app.core`` and apply with or without this capability. Switched off with
``RENUM_CONFIGURATION__ENABLED=false``: settings change only with a restart."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.capabilities.base import AppContext, Capability
from app.capabilities.configuration import routes
from app.capabilities.configuration.manager import (
    EnvironmentConfigManager,
    ReloadResult,
    is_live,
    read_and_validate,
)
from app.capabilities.configuration.supervisor import (
    ReloadingSupervisor,
    serve_workers,
    supervised,
)
from app.core.config import Settings
from app.core.config_sources import config_file_path
from app.core.logging import get_logger

__all__ = [
    "CAPABILITY",
    "EnvironmentConfigManager",
    "ReloadResult",
    "ReloadingSupervisor",
    "is_live",
    "read_and_validate",
    "serve_workers",
]

log = get_logger("app.configuration")


def install(app: FastAPI, settings: Settings) -> None:
    app.include_router(routes.router)
    if supervised():
        # Until the lifespan installs the reload handler, a SIGHUP from the supervisor must
        # not end this worker (its default action); the worker reads the sources at start.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


async def _watch_file(manager: EnvironmentConfigManager) -> None:
    """Reload whenever the config file changes (watchfiles batches quick successive writes)."""
    from watchfiles import awatch

    path = config_file_path()
    if path is None:
        return
    path = path.resolve()
    async for _changes in awatch(path.parent, watch_filter=lambda _, name: name == str(path)):
        await manager.reload("config_file")


@asynccontextmanager
async def running(context: AppContext) -> AsyncIterator[None]:
    """The manager, a SIGHUP handler and, when a config file is named, its watcher."""
    app = context.app

    def publish(settings: Settings) -> None:
        app.state.settings = settings

    manager = EnvironmentConfigManager(context.settings, publish, audit=lambda: app.state.audit)
    manager.on_change(lambda settings: context.runtime.templates.reconfigure(settings.templates))
    manager.on_change(
        lambda settings: context.runtime.deliveries.reconfigure_smtp(settings.monitor.alerts.smtp)
    )
    app.state.config_manager = manager
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[object]] = set()

    def on_sighup() -> None:
        task = loop.create_task(manager.reload("SIGHUP"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    watcher = None
    watch = context.settings.configuration.watch_file and not supervised()
    if watch and config_file_path() is not None:  # under a supervisor, the supervisor watches
        watcher = loop.create_task(_watch_file(manager), name="renum-config-watch")
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        for task in [*tasks, *([watcher] if watcher else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


CAPABILITY = Capability(
    name="configuration",
    summary="Live reload of the settings and the /api/v1/ops/config endpoints.",
    install=install,
    running=running,
)
