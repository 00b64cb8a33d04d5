"""Backups of PostgreSQL through `renum backup` and pgBackRest, on private clusters (PostgreSQL
15's programs, their own data directories, free loopback ports; the shared server is never
touched): full, differential and incremental backups into an encrypted repository, each one
verified by recovering it in a throwaway server, a corrupted backup caught, and point-in-time
recovery landing exactly at the requested time."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

import pytest
from integration_support import Cli, cli_env

from app.capabilities.backups import BackupError
from app.capabilities.backups.postgres import PostgresCatalogue
from app.core.config import BackupSettings
from qa.pg_cluster import PrivateCluster, scratch_directory

# A long scenario: run by `nox -s drills`, not the default run (qa.plugin's DRILL).
pytestmark = pytest.mark.drill

KEY = "correct horse battery staple 2026"
ARCHIVING = {"archive_mode": "on", "wal_level": "replica", "archive_timeout": "0"}


@dataclass
class Setup:
    cluster: PrivateCluster
    backups: Path
    renum: Cli

    def settings(self, **overrides: object) -> BackupSettings:
        fields = {
            "directory": self.backups,
            "cipher_key": KEY,
            "postgres_data_directory": self.cluster.data,
            "postgres_socket_directory": self.cluster.root,
            **overrides,
        }
        return BackupSettings.model_validate(fields)

    def catalogue(self, **overrides: object) -> PostgresCatalogue:
        return PostgresCatalogue(
            self.cluster.url("renum"), self.backups, self.settings(**overrides)
        )

    def ok(self, *args: str) -> str:
        done = self.renum(*args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def backup(self, kind: str) -> dict[str, object]:
        self.ok("backup", "run", "--type", kind)
        listed: list[dict[str, object]] = json.loads(self.ok("backup", "list", "--json"))
        return listed[0]


@pytest.fixture
def setup() -> Iterator[Setup]:
    """A private cluster archiving its WAL with pgBackRest, holding Renum's migrated schema."""
    backups = scratch_directory("renum-backups-")
    try:
        yield from _setup(backups)
    finally:
        shutil.rmtree(backups, ignore_errors=True)


def _setup(backups: Path) -> Iterator[Setup]:
    with PrivateCluster(scratch_directory("renum-pg-"), ARCHIVING) as cluster:
        cluster.query("CREATE DATABASE renum")
        env = cli_env(
            RENUM_DATABASE__URL=cluster.url("renum"),
            RENUM_BACKUPS__DIRECTORY=str(backups),
            RENUM_BACKUPS__CIPHER_KEY=KEY,
            RENUM_BACKUPS__POSTGRES_DATA_DIRECTORY=str(cluster.data),
            RENUM_BACKUPS__POSTGRES_SOCKET_DIRECTORY=str(cluster.root),
        )
        ready = Setup(cluster, backups, Cli(env, backups, timeout=600))  # 2 cores, 3 workers
        ready.ok("db", "upgrade")
        said = ready.ok("backup", "setup")
        (command,) = [line for line in said.splitlines() if line.startswith("archive_command")]
        cluster.query(f"ALTER SYSTEM SET {command}")
        cluster.query("SELECT pg_reload_conf()")
        yield ready


def add_account(setup: Setup, name: str) -> None:
    setup.cluster.query(
        "INSERT INTO accounts (id, name, name_key, is_platform, active_executions, created_at, "
        "updated_at) VALUES ($1, $2, $2, false, 0, now(), now())",
        uuid.uuid4(),
        name,
        database="renum",
    )


def account_names(cluster: PrivateCluster) -> set[str]:
    return {row[0] for row in cluster.query("SELECT name FROM accounts", database="renum")}


def test_full_differential_and_incremental_backups_each_verified(setup: Setup) -> None:
    kinds = []
    for kind in ("full", "diff", "incr"):
        add_account(setup, f"before-{kind}")
        kinds.append(setup.backup(kind))
    assert [entry["type"] for entry in kinds] == ["full", "diff", "incr"]
    listed = json.loads(setup.ok("backup", "list", "--json"))
    assert [entry["id"] for entry in listed] == [entry["id"] for entry in reversed(kinds)]
    for entry in listed:
        assert entry["engine"] == "postgresql"
        assert entry["tables"]["accounts"]["rows"] >= 1
        said = setup.ok("backup", "verify", str(entry["id"]))
        assert "verified" in said
    rows = [entry["tables"]["accounts"]["rows"] for entry in reversed(listed)]
    assert rows == sorted(rows)
    assert len(set(rows)) == 3  # each saw one more account
    verified = json.loads(setup.ok("backup", "list", "--json"))
    assert all(entry["verification"]["passed"] for entry in verified)

    # A restored database that does not hold what the manifest recorded fails.
    newest = setup.backups / f"{listed[0]['id']}.json"
    recorded = json.loads(newest.read_text())
    recorded["tables"]["accounts"]["rows"] += 1
    newest.write_text(json.dumps(recorded))
    done = setup.renum("backup", "verify")
    assert done.returncode == 1
    assert "table accounts: " in done.stderr
    assert "rows, expected" in done.stderr


