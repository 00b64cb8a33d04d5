"""Backups of the SQLite database: snapshots of a live file, the catalogue (keep, find,
verify, restore) and `renum backup`, on temporary files migrated to the real schema."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import pwd
import re
import shlex
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from app.capabilities import backups as backups_capability
from app.capabilities.backups import (
    BackupCatalogue,
    BackupError,
    BackupWatch,
    Verification,
    assess,
    catalogue_for,
)
from app.capabilities.backups import replication as replication_module
from app.capabilities.backups.checks import BackupCheck
from app.capabilities.backups.postgres import PostgresBackup, PostgresCatalogue, repository_problems
from app.capabilities.backups.replication import Replication, ReplicationError, restore_replica
from app.capabilities.backups.sealing import new_identity, recipient
from app.capabilities.base import AppContext
from app.capabilities.health import CheckContext, Status
from app.cli import cli
from app.core.config import BackupSettings, Settings
from app.core.metrics import Metrics
from app.db import migrate
from app.db.snapshots import DatabaseFacts, SnapshotError, TableFacts, read_facts, take_snapshot
from qa.polling import wait_until, wait_until_async

runner = CliRunner()
T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A migrated SQLite database in WAL mode, as the backend leaves it."""
    path = tmp_path / "data" / "renum.db"
    monkeypatch.setenv("RENUM_DATABASE__URL", f"sqlite+aiosqlite:///{path}")
    monkeypatch.delenv("RENUM_BACKUPS__DIRECTORY", raising=False)
    result = runner.invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.close()
    return path


def note(path: Path, name: str) -> None:
    """A row in a table of the real schema (an account: the simplest to write)."""
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO accounts (id, name, name_key, is_platform, created_at, updated_at) "
            "VALUES (?, ?, ?, 0, '2026-12-05 09:00:00', '2026-12-05 09:00:00')",
            (uuid.uuid4().hex, name, name),
        )
    connection.close()


def names(path: Path) -> list[str]:
    connection = sqlite3.connect(path)
    try:
        query = "SELECT name FROM accounts WHERE is_platform = 0 ORDER BY name"
        return [row[0] for row in connection.execute(query)]
    finally:
        connection.close()


def hold_open(path: Path) -> sqlite3.Connection:
    """A connection that has the database open: while it lives, the others' commits stay in
    the write-ahead log (the last connection to close would checkpoint them into the file)."""
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA wal_autocheckpoint=0")
    connection.execute("SELECT count(*) FROM accounts").fetchone()
    return connection


def catalogue(database: Path, keep: int = 14) -> BackupCatalogue:
    return BackupCatalogue(database, database.parent / "backups", keep)


# --- snapshots ------------------------------------------------------------------------------


def test_a_snapshot_holds_what_was_committed_and_its_facts_describe_it(
    database: Path, tmp_path: Path
) -> None:
    reader_keeps_wal = hold_open(database)
    note(database, "ada")
    note(database, "grace")
    assert Path(f"{database}-wal").stat().st_size > 0  # the rows are in the log, not the file
    facts = take_snapshot(database, tmp_path / "copy.db")
    reader_keeps_wal.close()
    assert names(tmp_path / "copy.db") == ["ada", "grace"]
    assert facts.revision == migrate.head_revision()
    assert facts.tables["accounts"].rows == 2
    assert read_facts(tmp_path / "copy.db") == facts


def test_a_snapshot_taken_while_others_write_is_one_instant(database: Path, tmp_path: Path) -> None:
    """Writers commit throughout; the copy and its recorded facts still agree exactly."""
    stop = threading.Event()
    written = [0]

    def write() -> None:
        while not stop.is_set():
            note(database, f"writer-{written[0]:05d}")
            written[0] += 1

    writer = threading.Thread(target=write)
    writer.start()
    recorded = []
    try:
        for i in range(5):
            before = written[0]
            recorded.append(take_snapshot(database, tmp_path / f"copy-{i}.db"))
            wait_until(lambda before=before: written[0] > before + 1, 10, what="more writes")
    finally:
        stop.set()
        writer.join()
    for i, facts in enumerate(recorded):
        assert read_facts(tmp_path / f"copy-{i}.db") == facts
    counts = [facts.tables["accounts"].rows for facts in recorded]
    assert counts == sorted(set(counts))  # every snapshot saw later writes than the last


def test_a_snapshot_refuses_a_missing_source_and_an_existing_target(
    database: Path, tmp_path: Path
) -> None:
    with pytest.raises(SnapshotError, match="no SQLite database"):
        take_snapshot(tmp_path / "absent.db", tmp_path / "copy.db")
    (tmp_path / "copy.db").write_bytes(b"")
    with pytest.raises(SnapshotError, match="exists already"):
        take_snapshot(database, tmp_path / "copy.db")


# --- the catalogue --------------------------------------------------------------------------


def test_backups_are_listed_newest_first_and_the_oldest_beyond_keep_go(database: Path) -> None:
    backups = catalogue(database, keep=2)
    taken = [backups.run(T0 + timedelta(hours=hour)) for hour in range(3)]
    listed = backups.backups()
    assert [b.id for b in listed] == [taken[2].id, taken[1].id]
    assert not taken[0].path.exists()
    assert not taken[0].manifest_path.exists()
    assert backups.find().id == taken[2].id
    assert backups.find(taken[1].id).id == taken[1].id
    assert backups.find(at_or_before=T0 + timedelta(hours=1, minutes=30)).id == taken[1].id
    with pytest.raises(BackupError, match="no backup taken at or before"):
        backups.find(at_or_before=T0)
    with pytest.raises(BackupError, match="no backup nope"):
        backups.find("nope")


