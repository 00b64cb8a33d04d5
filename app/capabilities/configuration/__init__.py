"""The configuration capability: live reload of the settings that allow it (on SIGHUP, when
the file named by ``RENUM_CONFIG_FILE`` changes, or through
``POST /api/v1/ops/config/reload``) and the effective configuration at
``GET /api/v1/ops/config``. Profiles, sources and the rules that refuse unsafe settings are
building blocks in ``app.core`` and apply with or without this capability. Switched off with
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
)
from app.core.config import Settings
from app.core.config_sources import config_file_path
from app.core.logging import get_logger

__all__ = ["CAPABILITY", "EnvironmentConfigManager", "ReloadResult", "is_live"]

log = get_logger("app.configuration")


def install(app: FastAPI, settings: Settings) -> None:
    app.include_router(routes.router)


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

    manager = EnvironmentConfigManager(context.settings, publish)
    app.state.config_manager = manager
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[object]] = set()

    def on_sighup() -> None:
        task = loop.create_task(manager.reload("SIGHUP"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    watcher = None
    if context.settings.configuration.watch_file and config_file_path() is not None:
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