def test_the_repository_is_encrypted_and_unreadable_without_the_key(setup: Setup) -> None:
    marker = f"renum-marker-{uuid.uuid4().hex}"
    add_account(setup, marker)
    setup.cluster.query("CHECKPOINT")
    setup.backup("full")
    in_data = any(
        marker.encode() in path.read_bytes()
        for path in setup.cluster.data.rglob("*")
        if path.is_file()
    )
    assert in_data  # the marker is on disk in the clear in the server's own files
    repository = setup.backups / "repository"
    stored = [path for path in repository.rglob("*") if path.is_file()]
    assert stored
    assert not any(marker.encode() in path.read_bytes() for path in stored)
    wrong = setup.catalogue(cipher_key="not the key, but long enough")
    with pytest.raises(BackupError, match="not the passphrase the repository was created"):
        wrong.configure()  # refused: PostgreSQL's archiving reads that configuration
    elsewhere = scratch_directory("renum-backups-wrong-key-")
    try:  # pgBackRest itself, given the wrong passphrase, cannot read the repository
        reader = PostgresCatalogue(
            setup.cluster.url("renum"),
            elsewhere,
            setup.settings(cipher_key="not the key, but long enough", repository=repository),
        )
        reader.configure()
        with pytest.raises(BackupError, match="pgBackRest info failed"):
            reader.info()
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_verification_catches_a_corrupted_backup(setup: Setup) -> None:
    add_account(setup, "to-be-corrupted")
    entry = setup.backup("full")
    label = str(entry["label"])
    files = sorted(
        (setup.backups / "repository" / "backup" / "renum" / label / "pg_data" / "base").rglob("*"),
        key=lambda path: path.stat().st_size if path.is_file() else 0,
    )
    victim = files[-1]  # the largest relation file of the backup
    data = bytearray(victim.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(16)
    victim.write_bytes(bytes(data))

    done = setup.renum("backup", "verify", str(entry["id"]))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed its verification" in done.stderr
    assert "pgBackRest verify: backup: " in done.stderr
    assert "checksum invalid: 1" in done.stderr
    (recorded,) = json.loads(setup.ok("backup", "list", "--json"))
    assert recorded["verification"]["passed"] is False
    setup.cluster.stop()
    refused = setup.renum("backup", "restore", str(entry["id"]), "--yes")
    assert refused.returncode == 2
    assert "failed its last verification" in refused.stderr


def test_point_in_time_recovery_lands_exactly_at_the_requested_time(setup: Setup) -> None:
    setup.backup("full")
    add_account(setup, "just-before")
    (moment,) = setup.cluster.query("SELECT clock_timestamp()")
    add_account(setup, "just-after")
    setup.catalogue().pgbackrest("check")  # the WAL holding both writes is archived
    setup.cluster.stop()

    target = moment[0].astimezone(UTC).isoformat()
    refused = setup.renum("backup", "restore", "--to", target)
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    said = setup.ok("backup", "restore", "--to", target, "--yes")
    assert "Restored the state at" in said
    setup.cluster.start()
    names = account_names(setup.cluster)
    assert "just-before" in names
    assert "just-after" not in names
    add_account(setup, "after-recovery")  # promoted: it takes writes again
    assert "after-recovery" in account_names(setup.cluster)


def test_restore_of_a_backup_and_of_the_latest_state_after_a_lost_disk(setup: Setup) -> None:
    add_account(setup, "in-the-backup")
    entry = setup.backup("full")
    add_account(setup, "abandoned")
    setup.catalogue().pgbackrest("check")
    setup.cluster.stop("immediate")

    setup.ok("backup", "restore", str(entry["id"]), "--yes")
    setup.cluster.start()
    assert "in-the-backup" in account_names(setup.cluster)
    assert "abandoned" not in account_names(setup.cluster)
    # The restored database goes on from the backup, on a new timeline of the archive.
    add_account(setup, "after-the-restore")
    setup.catalogue().pgbackrest("check")
    setup.cluster.stop("immediate")

    shutil.rmtree(setup.cluster.data)  # the disk is lost
    setup.ok("backup", "restore", "--yes")
    setup.cluster.start()
    names = account_names(setup.cluster)
    assert {"in-the-backup", "after-the-restore"} <= names
    assert "abandoned" not in names  # the latest state follows the latest timeline


def test_restore_refuses_while_the_server_runs(setup: Setup) -> None:
    done = setup.renum("backup", "restore", "--yes")
    assert done.returncode == 2
    assert "PostgreSQL is running" in done.stderr
    assert setup.cluster.running
