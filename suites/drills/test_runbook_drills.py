"""The backups runbook (docs/backups.md, "Runbook"), rehearsed with the commands it gives.

On SQLite, a backend replicating to a Litestream replica, with snapshots beside it:

- the database file corrupted: stop the backend, ``renum backup verify``,
  ``renum backup restore --yes``, start it: the replica's latest state is back;
- rows changed by mistake (or a migration gone wrong): stop the backend,
  ``renum backup restore --to <a moment before> --yes``, start it: the rows are as they were;
- an account deleted by mistake: ``renum backup restore --yes`` with ``RENUM_DATABASE__URL``
  at another file (and ``RENUM_BACKUPS__DIRECTORY`` at the backups), while the backend goes
  on: the copy holds the account.

On PostgreSQL, a private cluster archiving its WAL with pgBackRest:

- a data file corrupted: stop PostgreSQL, ``renum backup restore --yes``, start it: the
  damaged table reads again and nothing committed is lost;
- rows deleted by mistake (or a migration gone wrong): stop PostgreSQL,
  ``renum backup restore --to <a moment before> --yes``, start it: the rows are back;
- an account deleted by mistake while the service goes on: ``renum backup restore --to <a
  moment before> --into <empty directory> --yes`` and a second server on that copy, which
  holds the account, while the live server is untouched and the copy archives nothing.

The lost disk is ``test_backup_drills.py``'s, on both databases.
"""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from drill_support import (
    ARCHIVING,
    account_names,
    archive_with_pgbackrest,
    ok,
    postgres_settings,
    renum,
)

from app.capabilities.backups.replication import ReplicationError, restore_replica
from qa.client import API, ApiClient
from qa.factories import DEFAULT_PASSWORD, expect, unique_email, unique_name
from qa.launcher import LaunchedBackend
from qa.pg_cluster import PrivateCluster, scratch_directory
from qa.polling import wait_until


class Rehearsal:
    """A cluster with Renum's schema, archiving, and a full backup taken."""

    def __init__(self, cluster: PrivateCluster, backups: Path) -> None:
        self.cluster = cluster
        self.backups = backups
        self.settings = postgres_settings(cluster, backups)

    def renum(self, *args: str) -> str:
        return ok(*args, **self.settings)

    def add(self, name: str) -> None:
        self.cluster.query(
            "INSERT INTO accounts (id, name, name_key, is_platform, active_executions, "
            "created_at, updated_at) VALUES ($1, $2, $2, false, 0, now(), now())",
            uuid.uuid4(),
            name,
            database="renum",
        )

    def delete(self, name: str) -> None:
        self.cluster.query("DELETE FROM accounts WHERE name = $1", name, database="renum")

    def names(self, cluster: PrivateCluster | None = None) -> set[str]:
        rows = (cluster or self.cluster).query("SELECT name FROM accounts", database="renum")
        return {row[0] for row in rows}

    def now(self) -> str:
        (moment,) = self.cluster.query("SELECT clock_timestamp()")
        return str(moment[0].astimezone(UTC).isoformat())


def histories(backups: Path) -> list[Path]:
    """The timeline history files archived in the repository (a promotion writes one)."""
    return list((backups / "repository" / "archive").rglob("*.history*"))


@pytest.fixture
def rehearsal() -> Iterator[Rehearsal]:
    backups = scratch_directory("renum-runbook-backups-")
    with PrivateCluster(scratch_directory("renum-runbook-pg-"), ARCHIVING) as cluster:
        ready = Rehearsal(cluster, backups)
        archive_with_pgbackrest(cluster, ready.settings)
        ready.add("before-the-backup")
        ready.renum("backup", "run", "--type", "full")
        yield ready
    shutil.rmtree(backups, ignore_errors=True)


def test_a_corrupted_data_file(rehearsal: Rehearsal) -> None:
    rehearsal.add("after-the-backup")
    (relation,) = rehearsal.cluster.query(
        "SELECT pg_relation_filepath('accounts')", database="renum"
    )
    rehearsal.renum("backup", "run")  # the WAL up to here archived on the way
    rehearsal.cluster.stop()
    damaged = rehearsal.cluster.data / relation[0]
    damaged.write_bytes(b"\xff" * damaged.stat().st_size)
    rehearsal.cluster.start()
    with pytest.raises(asyncpg.PostgresError, match="invalid page"):
        rehearsal.names()

    rehearsal.cluster.stop()  # the runbook: stop, restore the latest state, start
    rehearsal.renum("backup", "restore", "--yes")
    rehearsal.cluster.start()
    assert {"before-the-backup", "after-the-backup"} <= rehearsal.names()


def test_rows_deleted_by_mistake(rehearsal: Rehearsal) -> None:
    rehearsal.add("precious")
    before = rehearsal.now()
    rehearsal.delete("precious")
    rehearsal.renum("backup", "run")  # the WAL up to here archived on the way
    rehearsal.cluster.stop()

    rehearsal.renum("backup", "restore", "--to", before, "--yes")
    rehearsal.cluster.start()
    assert "precious" in rehearsal.names()
    # Promoted on a new timeline, the live server archives its history (which a copy must not).
    wait_until(lambda: histories(rehearsal.backups), timeout=60, what="the timeline's history")


