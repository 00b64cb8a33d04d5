"""The directory of backups: each one a database file ``<id>.db`` and its manifest
``<id>.json``, the id being the UTC time it was taken (``20261205T091500123Z``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from app.core.config import Settings
from app.db.database import sqlite_file_path
from app.db.snapshots import DatabaseFacts, SnapshotError, read_facts, take_snapshot

ID_FORMAT = "%Y%m%dT%H%M%S%fZ"
MANIFEST_VERSION = 1


class BackupError(Exception):
    """A backup could not be taken, found, verified or restored (the message says why)."""


@dataclass(frozen=True)
class Verification:
    """The outcome of one verification: when, and what was wrong (nothing: it passed)."""

    at: datetime
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "passed": self.passed, "problems": list(self.problems)}


@dataclass(frozen=True)
class Backup:
    """One backup as its manifest describes it."""

    id: str
    taken_at: datetime
    path: Path
    size: int
    sha256: str
    facts: DatabaseFacts
    verification: Verification | None = None

    @property
    def manifest_path(self) -> Path:
        return self.path.with_suffix(".json")

    def manifest(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "id": self.id,
            "taken_at": self.taken_at.isoformat(),
            "engine": "sqlite",
            "file": self.path.name,
            "size": self.size,
            "sha256": self.sha256,
            **self.facts.as_dict(),
            "verification": self.verification.as_dict() if self.verification else None,
        }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(partial, path)


def _read_manifest(path: Path) -> Backup:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        checked = data.get("verification")
        return Backup(
            id=data["id"],
            taken_at=datetime.fromisoformat(data["taken_at"]),
            path=path.with_name(data["file"]),
            size=int(data["size"]),
            sha256=str(data["sha256"]),
            facts=DatabaseFacts.from_dict(data),
            verification=Verification(
                at=datetime.fromisoformat(checked["at"]), problems=tuple(checked["problems"])
            )
            if checked
            else None,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackupError(f"unreadable manifest {path}: {exc}") from None


class BackupCatalogue:
    """The backups of the SQLite database at ``database`` kept in ``directory`` (at most
    ``keep`` of them)."""

    def __init__(self, database: Path, directory: Path, keep: int) -> None:
        self.database = database
        self.directory = directory
        self.keep = keep

    def run(self, now: datetime | None = None) -> Backup:
        """Take a backup now, record it, and remove the oldest beyond ``keep``."""
        taken_at = now or datetime.now(UTC)
        backup_id = taken_at.strftime(ID_FORMAT)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{backup_id}.db"
        partial = path.with_name(path.name + ".partial")
        partial.unlink(missing_ok=True)
        try:
            facts = take_snapshot(self.database, partial)
        except SnapshotError as exc:
            raise BackupError(str(exc)) from None
        os.replace(partial, path)
        backup = Backup(
            id=backup_id,
            taken_at=taken_at,
            path=path,
            size=path.stat().st_size,
            sha256=_sha256(path),
            facts=facts,
        )
        _write_atomically(backup.manifest_path, json.dumps(backup.manifest(), indent=2))
        for old in self.backups()[self.keep :]:
            old.path.unlink(missing_ok=True)
            old.manifest_path.unlink(missing_ok=True)
        return backup

    def backups(self) -> list[Backup]:
        """Every backup with its manifest, newest first."""
        if not self.directory.is_dir():
            return []
        found = [_read_manifest(path) for path in self.directory.glob("*.json")]
        return sorted(found, key=lambda backup: backup.taken_at, reverse=True)

    def find(self, backup_id: str | None = None, *, at_or_before: datetime | None = None) -> Backup:
        """The backup ``backup_id``; else the newest taken at or before ``at_or_before``; else
        the newest."""
        backups = self.backups()
        if backup_id is not None:
            for backup in backups:
                if backup.id == backup_id:
                    return backup
            raise BackupError(f"no backup {backup_id} in {self.directory}")
        if at_or_before is not None:
            backups = [b for b in backups if b.taken_at <= at_or_before]
            if not backups:
                raise BackupError(f"no backup taken at or before {at_or_before.isoformat()}")
        if not backups:
            raise BackupError(f"no backup in {self.directory}: take one with `renum backup run`")
        return backups[0]

    def verify(self, backup: Backup, now: datetime | None = None) -> Verification:
        """Restore ``backup`` into a throwaway file and check it against its manifest: the
        file's size and SHA-256, SQLite's integrity check, the migration revision, every
        table's rows and checksum. The result is recorded in the manifest."""
        problems = self._problems(backup)
        verification = Verification(at=now or datetime.now(UTC), problems=tuple(problems))
        recorded = Backup(**{**backup.__dict__, "verification": verification})
        _write_atomically(backup.manifest_path, json.dumps(recorded.manifest(), indent=2))
        return verification

    def _problems(self, backup: Backup) -> list[str]:
        if not backup.path.is_file():
            return [f"the backup's file {backup.path} is missing"]
        problems = []
        size = backup.path.stat().st_size
        if size != backup.size:
            problems.append(f"size {size} bytes, recorded {backup.size}")
        if _sha256(backup.path) != backup.sha256:
            problems.append("the file's SHA-256 differs from the one recorded")
        with tempfile.TemporaryDirectory(prefix="renum-verify-") as scratch:
            restored = Path(scratch) / "restored.db"
            shutil.copyfile(backup.path, restored)
            try:
                facts = read_facts(restored)
            except SnapshotError as exc:
                return [*problems, str(exc)]
        return problems + backup.facts.differences(facts)

    def restore(self, backup: Backup, now: datetime | None = None) -> Path | None:
        """Verify ``backup``, then put it in place of the database file; the file it replaces
        (if any) is kept beside it as ``<name>.before-restore-<time>``, which is returned.
        Refused when the backup fails its verification."""
        verification = self.verify(backup, now)
        if not verification.passed:
            raise BackupError(
                f"backup {backup.id} failed its verification: " + "; ".join(verification.problems)
            )
        self.database.parent.mkdir(parents=True, exist_ok=True)
        incoming = self.database.with_name(self.database.name + ".restoring")
        shutil.copyfile(backup.path, incoming)
        with incoming.open("rb") as stream:
            os.fsync(stream.fileno())
        kept = None
        if self.database.exists():
            stamp = (now or datetime.now(UTC)).strftime(ID_FORMAT)
            kept = self.database.with_name(f"{self.database.name}.before-restore-{stamp}")
            os.replace(self.database, kept)
        # The replaced database's write-ahead log and shared memory belong to it: left beside
        # the restored file, SQLite would replay that log into it.
        for suffix in ("-wal", "-shm"):
            companion = self.database.with_name(self.database.name + suffix)
            if companion.exists() and kept is not None:
                os.replace(companion, kept.with_name(kept.name + suffix))
            companion.unlink(missing_ok=True)
        os.replace(incoming, self.database)
        return kept


def catalogue_for(settings: Settings) -> BackupCatalogue:
    """The catalogue of the configured database (SQLite only, so far)."""
    if not settings.database.is_sqlite:
        raise BackupError(
            "backups of PostgreSQL are not available yet: use the PostgreSQL tools you trust "
            "(pg_dump, pgBackRest) meanwhile; `renum backup` covers the SQLite database"
        )
    database = sqlite_file_path(make_url(settings.database.url))
    if database is None:
        raise BackupError("the SQLite database is in memory or a file: URI; nothing to back up")
    directory = settings.backups.directory or database.parent / "backups"
    return BackupCatalogue(database, directory, settings.backups.keep)
