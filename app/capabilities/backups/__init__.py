"""Backups of the database and their verification.

On SQLite, the embedded default, a backup is a snapshot taken through SQLite's online backup
API while the backend runs (``app.db.snapshots``), written beside a manifest that records what
was true when it was taken: the migration revision, each table's row count and checksum, the
file's size and SHA-256. ``BackupCatalogue`` keeps them in one directory: it takes them,
removes the oldest beyond ``backups.keep``, lists them, verifies one by restoring it into a
throwaway file and comparing it with its manifest (and records the result there), and
restores one over the database file. ``renum backup`` drives it from the command line.

With ``backups.replica_directory`` set, Litestream replicates the database continuously
(``replication``), and a restore can go back to any moment the replica covers.

On PostgreSQL, ``postgres.PostgresCatalogue`` (imported only there: it needs asyncpg)
drives pgBackRest: full, differential and incremental backups and WAL archiving into an
encrypted repository, each backup verified by recovering it to its restore point in a
throwaway server, and restores to a backup, to any moment the archived WAL covers, or to the
latest state. The manifests look the same to the watch and to ``renum backup list``.

In the server, the capability runs a ``BackupWatch``: scheduled backups
(``backups.every_hours``), the age of the newest verified backup and the result of the last
verification on ``/metrics`` and ``/health/dependencies``, and an alert while it is too old or
failed. Switched off with ``RENUM_BACKUPS__ENABLED=false``: no watch runs, nothing is taken
in the server, and ``renum backup`` still works."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.capabilities.backups.catalogue import (
    Backup,
    BackupCatalogue,
    BackupError,
    Verification,
    catalogue_for,
)
from app.capabilities.backups.replication import Replication, ReplicationError
from app.capabilities.backups.watch import BackupStatus, BackupWatch, assess
from app.capabilities.base import AppContext, Capability
from app.core.config import Settings
from app.core.logging import get_logger

log = get_logger("app.backups")

__all__ = [
    "CAPABILITY",
    "Backup",
    "BackupCatalogue",
    "BackupError",
    "BackupStatus",
    "BackupWatch",
    "Replication",
    "ReplicationError",
    "Verification",
    "assess",
    "catalogue_for",
]


@asynccontextmanager
async def running(context: AppContext) -> AsyncIterator[None]:
    """The watch over the database's backups (and Litestream's replication of SQLite)."""
    app = context.app

    def current() -> Settings:
        settings: Settings = app.state.settings  # live: a reload replaces it
        return settings

    try:
        catalogue = catalogue_for(context.settings)
    except BackupError as exc:  # in memory, a file: URI, PostgreSQL without settings
        log.warning("backups_not_watched", reason=str(exc))
        yield
        return
    replication = None
    if catalogue.replica is not None:
        replication = Replication(catalogue.database, catalogue.replica)
    watch = BackupWatch(
        catalogue, current, app.state.metrics, lambda: app.state.alerts, replication
    )
    app.state.backup_watch = watch
    try:
        if replication is not None:
            await replication.start()
        watch.start()
        yield
    finally:
        await watch.stop()
        if replication is not None:
            await replication.stop()


CAPABILITY = Capability(
    name="backups",
    summary="Backups (SQLite snapshots, pgBackRest for PostgreSQL); their age and last "
    "verification watched and alerted.",
    running=running,
)