def test_an_account_deleted_while_the_service_goes_on(rehearsal: Rehearsal) -> None:
    rehearsal.add("deleted-by-mistake")
    before = rehearsal.now()
    rehearsal.delete("deleted-by-mistake")
    rehearsal.renum("backup", "run")  # the WAL up to here archived on the way

    copy = PrivateCluster(scratch_directory("renum-runbook-copy-"))  # its own port and socket
    try:
        restore = ("backup", "restore", "--to", before, "--into", str(copy.data), "--yes")
        rehearsal.renum(*restore)
        refused = renum(*restore, **rehearsal.settings)
        assert refused.returncode == 2
        assert "not empty" in refused.stderr
        copy.configure()
        copy.start()
        assert "deleted-by-mistake" in rehearsal.names(copy)
        assert "deleted-by-mistake" not in rehearsal.names()  # the live server is untouched
        (archiving,) = copy.query("SHOW archive_mode")
        assert archiving[0] == "off"  # the copy never writes into the repository
    finally:
        copy.__exit__(None, None, None)


# --- SQLite -----------------------------------------------------------------------------------


class SQLiteRehearsal:
    """A backend on SQLite replicating to ``replica``, and ``renum`` with its settings."""

    def __init__(self, backend: LaunchedBackend, replica: Path) -> None:
        self.backend = backend
        self.replica = replica
        self.url = backend.env["RENUM_DATABASE__URL"]
        self.database = backend.sqlite_file
        self.settings = {
            "RENUM_DATABASE__URL": self.url,
            "RENUM_BACKUPS__REPLICA_DIRECTORY": str(replica),
        }

    def renum(self, *args: str) -> str:
        return ok(*args, **self.settings)

    def add(self, name: str) -> None:
        with ApiClient(self.backend.base_url) as client:
            admin = client.login(self.backend.admin_email, self.backend.admin_password)
            body = {"name": name, "owner_email": unique_email(), "owner_password": DEFAULT_PASSWORD}
            expect(admin.post(f"{API}/accounts", json=body), 201)

    def names(self, database: Path | None = None) -> set[str]:
        return account_names(database or self.database)

    def replicated(self, check: Callable[[set[str]], bool]) -> bool:
        """Whether the replica's latest state passes ``check`` (restored aside to look)."""
        probe = self.replica.parent / f"probe-{uuid.uuid4().hex}.db"
        try:
            restore_replica(self.replica, probe)
            return check(self.names(probe))
        except ReplicationError:
            return False
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{probe}{suffix}").unlink(missing_ok=True)


@pytest.fixture
def sqlite_rehearsal(tmp_path: Path) -> Iterator[SQLiteRehearsal]:
    replica = tmp_path / "replica"
    backend = LaunchedBackend.start(
        "sqlite", extra_env={"RENUM_BACKUPS__REPLICA_DIRECTORY": str(replica)}
    )
    try:
        ready = SQLiteRehearsal(backend, replica)
        ready.add("before-the-backup")
        ready.renum("backup", "run")
        yield ready
    finally:
        backend.stop()


def test_sqlite_a_corrupted_database_file(sqlite_rehearsal: SQLiteRehearsal) -> None:
    rehearsal = sqlite_rehearsal
    rehearsal.add("after-the-backup")
    wait_until(
        lambda: rehearsal.replicated(lambda names: "after-the-backup" in names),
        timeout=60,
        what="the replica to hold the last account",
    )
    rehearsal.backend.stop()
    data = bytearray(rehearsal.database.read_bytes())
    data[4096:] = b"\xff" * (len(data) - 4096)  # every page after the first destroyed
    rehearsal.database.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        Path(f"{rehearsal.database}{suffix}").unlink(missing_ok=True)

    assert "verified" in rehearsal.renum("backup", "verify")  # the runbook: check, restore
    rehearsal.renum("backup", "restore", "--yes")
    rehearsal.backend.respawn()
    assert {"before-the-backup", "after-the-backup"} <= rehearsal.names()


def test_sqlite_rows_changed_by_mistake(sqlite_rehearsal: SQLiteRehearsal) -> None:
    rehearsal = sqlite_rehearsal
    rehearsal.add("precious")
    wait_until(
        lambda: rehearsal.replicated(lambda names: "precious" in names),
        timeout=60,
        what="the replica to hold the account",
    )
    before = datetime.now(UTC).isoformat()
    with sqlite3.connect(rehearsal.database) as connection:  # the mistake
        connection.execute("UPDATE accounts SET name = 'overwritten' WHERE name = 'precious'")
    connection.close()
    wait_until(
        lambda: rehearsal.replicated(lambda names: "precious" not in names),
        timeout=60,
        what="the replica to follow the mistake",
    )
    rehearsal.backend.stop()

    rehearsal.renum("backup", "restore", "--to", before, "--yes")
    rehearsal.backend.respawn()
    names = rehearsal.names()
    assert "precious" in names
    assert "overwritten" not in names


def test_sqlite_an_account_deleted_read_back_from_a_copy(
    sqlite_rehearsal: SQLiteRehearsal, tmp_path: Path
) -> None:
    rehearsal = sqlite_rehearsal
    copy = tmp_path / "copy" / "renum.db"
    backups = rehearsal.database.parent / "backups"
    ok(  # the copy's own settings: another file, the live backend's backups, no replica
        "backup", "restore", "--yes",
        RENUM_DATABASE__URL=f"sqlite+aiosqlite:///{copy}",
        RENUM_BACKUPS__DIRECTORY=str(backups),
    )  # fmt: skip
    assert "before-the-backup" in rehearsal.names(copy)
    rehearsal.add(unique_name("still-serving"))  # the live backend went on meanwhile