def test_an_empty_catalogue_says_how_to_take_a_backup(database: Path) -> None:
    with pytest.raises(BackupError, match="renum backup run"):
        catalogue(database).find()


def test_a_sound_backup_verifies_and_the_result_is_recorded(database: Path) -> None:
    backups = catalogue(database)
    note(database, "ada")
    backup = backups.run(T0)
    note(database, "later")  # the source moves on; the backup answers for its own time
    verification = backups.verify(backup, now=T0 + timedelta(minutes=5))
    assert verification.passed
    recorded = json.loads(backup.manifest_path.read_text())["verification"]
    assert recorded == {
        "at": (T0 + timedelta(minutes=5)).isoformat(),
        "passed": True,
        "problems": [],
    }
    assert backups.find().verification == verification


def test_a_corrupted_backup_fails_its_verification(database: Path) -> None:
    backups = catalogue(database)
    backup = backups.run(T0)
    with backup.path.open("r+b") as stream:
        stream.seek(backup.size // 2)
        stream.write(b"\xde\xad\xbe\xef")
    verification = backups.verify(backup)
    assert not verification.passed
    assert "SHA-256" in " ".join(verification.problems)
    assert backups.find().verification == verification


def test_a_backup_altered_with_its_recorded_hash_is_caught_by_its_rows(database: Path) -> None:
    """Someone edits a row and rewrites the manifest's size and hash: the tables' checksums,
    read from the restored copy, still tell."""
    backups = catalogue(database)
    note(database, "ada")
    backup = backups.run(T0)
    connection = sqlite3.connect(backup.path)
    with connection:
        connection.execute("UPDATE accounts SET name = 'eve'")
    connection.close()
    manifest = json.loads(backup.manifest_path.read_text())
    manifest["size"] = backup.path.stat().st_size
    manifest["sha256"] = hashlib.sha256(backup.path.read_bytes()).hexdigest()
    backup.manifest_path.write_text(json.dumps(manifest))
    verification = backups.verify(backups.find(backup.id))
    assert verification.problems == ("table accounts: its rows differ (checksum)",)


def test_a_truncated_backup_fails_its_verification(database: Path) -> None:
    backups = catalogue(database)
    backup = backups.run(T0)
    backup.path.write_bytes(backup.path.read_bytes()[:4096])
    problems = " ".join(backups.verify(backup).problems)
    assert "size 4096 bytes" in problems
    assert "SHA-256" in problems


def test_restore_puts_the_backup_in_place_and_keeps_the_replaced_file(database: Path) -> None:
    backups = catalogue(database)
    note(database, "ada")
    backup = backups.run(T0)
    note(database, "after-the-backup")
    kept = backups.restore(backup, now=T0 + timedelta(hours=1))
    assert names(database) == ["ada"]
    assert kept is not None
    assert names(kept) == ["ada", "after-the-backup"]
    assert read_facts(database) == backup.facts


def test_restore_is_refused_while_the_database_is_open_elsewhere(database: Path) -> None:
    """A running backend would go on writing to the file it holds, beside the restored one."""
    backups = catalogue(database)
    note(database, "ada")
    backup = backups.run(T0)
    note(database, "acknowledged-write")
    in_use = hold_open(database)
    try:
        with pytest.raises(BackupError, match="in use by another process"):
            backups.restore(backup)
    finally:
        in_use.close()
    assert names(database) == ["acknowledged-write", "ada"]


def test_restore_over_an_unreadable_database_sets_its_log_aside(database: Path) -> None:
    """The corrupted database a restore replaces cannot fold its log; the log goes aside with
    it, never replayed into the restored file."""
    backups = catalogue(database)
    note(database, "ada")
    backup = backups.run(T0)
    database.write_bytes(b"this is not a database any more" * 100)
    Path(f"{database}-wal").write_bytes(b"a stale write-ahead log")
    kept = backups.restore(backup, now=T0 + timedelta(hours=1))
    assert names(database) == ["ada"]
    assert not Path(f"{database}-wal").exists()
    assert kept is not None
    assert Path(f"{kept}-wal").read_bytes() == b"a stale write-ahead log"


def test_restore_refuses_a_backup_that_fails_verification(database: Path) -> None:
    backups = catalogue(database)
    note(database, "ada")
    backup = backups.run(T0)
    note(database, "grace")
    backup.path.write_bytes(b"not a database")
    with pytest.raises(BackupError, match="failed its verification"):
        backups.restore(backup)
    assert names(database) == ["ada", "grace"]


# --- renum backup ---------------------------------------------------------------------------


def test_the_command_takes_lists_verifies_and_restores(database: Path) -> None:
    note(database, "ada")
    taken = runner.invoke(cli, ["backup", "run"])
    assert taken.exit_code == 0, taken.output
    found = re.fullmatch(
        r"Backup (\S+): (\S+) \((\d+) bytes, (\d+) tables, revision (\S+)\)\.", flat(taken.stdout)
    )
    assert found, taken.stdout
    backup_id = found.group(1)
    assert found.group(5) == migrate.head_revision()
    assert Path(found.group(2)) == database.parent / "backups" / f"{backup_id}.db"
    listed = runner.invoke(cli, ["backup", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [entry["id"] for entry in json.loads(listed.stdout)] == [backup_id]
    verified = runner.invoke(cli, ["backup", "verify"])
    assert verified.exit_code == 0, verified.output
    assert f"Backup {backup_id} verified" in verified.stdout
    table = runner.invoke(cli, ["backup", "list"])
    assert backup_id in table.stdout
    assert "passed" in table.stdout
    note(database, "grace")
    unconfirmed = runner.invoke(cli, ["backup", "restore", backup_id])
    assert unconfirmed.exit_code == 2
    assert "--yes" in flat(unconfirmed.stderr)
    assert names(database) == ["ada", "grace"]
    restored = runner.invoke(cli, ["backup", "restore", backup_id, "--yes"])
    assert restored.exit_code == 0, restored.output
    assert names(database) == ["ada"]
    assert "The replaced database is kept at" in flat(restored.stdout)


def test_the_command_reports_a_failed_verification_with_exit_code_1(database: Path) -> None:
    assert runner.invoke(cli, ["backup", "run"]).exit_code == 0
    (backup,) = catalogue(database).backups()
    backup.path.write_bytes(b"\0" * backup.size)
    result = runner.invoke(cli, ["backup", "verify", backup.id])
    assert result.exit_code == 1
    assert f"Backup {backup.id} failed its verification" in flat(result.stderr)
    assert "SHA-256" in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["backup", "verify", "nope"], "no backup nope"),
        (["backup", "restore", "--to", "yesterday"], "Not a time: yesterday"),
        (["backup", "restore", "x", "--to", "2026-12-05"], "not both"),
        (["backup", "restore", "--to", "2000-01-01", "--yes"], "no backup taken at or before"),
        (["backup", "verify"], "renum backup run"),
    ],
)
def test_bad_requests_exit_2_with_a_message(
    database: Path, arguments: list[str], message: str
) -> None:
    result = runner.invoke(cli, arguments)
    assert result.exit_code == 2, result.output
    assert message in flat(result.stderr)
    assert "Traceback" not in result.output


