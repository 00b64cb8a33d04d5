"""The directory of backups: each one a database file ``<id>.db`` (``<id>.db.age`` when
encrypted, see ``sealing``) and its manifest ``<id>.json``, the id being the UTC time it was
taken (``20261205T091500123456Z``); PostgreSQL's catalogue keeps its manifests the same way
(``ManifestCatalogue``), its backups being pgBackRest's. Files whose
names are not such ids are not the catalogue's and are left alone; a manifest that cannot be
read is listed in ``unreadable`` (and reported by the watch), never trusted.

Taking, pruning and restoring hold the lock file ``.renum-backup.lock`` (``exclusive``), so the
command line and the server's schedule never do two of them at once. Backups and manifests are
readable by their owner only: they hold password hashes and sealed provider keys."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from app.capabilities.backups.replication import ReplicationError, restore_replica
from app.capabilities.backups.sealing import SUFFIX as SEALED
from app.capabilities.backups.sealing import SealingError, open_sealed, seal
from app.core.config import Settings
from app.db.database import sqlite_file_path
from app.db.snapshots import DatabaseFacts, SnapshotError, read_facts, release, take_snapshot

ID_FORMAT = "%Y%m%dT%H%M%S%fZ"
ID = re.compile(r"^\d{8}T\d{12}Z$")
MANIFEST_VERSION = 1
LOCK_FILE = ".renum-backup.lock"


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verification:
        return cls(at=_aware(data["at"]), problems=tuple(str(p) for p in data["problems"]))


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
        return self.path.parent / f"{self.id}.json"

    @property
    def encrypted(self) -> bool:
        return self.path.name.endswith(SEALED)

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


@dataclass(frozen=True)
class Owner:
    """The operating-system user files are given to (PostgreSQL's, when Renum runs as root).
    Nothing is ever given away through a path: a file is given by its descriptor right after
    this process created it, a directory only if it is a real directory, never a link another
    user may have planted."""

    uid: int
    gid: int

    def give(self, descriptor: int) -> None:
        os.fchown(descriptor, self.uid, self.gid)

    def adopt_directory(self, path: Path) -> None:
        """``path``, a directory this process made or found, given to the owner (a symbolic
        link in its place is refused, not followed)."""
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            self.give(descriptor)
        finally:
            os.close(descriptor)


def _write_atomically(path: Path, text: str, owner: Owner | None = None) -> None:
    """Write ``path`` whole or not at all: a new file under a temporary name (never following
    a link), given to ``owner`` by its descriptor, then renamed over ``path``."""
    partial = path.with_name(f"{path.name}.{secrets.token_hex(8)}.partial")
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
    with os.fdopen(os.open(partial, flags, 0o600), "w") as stream:
        if owner is not None:
            owner.give(stream.fileno())
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(partial, path)


def _aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text} names no time zone")
    return moment


class ManifestCatalogue:
    """A directory of manifests ``<id>.json``, one per backup, and the lock that keeps two
    processes from changing it at once; what a manifest describes is the subclass's."""

    engine = ""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.unreadable: list[str] = []  # manifests the last listing could not read

    @property
    def owner(self) -> Owner | None:
        """Who the files written here belong to, if not this process (see ``Owner``)."""
        return None

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[bool]:
        """The catalogue's lock file, held for the block if no other process holds it (yields
        whether it was taken)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        descriptor = os.open(self.directory / LOCK_FILE, flags, 0o600)
        try:
            if self.owner is not None:
                self.owner.give(descriptor)  # the owner's own runs take it too
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(descriptor, fcntl.LOCK_UN)
        finally:
            os.close(descriptor)

    def _parse(self, path: Path, data: dict[str, Any]) -> Any:
        """The backup the manifest ``data`` read from ``path`` describes."""
        raise NotImplementedError

    def _read_manifest(self, path: Path) -> Any:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data["id"] != path.stem or data.get("engine", "sqlite") != self.engine:
                raise ValueError("its id or engine does not match")
            return self._parse(path, data)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackupError(f"unreadable manifest {path}: {exc}") from None

    def backups(self) -> list[Any]:
        """Every backup with a readable manifest, newest first (``unreadable`` lists the
        others)."""
        self.unreadable = []
        if not self.directory.is_dir():
            return []
        found = []
        for name in sorted(os.listdir(self.directory)):  # a directory this process may not
            path = self.directory / name  # read raises, never looks empty
            if path.suffix != ".json" or not ID.match(path.stem):
                continue  # not one of the catalogue's files
            try:
                found.append(self._read_manifest(path))
            except BackupError as exc:
                self.unreadable.append(str(exc))
        return sorted(found, key=lambda backup: backup.taken_at, reverse=True)

    def find(self, backup_id: str | None = None, *, at_or_before: datetime | None = None) -> Any:
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


class BackupCatalogue(ManifestCatalogue):
    """The backups of the SQLite database at ``database`` kept in ``directory`` (at most
    ``keep`` of them), and its continuous replica in ``replica`` if there is one."""

    engine = "sqlite"

    def __init__(
        self,
        database: Path,
        directory: Path,
        keep: int,
        replica: Path | None = None,
        identity: str | None = None,
    ) -> None:
        super().__init__(directory)
        self.database = database
        self.keep = keep
        self.replica = replica
        self.identity = identity  # an age identity: snapshots are encrypted with it

    def _parse(self, path: Path, data: dict[str, Any]) -> Backup:
        """A backup's file is always ``<id>.db`` (``<id>.db.age`` encrypted) beside its
        manifest, whatever else it says."""
        if data["file"] not in (f"{path.stem}.db", f"{path.stem}.db{SEALED}"):
            raise ValueError("its file does not match its name")
        checked = data.get("verification")
        return Backup(
            id=path.stem,
            taken_at=_aware(data["taken_at"]),
            path=path.with_name(data["file"]),
            size=int(data["size"]),
            sha256=str(data["sha256"]),
            facts=DatabaseFacts.from_dict(data),
            verification=Verification.from_dict(checked) if checked else None,
        )

    def run(self, now: datetime | None = None) -> Backup:
        """Take a backup now, record it, and remove the oldest beyond ``keep`` (never the
        newest one that passed its verification). Call it holding ``exclusive``."""
        taken_at = now or datetime.now(UTC)
        backup_id = taken_at.strftime(ID_FORMAT)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for left in self.directory.glob("*.partial"):  # from a run that was killed
            left.unlink(missing_ok=True)
        path = self.directory / f"{backup_id}.db"
        partial = path.with_name(path.name + ".partial")
        try:
            facts = take_snapshot(self.database, partial)
            if self.identity is not None:  # the plain copy never gets a backup's name
                path = path.with_name(path.name + SEALED)
                sealed = path.with_name(path.name + ".partial")
                seal(partial, sealed, self.identity)
                partial.unlink()
                partial = sealed
        except (SnapshotError, SealingError) as exc:
            partial.unlink(missing_ok=True)
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
        backups = self.backups()
        good = [b for b in backups if b.verification is not None and b.verification.passed]
        for old in backups[self.keep :]:
            if good and old is good[0]:
                continue  # the newest proven backup stays until a newer one is proven
            old.path.unlink(missing_ok=True)
            old.manifest_path.unlink(missing_ok=True)
        return backup

    def verify(self, backup: Backup, now: datetime | None = None) -> Verification:
        """Restore ``backup`` into a throwaway file and check it against its manifest: the
        stored file's size and SHA-256, then the copy (decrypted when the backup is
        encrypted): SQLite's integrity check, the migration revision, every table's rows and
        checksum. The result is recorded in the manifest."""
        if not backup.path.is_file():
            problems = [f"the backup's file {backup.path} is missing"]
        else:
            with tempfile.TemporaryDirectory(prefix="renum-verify-") as scratch:
                problems = self._unpack(backup, Path(scratch) / "restored.db")
        verification = Verification(at=now or datetime.now(UTC), problems=tuple(problems))
        recorded = dataclasses.replace(backup, verification=verification)
        _write_atomically(backup.manifest_path, json.dumps(recorded.manifest(), indent=2))
        return verification

    def _unpack(self, backup: Backup, copy: Path) -> list[str]:
        """Copy ``backup``'s file to the new file ``copy`` (decrypted when it is encrypted)
        and say what is wrong with it against the manifest."""
        problems = []
        size = backup.path.stat().st_size
        if size != backup.size:
            problems.append(f"size {size} bytes, recorded {backup.size}")
        if _sha256(backup.path) != backup.sha256:
            problems.append("the file's SHA-256 differs from the one recorded")
        if not backup.encrypted:
            shutil.copyfile(backup.path, copy)
        elif self.identity is None:
            return [*problems, "the backup is encrypted: RENUM_BACKUPS__AGE_IDENTITY opens it"]
        else:
            try:
                open_sealed(backup.path, copy, self.identity)
            except SealingError as exc:
                return [*problems, str(exc)]
        try:
            facts = read_facts(copy)
        except SnapshotError as exc:
            return [*problems, str(exc)]
        return problems + backup.facts.differences(facts)

    def restore(self, backup: Backup, now: datetime | None = None) -> Path | None:
        """Verify ``backup``, then put it in place of the database file; the file it replaces
        (if any) is kept beside it as ``<name>.before-restore-<time>``, which is returned.
        Refused when the backup fails its verification."""
        if not backup.path.is_file():
            raise BackupError(f"the backup's file {backup.path} is missing")
        incoming = self._incoming()
        problems = self._unpack(backup, incoming)  # the very copy that goes in place
        if problems:
            incoming.unlink(missing_ok=True)
            raise BackupError(f"backup {backup.id} failed its verification: " + "; ".join(problems))
        return self._put_in_place(incoming, now)

    def restore_from_replica(
        self, to: datetime | None = None, now: datetime | None = None
    ) -> tuple[DatabaseFacts, Path | None]:
        """Restore the continuous replica (its latest state, or the state at ``to``) in place of
        the database, once the restored file passes SQLite's integrity check and holds a
        migrated schema; returns its facts and the kept replaced file, as ``restore``."""
        if self.replica is None:
            raise BackupError("no replica is configured (RENUM_BACKUPS__REPLICA_DIRECTORY)")
        incoming = self._incoming()
        try:
            restore_replica(self.replica, incoming, to)
            facts = read_facts(incoming)
        except (ReplicationError, SnapshotError) as exc:
            incoming.unlink(missing_ok=True)
            raise BackupError(str(exc)) from None
        if facts.revision is None:
            incoming.unlink(missing_ok=True)
            raise BackupError("the restored replica holds no migrated schema; nothing replaced")
        return facts, self._put_in_place(incoming, now)

    def _incoming(self) -> Path:
        """Where a restore prepares its file, once the database is free to be replaced."""
        try:
            release(self.database)
        except SnapshotError as exc:
            raise BackupError(str(exc)) from None
        self.database.parent.mkdir(parents=True, exist_ok=True)
        incoming = self.database.with_name(self.database.name + ".restoring")
        incoming.unlink(missing_ok=True)
        return incoming

    def _put_in_place(self, incoming: Path, now: datetime | None) -> Path | None:
        """Put the checked file ``incoming`` in place of the database; the file it replaces
        (if any) is kept beside it, with its write-ahead log, and returned."""
        if self.database.exists():  # the restored file keeps the replaced one's owner and mode
            current = self.database.stat()
            os.chmod(incoming, current.st_mode & 0o777)
            with contextlib.suppress(PermissionError):  # only root may give files away
                os.chown(incoming, current.st_uid, current.st_gid)
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


def catalogue_for(settings: Settings) -> Any:
    """The catalogue of the configured database: ``BackupCatalogue`` (SQLite) or
    ``PostgresCatalogue`` (pgBackRest)."""
    section = settings.backups
    if not settings.database.is_sqlite:
        from app.capabilities.backups.postgres import PostgresCatalogue

        if section.directory is None:
            raise BackupError(
                "backups of PostgreSQL need RENUM_BACKUPS__DIRECTORY (where Renum keeps their "
                "manifests and pgBackRest's configuration)"
            )
        return PostgresCatalogue(settings.database.url, section.directory, section)
    database = sqlite_file_path(make_url(settings.database.url))
    if database is None:
        raise BackupError("the SQLite database is in memory or a file: URI; nothing to back up")
    directory = section.directory or database.parent / "backups"
    identity = section.age_identity.get_secret_value() if section.age_identity else None
    return BackupCatalogue(database, directory, section.keep, section.replica_directory, identity)
