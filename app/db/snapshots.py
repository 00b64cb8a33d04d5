"""SQLite snapshots through SQLite's online backup API, and the facts that prove one whole.

``take_snapshot(source, destination)`` copies a live SQLite database (WAL mode, writers
running) into a new file while holding one read transaction on the source: the copy and the
facts read beside it (``DatabaseFacts``: the migration revision, and each table's row count
and checksum) describe the same instant, whatever commits meanwhile. ``read_facts(path)``
reads them again from any copy, after ``PRAGMA integrity_check``, which is how a backup is
verified: restored into a throwaway file, checked, and compared with what was true when it
was taken.

A table's checksum is a SHA-256 over its rows in ``rowid`` order (in column order for a
``WITHOUT ROWID`` table; each row's values with their types), so one changed, missing or extra
row in any table changes it; the schema's checksum covers every table, index, trigger and view
definition.

``release(path)`` makes sure no other connection has the database open before a restore
replaces it, and folds its write-ahead log into the file, so the file kept aside is whole.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REVISION_TABLE = "alembic_version"
SQLITE_HEADER = b"SQLite format 3\x00"


class SnapshotError(Exception):
    """A snapshot could not be taken or read (the message says why)."""


@dataclass(frozen=True)
class TableFacts:
    rows: int
    checksum: str


@dataclass(frozen=True)
class DatabaseFacts:
    """What a copy of the database must show: its migration revision (None before the first
    migration) and every table's rows and checksum."""

    revision: str | None
    tables: dict[str, TableFacts] = field(default_factory=dict)
    schema: str | None = None  # a checksum of every definition in sqlite_master

    def as_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "schema": self.schema,
            "tables": {
                name: {"rows": t.rows, "checksum": t.checksum} for name, t in self.tables.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatabaseFacts:
        return cls(
            revision=data["revision"],
            schema=data.get("schema"),
            tables={
                name: TableFacts(rows=int(t["rows"]), checksum=str(t["checksum"]))
                for name, t in data["tables"].items()
            },
        )

    def differences(self, other: DatabaseFacts) -> list[str]:
        """How ``other`` (a restored copy) differs from these facts, one line per difference."""
        found = []
        if other.revision != self.revision:
            found.append(f"revision {other.revision}, expected {self.revision}")
        if other.schema != self.schema:
            found.append("the schema differs (a table, index, trigger or view definition)")
        for name in sorted(self.tables.keys() | other.tables.keys()):
            expected, actual = self.tables.get(name), other.tables.get(name)
            if actual is None:
                found.append(f"table {name} is missing")
            elif expected is None:
                found.append(f"table {name} is not in the backup's record")
            elif actual.rows != expected.rows:
                found.append(f"table {name}: {actual.rows} rows, expected {expected.rows}")
            elif actual.checksum != expected.checksum:
                found.append(f"table {name}: its rows differ (checksum)")
        return found


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    mode = "ro" if read_only else "rwc"
    try:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True)
    except sqlite3.Error as exc:
        raise SnapshotError(f"cannot open {path}: {exc}") from None


def _facts(connection: sqlite3.Connection) -> DatabaseFacts:
    definitions = connection.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
    ).fetchall()
    schema = hashlib.sha256(repr(definitions).encode("utf-8", "surrogatepass")).hexdigest()
    tables = {}
    for kind, name, _, sql in definitions:
        if kind != "table" or name.startswith("sqlite_"):
            continue
        quoted = '"' + name.replace('"', '""') + '"'
        order = "rowid"
        if "WITHOUT ROWID" in (sql or "").upper():
            columns = len(connection.execute(f"PRAGMA table_info({quoted})").fetchall())
            order = ", ".join(str(position) for position in range(1, columns + 1))
        digest = hashlib.sha256()
        rows = 0
        for row in connection.execute(f"SELECT * FROM {quoted} ORDER BY {order}"):  # noqa: S608 - a name read from sqlite_master, quoted
            digest.update(repr(row).encode("utf-8", "surrogatepass"))
            rows += 1
        tables[name] = TableFacts(rows=rows, checksum=digest.hexdigest())
    revision = None
    if REVISION_TABLE in tables:
        found = connection.execute(f"SELECT version_num FROM {REVISION_TABLE}").fetchone()  # noqa: S608 - a constant
        revision = found[0] if found else None
    return DatabaseFacts(revision=revision, tables=tables, schema=schema)


def take_snapshot(source: Path, destination: Path) -> DatabaseFacts:
    """Copy the database at ``source`` into the new file ``destination`` and return the facts
    of the copied state; the copy and the facts come from one read transaction."""
    if not source.is_file():
        raise SnapshotError(f"no SQLite database at {source}")
    try:  # readable by its owner only: a backup holds password hashes and sealed keys
        os.close(os.open(destination, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        raise SnapshotError(f"{destination} exists already") from None
    reader = _connect(source, read_only=True)
    try:
        reader.execute("BEGIN")  # one read transaction: the facts and the copy see one state
        facts = _facts(reader)
        target = _connect(destination, read_only=False)
        try:
            reader.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            target.close()
        reader.rollback()
    except sqlite3.Error as exc:
        destination.unlink(missing_ok=True)
        raise SnapshotError(f"cannot copy {source}: {exc}") from None
    finally:
        reader.close()
    return facts


def read_facts(path: Path) -> DatabaseFacts:
    """``PRAGMA integrity_check`` on the database at ``path``, then its facts; a database that
    fails the check raises ``SnapshotError`` with SQLite's first findings."""
    connection = _connect(path, read_only=True)
    try:
        findings = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        if findings != ["ok"]:
            raise SnapshotError("integrity check failed: " + "; ".join(findings[:5]))
        return _facts(connection)
    except sqlite3.Error as exc:
        raise SnapshotError(f"cannot read {path}: {exc}") from None
    finally:
        connection.close()


def release(path: Path) -> None:
    """Before a restore replaces the database at ``path``: refuse while another connection has
    it open (a running backend would go on writing to the file it holds), and fold its
    write-ahead log into the file (``journal_mode=DELETE``), so the file kept aside is whole.
    A file SQLite cannot read at all (the corrupted database a restore replaces) is left as
    it is."""
    try:
        with path.open("rb") as stream:
            if stream.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                return  # not an SQLite file (or an empty one): SQLite must not touch its log
    except FileNotFoundError:
        return
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=0)
    except sqlite3.Error:
        return
    try:
        connection.execute("PRAGMA journal_mode=DELETE").fetchone()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise SnapshotError(
                f"{path} is in use by another process: stop the backend first"
            ) from None
    except sqlite3.DatabaseError:
        return  # not readable as a database: nothing to fold, nothing to protect
    finally:
        connection.close()