PG_URL = "postgresql+asyncpg://renum@127.0.0.1:9/renum"
KEY = "a passphrase long enough"


@pytest.mark.parametrize(
    ("settings", "missing"),
    [
        ({}, "RENUM_BACKUPS__DIRECTORY"),
        ({"RENUM_BACKUPS__DIRECTORY": "/srv/backups"}, "RENUM_BACKUPS__POSTGRES_DATA_DIRECTORY"),
        (
            {"RENUM_BACKUPS__DIRECTORY": "/srv/backups", "RENUM_BACKUPS__CIPHER_KEY": KEY},
            "RENUM_BACKUPS__POSTGRES_DATA_DIRECTORY",
        ),
        (
            {
                "RENUM_BACKUPS__DIRECTORY": "/srv/backups",
                "RENUM_BACKUPS__POSTGRES_DATA_DIRECTORY": "/d",
            },
            "RENUM_BACKUPS__CIPHER_KEY",
        ),
    ],
)
def test_postgresql_without_its_settings_is_refused_with_what_to_set(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, str], missing: str
) -> None:
    monkeypatch.setenv("RENUM_DATABASE__URL", PG_URL)
    for name in ("DIRECTORY", "CIPHER_KEY", "POSTGRES_DATA_DIRECTORY"):
        monkeypatch.delenv(f"RENUM_BACKUPS__{name}", raising=False)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    for command in (["backup", "run"], ["backup", "setup"], ["backup", "list"]):
        result = runner.invoke(cli, command)
        assert result.exit_code == 2, result.output
        assert missing in flat(result.stderr)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("repository", "relative/repository", "absolute path"),
        ("postgres_data_directory", "data", "absolute path"),
        ("cipher_key", "short", "at least 20 characters"),
        ("cipher_key", "a passphrase long enough\nrepo1-path=/elsewhere", "control characters"),
        ("postgres_data_directory", "/var/lib/x\n[global]", "control characters"),
        ("stanza", "../other", "pattern"),
        ("stanza", "a]\nrepo1-path=/x", "pattern"),
    ],
)
def test_postgresql_settings_cannot_inject_configuration(
    field: str, value: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        BackupSettings.model_validate({field: value})


def postgres_catalogue(tmp_path: Path, **fields: Any) -> PostgresCatalogue:
    section = BackupSettings.model_validate(
        {
            "cipher_key": KEY,
            "postgres_data_directory": tmp_path / "data",
            "postgres_socket_directory": tmp_path / "socket",
            **fields,
        }
    )
    return PostgresCatalogue(
        "postgresql+asyncpg://renum:pw@127.0.0.1:6543/renum", tmp_path / "backups", section
    )


def test_the_pgbackrest_configuration_follows_the_settings_and_only_its_owner_reads_it(
    tmp_path: Path,
) -> None:
    catalogue = postgres_catalogue(tmp_path, retention_full=3, stanza="main")
    catalogue.configure()
    text = catalogue.config.read_text()
    assert f"repo1-path={tmp_path / 'backups' / 'repository'}" in text
    assert "repo1-cipher-type=aes-256-cbc" in text
    assert f"repo1-cipher-pass={KEY}" in text
    assert "repo1-retention-full=3" in text
    assert "[main]" in text
    assert "pg1-port=6543" in text
    assert f"pg1-path={tmp_path / 'data'}" in text
    assert "pw" not in text.replace(KEY, "")  # the database password stays out
    assert catalogue.config.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "backups").stat().st_mode & 0o777 == 0o700
    assert catalogue.archive_command() == (
        f"pgbackrest --config={catalogue.config} --stanza=main archive-push %p"
    )
    first = catalogue.config.stat().st_mtime_ns
    catalogue.configure()  # unchanged: not rewritten
    assert catalogue.config.stat().st_mtime_ns == first
    assert "pg1-port=7000" in postgres_catalogue(tmp_path, postgres_port=7000)._config_text()


