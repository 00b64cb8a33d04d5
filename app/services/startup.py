"""The base start-up: apply pending migrations when the database answers, then create the first
admin on an empty database. A start whose database is down, hung or not yet migratable does not
crash or hang: it serves what it can and retries both in the background, at
``RENUM_DATABASE__RETRY_INTERVAL_SECONDS``, until they succeed. Capabilities hear about a late
migration through ``on_migrated`` (the health monitor re-reads the schema at once)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable

from app.core.config import Settings
from app.core.logging import get_logger
from app.db import migrate
from app.db.database import SQLAlchemyManager
from app.services.bootstrap import BootstrapPasswordLeft, bootstrap_admin

log = get_logger("app.startup")


class StartUp:
    """Migrations and the first admin, now or, after a degraded start, as soon as possible."""

    def __init__(self, settings: Settings, database: SQLAlchemyManager) -> None:
        self.settings = settings
        self.database = database
        self.migrated = not settings.database.auto_migrate
        self.finished = asyncio.Event()  # set once the first admin check has run
        self._listeners: list[Callable[[], Awaitable[None]]] = []
        self._retry: asyncio.Task[None] | None = None

    def on_migrated(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Call ``listener`` when migrations that start-up had to skip are applied later."""
        self._listeners.append(listener)

    async def migrate_if_possible(self) -> bool:
        """Apply pending migrations when the database answers within
        ``RENUM_DATABASE__CONNECT_TIMEOUT_SECONDS``; return whether they were applied. A
        database that is down, hung or cannot be migrated is logged (the health checks say why,
        with the fix) instead of crashing or hanging start-up. An SQLite file has no server
        to wait for: migrating creates it when it does not exist yet."""
        if not self.settings.database.is_sqlite:
            try:
                async with asyncio.timeout(self.settings.database.connect_timeout_seconds):
                    await self.database.ping()
            except Exception as exc:  # unreachable or hung
                log.error(
                    "auto_migrate_skipped",
                    reason="database not answering",
                    error_type=type(exc).__name__,
                )
                return False
        try:
            await migrate.upgrade(self.database.engine)
        except Exception as exc:  # the driver's message may carry the URL: its type only
            inner = getattr(exc, "orig", None) or exc
            log.error("auto_migrate_failed", error_type=type(inner).__name__)
            return False
        return True

    async def begin(self) -> None:
        """Migrate and bootstrap now; on failure, keep retrying in the background."""
        if not self.migrated:
            self.migrated = await self.migrate_if_possible()
        if self.migrated and await self._try_bootstrap():
            return
        self._retry = asyncio.create_task(self._finish_later(), name="renum-start-up-retry")

    async def _try_bootstrap(self) -> bool:
        try:
            async with asyncio.timeout(self.settings.database.connect_timeout_seconds):
                await bootstrap(self.settings, self.database)
        except BootstrapPasswordLeft:
            raise  # a configuration error: the start stops with its message
        except Exception as exc:  # the database went away, or is not migrated yet
            log.warning("start_up_retry_failed", error_type=type(exc).__name__)
            return False
        self.finished.set()
        return True

    async def _finish_later(self) -> None:
        interval = self.settings.database.retry_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                if not self.migrated and await self.migrate_if_possible():
                    self.migrated = True
                    log.info("auto_migrate_completed")
                    for listener in self._listeners:
                        await listener()
            except Exception as exc:  # a listener failed: the next round carries on
                log.warning("start_up_retry_failed", error_type=type(exc).__name__)
            if self.migrated and await self._try_bootstrap():
                return

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry


async def bootstrap(settings: Settings, database: SQLAlchemyManager) -> None:
    """Create the first admin on an empty database."""
    async with database.session() as session:
        created = await bootstrap_admin(session, settings)
    if created is None:
        return
    if not created.created:
        log.warning(
            "bootstrap_admin_not_created",
            reason=f"{settings.environment.value} never generates a password",
            fix="renum users create-admin --email EMAIL",
        )
        return
    log.info("bootstrap_admin_created", email=created.email)
    if created.generated_password is not None:
        # Printed once to the console, deliberately not through the logger.
        print(
            f"\nRenum created the first admin: {created.email}\n"
            f"Its generated password (shown once): {created.generated_password}\n",
            file=sys.stderr,
            flush=True,
        )
