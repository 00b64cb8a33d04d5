"""The PostgreSQL rows of the backups runbook (docs/backups.md, "Runbook"), rehearsed with the
commands the runbook gives, on a private cluster archiving its WAL with pgBackRest:

- a data file corrupted: stop PostgreSQL, ``renum backup restore --yes``, start it: the
  damaged table reads again and nothing committed is lost;
- rows deleted by mistake (or a migration gone wrong): stop PostgreSQL,
  ``renum backup restore --to <a moment before> --yes``, start it: the rows are back;
- an account deleted by mistake while the service goes on: ``renum backup restore --to <a
  moment before> --into <empty directory> --yes`` and a second server on that copy, which
  holds the account, while the live server is untouched and the copy archives nothing.

The lost disk is ``test_backup_drills.py``'s.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import asyncpg
import pytest
from drill_support import ARCHIVING, archive_with_pgbackrest, ok, postgres_settings, renum

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
        assert not histories(rehearsal.backups)  # the copy, promoted, archived nothing
    finally:
        copy.__exit__(None, None, None)