def test_the_archive_command_survives_odd_paths(tmp_path: Path) -> None:
    odd = tmp_path / "it's 100% backups"
    section = BackupSettings.model_validate(
        {"cipher_key": KEY, "postgres_data_directory": tmp_path / "data"}
    )
    catalogue = PostgresCatalogue(PG_URL, odd, section)
    command = catalogue.archive_command()
    assert "100%%" in command  # PostgreSQL replaces %p; a lone % would be its escape
    assert shlex.split(command.replace("%%", "%"))[1] == f"--config={odd / 'pgbackrest.conf'}"


def test_a_new_passphrase_for_an_existing_repository_is_refused(tmp_path: Path) -> None:
    catalogue = postgres_catalogue(tmp_path)
    catalogue.configure()
    stanza = catalogue.repository / "backup" / "renum"
    stanza.mkdir(parents=True)
    (stanza / "backup.info").write_text("[backrest]\n")
    other = postgres_catalogue(tmp_path, cipher_key="another passphrase, long enough")
    with pytest.raises(BackupError, match="not the passphrase the repository was created with"):
        other.configure()
    assert f"repo1-cipher-pass={KEY}" in catalogue.config.read_text()  # archiving goes on


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_as_root_files_are_given_to_the_database_owner_and_planted_links_are_not_followed(
    tmp_path: Path,
) -> None:
    postgres = pwd.getpwnam("postgres")
    (tmp_path / "data").mkdir()
    os.chown(tmp_path / "data", postgres.pw_uid, postgres.pw_gid)
    catalogue = postgres_catalogue(tmp_path)
    catalogue.configure()
    for path in (catalogue.directory, catalogue.repository, catalogue.config):
        assert path.stat().st_uid == postgres.pw_uid, path
    with catalogue.exclusive() as mine:
        assert mine
    assert (catalogue.directory / ".renum-backup.lock").stat().st_uid == postgres.pw_uid

    precious = tmp_path / "precious"  # root's, as /etc would be
    precious.mkdir()
    (catalogue.directory / "log").rmdir()
    (catalogue.directory / "log").symlink_to(precious)  # planted by the database's user
    with pytest.raises(OSError, match=r"Too many levels of symbolic links|Not a directory"):
        catalogue.configure()
    (catalogue.directory / ".renum-backup.lock").unlink()
    (catalogue.directory / ".renum-backup.lock").symlink_to(precious / "nologin")
    with pytest.raises(OSError, match="Too many levels of symbolic links"), catalogue.exclusive():
        pass
    assert precious.stat().st_uid == 0
    assert not (precious / "nologin").exists()


@pytest.mark.parametrize(
    ("said", "problems"),
    [
        ("", []),
        ("stanza: renum\nstatus: ok\n", []),
        (
            "stanza: renum\nstatus: error\n  backup: 20261205-105516F, status: invalid, "
            "total files checked: 1400, total valid files: 1399\n    checksum invalid: 1\n",
            [
                "pgBackRest verify: backup: 20261205-105516F, status: invalid, total files "
                "checked: 1400, total valid files: 1399; checksum invalid: 1"
            ],
        ),
        (
            "stanza: renum\nstatus: error\n  archiveId: 15-1, total WAL checked: 3, total "
            "valid WAL: 2\n    other: 1\n",
            [
                "pgBackRest verify: archiveId: 15-1, total WAL checked: 3, total valid WAL: 2; "
                "other: 1"
            ],
        ),
        ("stanza: renum\nstatus: error\n", ["pgBackRest verify found the repository in error"]),
    ],
)
def test_what_pgbackrest_verify_found_is_read(said: str, problems: list[str]) -> None:
    assert repository_problems(said) == problems


def test_a_postgresql_manifest_reads_back_and_a_foreign_one_is_not_trusted(
    tmp_path: Path,
) -> None:
    catalogue = postgres_catalogue(tmp_path)
    catalogue.directory.mkdir()
    backup = PostgresBackup(
        id="20261205T090000000000Z",
        taken_at=T0,
        label="20261205-090000F",
        kind="full",
        size=100,
        stored=40,
        restore_point="renum-20261205T090000000000Z",
        facts=DatabaseFacts(revision="0009", tables={"accounts": TableFacts(2, "ab")}),
        manifest_path=catalogue.directory / "20261205T090000000000Z.json",
    )
    catalogue._record(backup)
    assert catalogue.backups() == [backup]
    assert catalogue.find().where == "pgBackRest full backup 20261205-090000F"
    crafted = dict(backup.manifest(), type="everything")
    (catalogue.directory / "20261205T100000000000Z.json").write_text(
        json.dumps(dict(crafted, id="20261205T100000000000Z"))
    )
    sqlite_one = dict(backup.manifest(), engine="sqlite", id="20261205T110000000000Z")
    (catalogue.directory / "20261205T110000000000Z.json").write_text(json.dumps(sqlite_one))
    injected = dict(  # its values would reach pgBackRest's options and recovery settings
        backup.manifest(),
        id="20261205T120000000000Z",
        restore_point="x'\nrestore_command = 'sh -c id",
    )
    (catalogue.directory / "20261205T120000000000Z.json").write_text(json.dumps(injected))
    other_label = dict(
        backup.manifest(),
        id="20261205T130000000000Z",
        restore_point="renum-20261205T130000000000Z",
        label="--repo1-path=/elsewhere",
    )
    (catalogue.directory / "20261205T130000000000Z.json").write_text(json.dumps(other_label))
    assert catalogue.backups() == [backup]
    assert len(catalogue.unreadable) == 4
    assert any("restore point is not the one Renum names" in u for u in catalogue.unreadable)
    assert any("label is not one pgBackRest gives" in u for u in catalogue.unreadable)


def test_a_postgresql_restore_refuses_a_running_server_and_a_failed_backup(
    tmp_path: Path,
) -> None:
    catalogue = postgres_catalogue(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "postmaster.pid").write_text("1\n")
    with pytest.raises(BackupError, match="PostgreSQL is running"):
        catalogue.restore()
    (tmp_path / "data" / "postmaster.pid").unlink()
    failed = PostgresBackup(
        id="20261205T090000000000Z",
        taken_at=T0,
        label="20261205-090000F",
        kind="full",
        size=1,
        stored=1,
        restore_point="renum-x",
        facts=DatabaseFacts(revision=None),
        manifest_path=tmp_path / "m.json",
        verification=Verification(at=T0, problems=("broken",)),
    )
    with pytest.raises(BackupError, match="failed its last verification"):
        catalogue.restore(failed)
    with pytest.raises(BackupError, match="unknown backup type"):
        catalogue.run(kind="everything")
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "something").write_text("")
    with pytest.raises(BackupError, match="is not empty"):
        catalogue.restore(into=tmp_path / "copy")
    with pytest.raises(BackupError, match="not an absolute path"):
        catalogue.restore(into=Path("relative"))


def test_a_path_with_markup_is_printed_as_it_is(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RENUM_DATABASE__URL", PG_URL)
    monkeypatch.setenv("RENUM_BACKUPS__DIRECTORY", str(tmp_path))
    monkeypatch.setenv("RENUM_BACKUPS__CIPHER_KEY", KEY)
    monkeypatch.setenv("RENUM_BACKUPS__POSTGRES_DATA_DIRECTORY", str(tmp_path / "data"))
    into = "/tmp/[/x]/copy"  # noqa: S108 - a name, nothing is written there
    result = runner.invoke(cli, ["backup", "restore", "--into", into])
    assert result.exit_code == 2
    assert into in flat(result.stderr)
    assert "Traceback" not in result.output


def test_the_sqlite_command_has_no_backup_types_and_needs_no_setup(database: Path) -> None:
    result = runner.invoke(cli, ["backup", "run", "--type", "full"])
    assert result.exit_code == 2
    assert "--type is for PostgreSQL" in flat(result.stderr)
    result = runner.invoke(cli, ["backup", "restore", "--into", str(database.parent), "--yes"])
    assert result.exit_code == 2
    assert "--into is for PostgreSQL" in flat(result.stderr)
    result = runner.invoke(cli, ["backup", "setup"])
    assert result.exit_code == 0
    assert "SQLite needs no setup" in result.stdout


def test_the_directory_setting_is_followed(
    database: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RENUM_BACKUPS__DIRECTORY", str(tmp_path / "elsewhere"))
    assert runner.invoke(cli, ["backup", "run"]).exit_code == 0
    assert len(list((tmp_path / "elsewhere").glob("*.db"))) == 1
    assert not (database.parent / "backups").exists()


# --- the watch: judgement, schedule, alerts, figures, the dependency report ------------------


def judged(
    backups: BackupCatalogue, now: datetime, *, expected: bool = False, max_age_hours: float = 26
) -> str | None:
    return assess(backups.backups(), now, max_age_hours, expected=expected).problem


def test_the_judgement_of_the_backups(database: Path) -> None:
    backups = catalogue(database)
    assert judged(backups, T0) is None  # none taken, none expected: nothing to say
    assert "no backup has passed a verification" in str(judged(backups, T0, expected=True))
    first = backups.run(T0)
    assert "no backup has passed" in str(judged(backups, T0, expected=True))  # never verified
    backups.verify(first, T0)
    assert judged(backups, T0 + timedelta(hours=26)) is None
    stale = judged(backups, T0 + timedelta(hours=27))
    assert stale == f"the newest verified backup ({first.id}) is older than 26 h"
    second = backups.run(T0 + timedelta(hours=27))
    second.path.write_bytes(b"damaged")
    backups.verify(second, T0 + timedelta(hours=27))
    failed = str(judged(backups, T0 + timedelta(hours=27)))
    assert failed.startswith(f"the last verification (backup {second.id}, at 2026-12-06 12:00Z)")
    backups.verify(first, T0 + timedelta(hours=28))  # the most recent verification counts
    assert "older than 26 h" in str(judged(backups, T0 + timedelta(hours=28)))


class Reports:
    """An alert reporter that remembers what it was told."""

    def __init__(self) -> None:
        self.told: list[tuple[str, str, str]] = []

    async def report(
        self, source: str, severity: str, message: str, *, labels: object = None
    ) -> None:
        self.told.append(("report", source, message))

    async def clear(self, source: str, *, labels: object = None) -> None:
        self.told.append(("clear", source, ""))


def watch_of(
    database: Path, make_settings: Callable[..., Settings], reports: Reports, **backups: Any
) -> tuple[BackupWatch, Metrics]:
    settings = make_settings(backups=backups)
    metrics = Metrics("test", "test")
    watch = BackupWatch(catalogue(database), lambda: settings, metrics, lambda: reports)
    return watch, metrics


def gauge(metrics: Metrics, name: str) -> str:
    text = metrics.exposition().decode()
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return line.split()[1]


@pytest.mark.anyio
async def test_the_watch_takes_scheduled_backups_and_alerts_while_they_are_missing(
    database: Path, make_settings: Callable[..., Settings]
) -> None:
    t0 = datetime.now(UTC) - timedelta(days=3)  # the figures' ages count to the real now
    reports = Reports()
    watch, metrics = watch_of(database, make_settings, reports, every_hours=24)
    status = await watch.tick(t0)  # none yet: one is taken and verified at once
    assert status.problem is None
    assert status.newest_verified is not None
    assert status.newest_verified.taken_at == t0
    assert gauge(metrics, "renum_backup_last_verification_success") == "1.0"
    assert gauge(metrics, "renum_backups_kept") == "1.0"
    assert float(gauge(metrics, "renum_backup_last_verified_age_seconds")) > 0
    await watch.tick(t0 + timedelta(hours=23))  # not due
    assert [b.taken_at for b in watch.catalogue.backups()] == [t0]
    await watch.tick(t0 + timedelta(hours=24))  # due
    assert len(watch.catalogue.backups()) == 2
    assert reports.told == []

    watch.settings().backups.every_hours = None  # the schedule stops: the backups age
    await watch.tick(t0 + timedelta(hours=51))
    await watch.tick(t0 + timedelta(hours=51))  # the same problem is reported once
    assert reports.told == [
        ("report", "backups", f"{watch.status.problem}"),  # type: ignore[union-attr]
    ]
    assert "is older than 26 h" in reports.told[0][2]
    watch.catalogue.verify(watch.catalogue.run(t0 + timedelta(hours=52)))
    await watch.tick(t0 + timedelta(hours=52))
    assert reports.told[-1] == ("clear", "backups", "")


@pytest.mark.anyio
async def test_a_backup_under_way_in_another_process_is_not_taken_twice(
    database: Path, make_settings: Callable[..., Settings]
) -> None:
    watch, _ = watch_of(database, make_settings, Reports(), every_hours=1)
    directory = watch.catalogue.directory
    directory.mkdir(parents=True)
    with (directory / ".renum-backup.lock").open("a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        await watch.tick(T0)
        assert watch.catalogue.backups() == []
        fcntl.flock(other, fcntl.LOCK_UN)
    await watch.tick(T0)
    assert len(watch.catalogue.backups()) == 1


@pytest.mark.anyio
async def test_the_dependency_report_shows_the_judgement(
    database: Path, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(
        environment="staging", database={"url": f"sqlite+aiosqlite:///{database}"}
    )
    context = CheckContext(settings=settings, database=None)  # type: ignore[arg-type]  # the check never touches the database
    (missing,) = await BackupCheck().run(context)
    assert missing.status == Status.warn
    assert "no backup has passed a verification" in missing.message
    assert missing.fix is not None
    backups = catalogue_for(settings)
    backups.verify(backups.run())
    (fresh,) = await BackupCheck().run(context)
    assert fresh.status == Status.passed
    assert fresh.observed_unit == "h"
    assert fresh.message.startswith("the newest verified backup")
    off = CheckContext(
        settings=settings.model_copy(update={"backups": BackupSettings(enabled=False)}),
        database=None,  # type: ignore[arg-type]  # the check never touches the database
    )
    (switched_off,) = await BackupCheck().run(off)
    assert switched_off.status == Status.passed
    assert "capability is off" in switched_off.message


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("environment", "status"), [("development", Status.passed), ("production", Status.warn)]
)
async def test_the_dependency_report_on_postgresql_without_backup_settings(
    make_settings: Callable[..., Settings], environment: str, status: Status
) -> None:
    settings = make_settings(environment=environment, database={"url": PG_URL})
    context = CheckContext(settings=settings, database=None)  # type: ignore[arg-type]  # the check never touches the database
    (outcome,) = await BackupCheck().run(context)
    assert outcome.status == status
    assert "RENUM_BACKUPS__DIRECTORY" in outcome.message


@pytest.mark.anyio
async def test_the_dependency_report_on_backups_this_process_may_not_read(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    section = {
        "directory": str(tmp_path),
        "cipher_key": KEY,
        "postgres_data_directory": str(tmp_path / "data"),
    }
    settings = make_settings(database={"url": PG_URL}, backups=section)

    def refused(self: object) -> list[object]:
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(PostgresCatalogue, "backups", refused)
    context = CheckContext(settings=settings, database=None)  # type: ignore[arg-type]  # the check never touches the database
    (outcome,) = await BackupCheck().run(context)
    assert outcome.status == Status.warn
    assert outcome.message.startswith("the backups cannot be read: ")


# --- continuous replication with Litestream -------------------------------------------------


def replicated(replica: Path, scratch: Path, name: str) -> bool:
    """Whether the replica's latest state holds the account ``name`` (restored aside)."""
    restored = scratch / f"probe-{uuid.uuid4().hex}.db"
    try:
        restore_replica(replica, restored)
    except ReplicationError:
        return False
    try:
        return name in names(restored)
    finally:
        restored.unlink(missing_ok=True)


@pytest.mark.anyio
async def test_point_in_time_recovery_lands_exactly_between_two_writes(
    database: Path, tmp_path: Path
) -> None:
    replica = tmp_path / "replica"
    backups = BackupCatalogue(database, tmp_path / "backups", 14, replica)
    replication = Replication(database, replica)
    await replication.start()
    try:
        note(database, "before")
        await wait_until_async(
            lambda: replicated(replica, tmp_path, "before"),
            30,
            what="the first write",
            interval=0.2,
        )
        moment = datetime.now(UTC)  # the first write's sync is behind us, the second's ahead
        note(database, "after")
        await wait_until_async(
            lambda: replicated(replica, tmp_path, "after"),
            30,
            what="the second write",
            interval=0.2,
        )
    finally:
        await replication.stop()
    assert replication.problem is None
    facts, kept = backups.restore_from_replica(moment)
    assert names(database) == ["before"]
    assert facts.revision == migrate.head_revision()
    assert kept is not None
    assert names(kept) == ["after", "before"]
    backups.restore_from_replica()  # the latest state
    assert names(database) == ["after", "before"]


@pytest.mark.anyio
async def test_one_process_replicates_and_the_others_leave_it(
    database: Path, tmp_path: Path
) -> None:
    first, second = Replication(database, tmp_path / "r"), Replication(database, tmp_path / "r")
    await first.start()
    await second.start()
    try:
        await wait_until_async(lambda: first.running, 10, what="litestream to start")
        assert second.elsewhere
        assert not second.running
    finally:
        await second.stop()
        await first.stop()
    assert not first.running


@pytest.mark.anyio
async def test_a_replication_that_keeps_failing_is_a_problem_the_watch_reports(
    database: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_settings: Callable[..., Settings],
) -> None:
    failing = tmp_path / "litestream"
    failing.write_text("#!/bin/sh\necho 'cannot open database' >&2\nexit 3\n")
    failing.chmod(0o755)
    monkeypatch.setattr(replication_module, "litestream_binary", lambda: failing)
    monkeypatch.setattr(replication_module, "RESTART_DELAYS", (0.05,))
    replication = Replication(database, tmp_path / "replica")
    reports = Reports()
    settings = make_settings()
    watch = BackupWatch(
        catalogue(database), lambda: settings, Metrics("test", "test"), lambda: reports,
        replication,
    )  # fmt: skip
    await replication.start()
    try:
        await wait_until_async(lambda: replication.restarts >= 2, 10, what="two restarts")
        status = await watch.tick()
    finally:
        await replication.stop()
    assert status.problem == (
        "continuous replication stopped (litestream exited with code 3); restarting"
    )
    assert reports.told == [("report", "backups", status.problem)]


def test_a_restore_from_a_replica_refuses_what_it_cannot_do(database: Path, tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="no replica is configured"):
        catalogue(database).restore_from_replica()
    missing = BackupCatalogue(database, tmp_path / "b", 14, tmp_path / "absent")
    with pytest.raises(BackupError, match="no replica at"):
        missing.restore_from_replica()
    assert names(database) == []  # nothing replaced


def test_the_command_restores_the_replica_to_a_time(
    database: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = tmp_path / "replica"
    monkeypatch.setenv("RENUM_BACKUPS__REPLICA_DIRECTORY", str(replica))
    note(database, "kept")

    async def replicate_once() -> None:
        replication = Replication(database, replica)
        await replication.start()
        try:
            await wait_until_async(
                lambda: replicated(replica, tmp_path, "kept"), 30, what="the write", interval=0.2
            )
        finally:
            await replication.stop()

    asyncio.run(replicate_once())
    unconfirmed = runner.invoke(cli, ["backup", "restore"])
    assert unconfirmed.exit_code == 2
    assert "with the replica's latest state" in flat(unconfirmed.stderr)
    too_early = runner.invoke(cli, ["backup", "restore", "--to", "2001-01-01", "--yes"])
    assert too_early.exit_code == 2, too_early.output
    assert "the replica could not be restored at 2001-01-01T00:00:00+00:00" in flat(
        too_early.stderr
    )
    restored = runner.invoke(cli, ["backup", "restore", "--yes"])
    assert restored.exit_code == 0, restored.output
    assert "Restored the replica's latest state (revision" in flat(restored.stdout)
    assert names(database) == ["kept"]


# --- what the catalogue does not trust, and what it protects -----------------------------------


def test_foreign_and_crafted_manifests_are_never_trusted(database: Path) -> None:
    backups = catalogue(database, keep=1)
    kept = backups.run(T0)
    backups.verify(kept, T0)
    (backups.directory / "notes.json").write_text("{}")  # not the catalogue's: ignored
    crafted = backups.directory / "20200101T000000000000Z.json"
    manifest = json.loads(kept.manifest_path.read_text())
    crafted.write_text(
        json.dumps({**manifest, "id": "20200101T000000000000Z"})
    )  # names kept's file
    naive = backups.directory / "20200102T000000000000Z.json"
    naive.write_text(
        json.dumps(
            {
                **manifest,
                "id": naive.stem,
                "file": f"{naive.stem}.db",
                "taken_at": "2020-01-02T00:00:00",
            }
        )
    )
    assert [b.id for b in backups.backups()] == [kept.id]
    assert len(backups.unreadable) == 2
    assert "does not match its name" in " ".join(backups.unreadable)
    assert "names no time zone" in " ".join(backups.unreadable)
    backups.run(T0 + timedelta(hours=1))  # pruning goes by the catalogue's own names only
    assert kept.path.exists()
    assert crafted.exists()
    assert (backups.directory / "notes.json").exists()


def test_the_newest_verified_backup_outlives_keep_until_a_newer_one_is_verified(
    database: Path,
) -> None:
    backups = catalogue(database, keep=1)
    proven = backups.run(T0)
    backups.verify(proven, T0)
    unproven = backups.run(T0 + timedelta(hours=1))
    assert [b.id for b in backups.backups()] == [unproven.id, proven.id]
    backups.verify(unproven)
    newest = backups.run(T0 + timedelta(hours=2))
    assert [b.id for b in backups.backups()] == [newest.id, unproven.id]


def test_backups_are_readable_by_their_owner_only(database: Path) -> None:
    database.chmod(0o640)
    backups = catalogue(database)
    backup = backups.run(T0)
    assert backups.directory.stat().st_mode & 0o777 == 0o700
    assert backup.path.stat().st_mode & 0o777 == 0o600
    assert backup.manifest_path.stat().st_mode & 0o777 == 0o600
    backups.restore(backup)
    assert database.stat().st_mode & 0o777 == 0o640  # the restored file keeps the old mode


@pytest.mark.anyio
async def test_an_in_memory_database_runs_without_a_watch(
    make_settings: Callable[..., Settings],
) -> None:
    app = FastAPI()
    settings = make_settings(database={"url": "sqlite+aiosqlite:///:memory:"})
    context = AppContext(app, settings, None, None, None)  # type: ignore[arg-type]  # unused here
    async with backups_capability.CAPABILITY.running(context):
        assert not hasattr(app.state, "backup_watch")


def test_the_command_waits_for_no_one_and_says_so(database: Path) -> None:
    backups = catalogue(database)
    with backups.exclusive() as mine:
        assert mine
        busy = runner.invoke(cli, ["backup", "run"])
    assert busy.exit_code == 2
    assert "another backup, verification or restore is under way" in flat(busy.stderr)
    assert backups.backups() == []


def test_a_file_system_error_is_a_message_and_exit_code_2(database: Path) -> None:
    assert runner.invoke(cli, ["backup", "run"]).exit_code == 0
    blocker = database.with_name(database.name + ".restoring")
    blocker.mkdir()  # where the restore prepares its copy: a directory, in the way
    (blocker / "in-the-way").write_text("")
    result = runner.invoke(cli, ["backup", "restore", "--yes"])
    assert result.exit_code == 2
    assert "File system error" in flat(result.stderr)
    assert "Traceback" not in result.output


def test_backups_in_production_need_none_of_the_api_secrets(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RENUM_ENVIRONMENT", "production")
    for name in ("RENUM_SECRET_KEY", "RENUM_ENCRYPTION_KEYS"):
        monkeypatch.delenv(name, raising=False)
    refused = runner.invoke(cli, ["db", "current"])
    assert refused.exit_code == 2  # a command that holds secrets is refused without them
    assert "RENUM_SECRET_KEY" in flat(refused.stderr)
    result = runner.invoke(cli, ["backup", "run"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(cli, ["backup", "verify"]).exit_code == 0


# --- encryption at rest of SQLite snapshots (age) ---------------------------------------------


def test_snapshots_are_encrypted_at_rest_and_open_with_the_identity(database: Path) -> None:
    identity, _ = new_identity()
    note(database, "sealed-marker-7f3a")
    sealed = BackupCatalogue(database, database.parent / "backups", 14, identity=identity)
    backup = sealed.run()
    assert backup.path.name == f"{backup.id}.db.age"
    stored = backup.path.read_bytes()
    assert stored.startswith(b"age-encryption.org/v1")
    assert b"sealed-marker-7f3a" not in stored
    assert b"SQLite format 3" not in stored
    assert backup.path.stat().st_mode & 0o777 == 0o600
    assert not list(sealed.directory.glob("*.partial"))  # the plain copy did not stay
    assert sealed.backups() == [backup]
    assert sealed.verify(backup).passed

    other, _ = new_identity()
    assert sealed.find().encrypted
    wrong = BackupCatalogue(database, sealed.directory, 14, identity=other)
    (problem,) = wrong.verify(backup).problems
    assert problem.startswith(f"cannot decrypt {backup.path.name}")
    without = BackupCatalogue(database, sealed.directory, 14)
    assert without.verify(backup).problems == (
        "the backup is encrypted: RENUM_BACKUPS__AGE_IDENTITY opens it",
    )

    note(database, "after-the-backup")
    sealed.restore(backup)
    assert "sealed-marker-7f3a" in names(database)
    assert "after-the-backup" not in names(database)


def test_an_altered_encrypted_snapshot_fails_its_verification(database: Path) -> None:
    identity, _ = new_identity()
    sealed = BackupCatalogue(database, database.parent / "backups", 14, identity=identity)
    backup = sealed.run()
    data = bytearray(backup.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    backup.path.write_bytes(bytes(data))
    problems = sealed.verify(backup).problems
    assert "the file's SHA-256 differs from the one recorded" in problems
    assert any(problem.startswith("cannot decrypt") for problem in problems)
    with pytest.raises(BackupError, match="failed its verification"):
        sealed.restore(backup)


def test_keygen_makes_an_identity_the_settings_take(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = runner.invoke(cli, ["backup", "keygen"])
    assert made.exit_code == 0
    comment, identity = made.stdout.splitlines()
    assert comment.startswith("# public key: age1")
    assert recipient(identity) == comment.removeprefix("# public key: ")
    monkeypatch.setenv("RENUM_BACKUPS__AGE_IDENTITY", identity)
    taken = runner.invoke(cli, ["backup", "run"])
    assert taken.exit_code == 0, taken.output
    assert ".db.age" in flat(taken.stdout)
    assert runner.invoke(cli, ["backup", "verify"]).exit_code == 0
    monkeypatch.setenv("RENUM_BACKUPS__AGE_IDENTITY", "AGE-SECRET-KEY-1NOTAKEY")
    refused = runner.invoke(cli, ["backup", "list"])
    assert refused.exit_code == 2
    assert "age identity" in flat(refused.stderr)
    assert "AGE-SECRET-KEY-1NOTAKEY" not in refused.output  # a secret is never echoed


def test_a_throwaway_server_that_stops_while_recovering_says_why(tmp_path: Path) -> None:
    log = os.open(tmp_path / "server.log", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        said = (
            "echo 'LOG:  starting'; echo 'FATAL:  recovery ended before target'; echo 'LOG:  gone'"
        )
        server = subprocess.Popen(["sh", "-c", said], stdout=log)  # noqa: S603,S607 - a stand-in
        server.wait()
        nowhere = f"postgresql+asyncpg://renum@/renum?host={tmp_path}&port=5432"
        with pytest.raises(BackupError, match="stopped while recovering: FATAL:  recovery ended"):
            PostgresCatalogue._wait_until_promoted(server, nowhere, log)
    finally:
        os.close(log)
