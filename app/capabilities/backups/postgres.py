"""Backups of PostgreSQL with pgBackRest: full, differential and incremental backups and
continuous WAL archiving into a repository encrypted at rest (AES-256-CBC, the passphrase
from ``backups.cipher_key``), kept by pgBackRest's retention policy.

Renum writes pgBackRest's configuration from its settings (``pgbackrest.conf`` in the backups
directory, readable by the database's owner only) and drives it; PostgreSQL archives its WAL
with the ``archive_command`` that ``archive_command()`` gives (``renum backup setup`` prints
it). After each backup, Renum reads the database's facts while its tables are locked against
writes and creates a restore point in the log at that very moment
(``app.db.postgres_snapshots``); the manifest ``<id>.json`` records the backup's label, the
restore point and the facts.

A verification restores the backup into a throwaway data directory, replays the archived WAL
to the restore point in a throwaway server (its own socket directory, no TCP port, its own
configuration and ``trust`` access), and compares the facts read there with the manifest;
pgBackRest's ``verify`` checks every file of the repository against its checksum first.

Run as root, pgBackRest and the throwaway server run as the owner of the data directory, as
PostgreSQL itself does, and the files Renum writes for them are given to that owner."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from app.capabilities.backups.catalogue import (
    ID_FORMAT,
    MANIFEST_VERSION,
    BackupError,
    ManifestCatalogue,
    Owner,
    Verification,
    _aware,
    _write_atomically,
)
from app.core.config import BackupSettings
from app.db.postgres_snapshots import (
    check_marking,
    in_recovery,
    mark_restore_point,
    read_facts,
)
from app.db.snapshots import DatabaseFacts, SnapshotError

PROGRAM = "pgbackrest"
KINDS = ("full", "diff", "incr")
CONFIG_FILE = "pgbackrest.conf"
RECOVERY_TIMEOUT = 3600.0  # a throwaway server replaying a large backup's WAL
COMMAND_TIMEOUT = 6 * 3600.0


# What pgBackRest names its backups: a full one, or a full one and a differential or an
# incremental one built on it. A manifest naming anything else is not trusted: its values end
# up in pgBackRest's command line and in PostgreSQL's recovery settings.
# The parts of a URL's query that say where the server is (the throwaway server is elsewhere).
CONNECTION_QUERY = frozenset({"host", "port", "target_session_attrs"})
LABEL = re.compile(r"^\d{8}-\d{6}F(_\d{8}-\d{6}[DI])?$")


def owner_of(data_directory: Path) -> Owner | None:
    """The owner of ``data_directory`` if this process is root and it is another user's
    (else None: everything runs as this process)."""
    if os.geteuid() != 0:
        return None
    try:
        found = data_directory.stat()
    except FileNotFoundError:  # a lost disk: the directory's parent tells
        found = data_directory.parent.stat()
    return None if found.st_uid == 0 else Owner(found.st_uid, found.st_gid)


def run_as(owner: Owner | None) -> dict[str, Any]:
    """``subprocess`` arguments that run a child as ``owner`` (or as this process)."""
    if owner is None:
        return {"env": _env()}
    try:
        home = pwd.getpwuid(owner.uid).pw_dir
    except KeyError:  # a user without a name
        home = "/"
    return {"user": owner.uid, "group": owner.gid, "extra_groups": [], "env": _env(home)}


def _env(home: str | None = None) -> dict[str, str]:
    """A child's environment: the search path and a home, nothing of Renum's (its settings
    hold secrets)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    env["HOME"] = home or os.environ.get("HOME", "/")
    return env


@dataclass(frozen=True)
class PostgresBackup:
    """One pgBackRest backup as Renum's manifest describes it."""

    id: str
    taken_at: datetime
    label: str  # pgBackRest's name of the backup
    kind: str  # full, diff or incr
    size: int  # bytes of the database it holds
    stored: int  # bytes it added to the repository (compressed, encrypted)
    restore_point: str
    facts: DatabaseFacts
    manifest_path: Path
    verification: Verification | None = None

    @property
    def where(self) -> str:
        return f"pgBackRest {self.kind} backup {self.label}"

    def manifest(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "id": self.id,
            "taken_at": self.taken_at.isoformat(),
            "engine": "postgresql",
            "label": self.label,
            "type": self.kind,
            "size": self.size,
            "stored": self.stored,
            "restore_point": self.restore_point,
            **self.facts.as_dict(),
            "verification": self.verification.as_dict() if self.verification else None,
        }


def repository_problems(said: str) -> list[str]:
    """What pgBackRest's ``verify --output=text`` found wrong in the repository: its findings
    after ``status: error`` (a file failing its checksum, WAL missing or unreadable), one per
    backup or archive it names; nothing when it found nothing."""
    lines = [line.strip() for line in said.splitlines()]
    if "status: error" not in lines:
        return []
    findings: list[str] = []
    for line in lines[lines.index("status: error") + 1 :]:
        if line.startswith(("backup:", "archiveId:")):
            findings.append(line)
        elif line and findings:
            findings[-1] += f"; {line}"
    return [f"pgBackRest verify: {finding}" for finding in findings] or [
        "pgBackRest verify found the repository in error"
    ]


class PostgresCatalogue(ManifestCatalogue):
    """The pgBackRest backups of the PostgreSQL database at ``url`` (data directory
    ``database``), with Renum's manifests in ``directory``."""

    engine = "postgresql"
    replica = None

    def __init__(self, url: str, directory: Path, section: BackupSettings) -> None:
        super().__init__(directory)
        if section.postgres_data_directory is None or section.cipher_key is None:
            raise BackupError(
                "backups of PostgreSQL need RENUM_BACKUPS__POSTGRES_DATA_DIRECTORY (pgBackRest "
                "runs on the database's host) and RENUM_BACKUPS__CIPHER_KEY (the repository is "
                "encrypted)"
            )
        self.url = url
        self.key = section.cipher_key
        self.database = section.postgres_data_directory
        self.section = section
        self.repository = section.repository or directory / "repository"
        self.config = directory / CONFIG_FILE

    # --- pgBackRest --------------------------------------------------------------------

    @property
    def owner(self) -> Owner | None:
        return owner_of(self.database)

    def archive_command(self) -> str:
        """The ``archive_command`` PostgreSQL must run to archive its WAL into the repository
        (quoted for the shell, ``%`` doubled as PostgreSQL wants)."""
        config = shlex.quote(f"--config={self.config}").replace("%", "%%")
        return f"{PROGRAM} {config} --stanza={self.section.stanza} archive-push %p"

    def _config_text(self) -> str:
        section = self.section
        url = make_url(self.url)
        lines = [
            "[global]",
            f"repo1-path={self.repository}",
            "repo1-cipher-type=aes-256-cbc",
            f"repo1-cipher-pass={self.key.get_secret_value()}",
            f"repo1-retention-full={section.retention_full}",
            f"repo1-retention-diff={section.retention_diff}",
            f"log-path={self.directory / 'log'}",
            f"lock-path={self.directory / 'lock'}",
            f"spool-path={self.directory / 'spool'}",
            "log-level-console=warn",
            "log-level-stderr=off",
            "log-level-file=info",
            "start-fast=y",
            "compress-type=zst",
            "",
            f"[{section.stanza}]",
            f"pg1-path={self.database}",
            f"pg1-port={section.postgres_port or url.port or 5432}",
            f"pg1-socket-path={section.postgres_socket_directory}",
            "",
        ]
        return "\n".join(lines)

    def configure(self) -> None:
        """Write pgBackRest's configuration from the settings (when it changed). A passphrase
        other than the one the repository was created with is refused: PostgreSQL's archiving
        reads this file, and would stop."""
        owner = self.owner
        for directory in (self.directory, self.repository, self.directory / "log"):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if owner is not None:
                owner.adopt_directory(directory)
        text = self._config_text()
        try:
            current = self.config.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current == text:
            return
        if (
            current is not None
            and self._key_in(current) != self._key_in(text)
            and any((self.repository / "backup").glob(f"{self.section.stanza}/backup.info*"))
        ):
            raise BackupError(
                "RENUM_BACKUPS__CIPHER_KEY is not the passphrase the repository was created "
                f"with ({self.repository}): it cannot be changed in place (archiving would stop)"
            )
        _write_atomically(self.config, text, owner)

    @staticmethod
    def _key_in(text: str) -> str | None:
        for line in text.splitlines():
            if line.startswith("repo1-cipher-pass="):
                return line.removeprefix("repo1-cipher-pass=")
        return None

    def prepare(self) -> None:
        """Write pgBackRest's configuration and make sure the repository has the stanza
        (both idempotent)."""
        self.configure()
        self.pgbackrest("stanza-create")

    def pgbackrest(self, command: str, *options: str) -> str:
        """Run pgBackRest's ``command`` on the stanza and return what it printed; a failure
        raises ``BackupError`` with pgBackRest's own message."""
        arguments = [PROGRAM, f"--config={self.config}", f"--stanza={self.section.stanza}"]
        extra = run_as(self.owner)
        try:
            done: subprocess.CompletedProcess[str] = subprocess.run(  # noqa: S603 - a fixed program, arguments built here
                [*arguments, *options, command],
                capture_output=True,
                text=True,
                errors="replace",  # a message may quote bytes a wrong key decrypted
                timeout=COMMAND_TIMEOUT,
                cwd="/",
                check=False,
                **extra,
            )
        except FileNotFoundError:
            raise BackupError(
                "pgBackRest is not installed: `apt-get install pgbackrest` (Debian)"
            ) from None
        except subprocess.TimeoutExpired:
            raise BackupError(f"pgBackRest {command} did not finish within its time") from None
        if done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
            raise BackupError(f"pgBackRest {command} failed: " + " / ".join(said))
        return done.stdout

    def info(self) -> dict[str, Any]:
        """pgBackRest's description of the stanza (its backups, archive, status)."""
        try:  # not strict: a message may quote control characters a wrong key decrypted
            found = json.loads(self.pgbackrest("info", "--output=json"), strict=False)
        except ValueError:
            raise BackupError("pgBackRest info failed: it printed no readable answer") from None
        for stanza in found:
            if stanza.get("name") != self.section.stanza:
                continue
            status = stanza.get("status", {})
            if status.get("code") not in (0, 2):  # 2: no backup yet
                said = "".join(c if c.isprintable() else "?" for c in str(status.get("message")))
                for repo in stanza.get("repo", []):
                    detail = repo.get("status", {}).get("message")
                    if detail:
                        said = "".join(c if c.isprintable() else "?" for c in str(detail))
                raise BackupError(f"pgBackRest info failed: the repository says {said[:300]}")
            return dict(stanza)
        raise BackupError(f"the repository holds no stanza {self.section.stanza}")

    # --- the catalogue -----------------------------------------------------------------

    def _parse(self, path: Path, data: dict[str, Any]) -> PostgresBackup:
        checked = data.get("verification")
        if data["type"] not in KINDS:
            raise ValueError(f"unknown backup type {data['type']!r}")
        if not LABEL.match(str(data["label"])):
            raise ValueError("its label is not one pgBackRest gives")
        if data["restore_point"] != f"renum-{path.stem}":
            raise ValueError("its restore point is not the one Renum names")
        return PostgresBackup(
            id=path.stem,
            taken_at=_aware(data["taken_at"]),
            label=str(data["label"]),
            kind=data["type"],
            size=int(data["size"]),
            stored=int(data["stored"]),
            restore_point=str(data["restore_point"]),
            facts=DatabaseFacts.from_dict(data),
            manifest_path=path,
            verification=Verification.from_dict(checked) if checked else None,
        )

    def _record(self, backup: PostgresBackup) -> None:
        text = json.dumps(backup.manifest(), indent=2)
        _write_atomically(backup.manifest_path, text, self.owner)

    def run(self, now: datetime | None = None, kind: str = "incr") -> PostgresBackup:
        """Take a ``kind`` backup (an incremental one falls back to full when there is none
        to build on), mark its restore point, have the WAL up to it archived, and record it;
        manifests of backups pgBackRest's retention removed go too. Call it holding
        ``exclusive``."""
        if kind not in KINDS:
            raise BackupError(f"unknown backup type {kind!r}: one of {', '.join(KINDS)}")
        taken_at = now or datetime.now(UTC)
        backup_id = taken_at.strftime(ID_FORMAT)
        try:
            check_marking(self.url)  # before the backup: none is taken that cannot be recorded
        except SnapshotError as exc:
            raise BackupError(str(exc)) from None
        self.prepare()
        self.pgbackrest("backup", f"--type={kind}")  # pgBackRest's retention expires after it
        listed = self.info()["backup"]
        made = listed[-1]
        point = f"renum-{backup_id}"
        try:
            facts = mark_restore_point(self.url, point)
        except SnapshotError as exc:
            raise BackupError(str(exc)) from None
        self.pgbackrest("check")  # switches the WAL and waits until it is archived
        backup = PostgresBackup(
            id=backup_id,
            taken_at=taken_at,
            label=str(made["label"]),
            kind=str(made["type"]),
            size=int(made["info"]["size"]),
            stored=int(made["info"]["repository"]["delta"]),
            restore_point=point,
            facts=facts,
            manifest_path=self.directory / f"{backup_id}.json",
        )
        self._record(backup)
        kept = {entry["label"] for entry in listed}
        for old in self.backups():
            if old.label not in kept:  # expired by the retention policy
                old.manifest_path.unlink(missing_ok=True)
        return backup

    def verify(self, backup: PostgresBackup, now: datetime | None = None) -> Verification:
        """Check the repository's files, restore ``backup`` to its restore point in a
        throwaway server, and compare what it holds with the manifest; the result is recorded
        in the manifest. What keeps the verification from running at all (pgBackRest or
        PostgreSQL's programs missing, the repository unreadable) raises ``BackupError`` and
        records nothing. Call it holding ``exclusive``."""
        self.configure()  # the stanza exists: the backup is in it
        postgres = self._bin("postgres")
        for stale in self.directory.glob("verify-*"):  # left by a verification that was killed
            shutil.rmtree(stale, ignore_errors=True)
        problems = repository_problems(self.pgbackrest("verify", "--output=text"))
        if not problems:
            try:
                with self._throwaway(backup, postgres) as url:
                    problems = backup.facts.differences(read_facts(url))
            except (BackupError, SnapshotError) as exc:
                problems = [str(exc)]
        verification = Verification(at=now or datetime.now(UTC), problems=tuple(problems))
        self._record(dataclasses.replace(backup, verification=verification))
        return verification

    def _bin(self, program: str) -> Path:
        directory = self.section.postgres_bin_directory
        if directory is None:
            major = self.info()["db"][-1]["version"]
            directory = Path(f"/usr/lib/postgresql/{major}/bin")
        path = directory / program
        if not path.is_file():
            raise BackupError(
                f"{path} is missing: set RENUM_BACKUPS__POSTGRES_BIN_DIRECTORY to PostgreSQL's "
                "programs"
            )
        return path

    @contextlib.contextmanager
    def _throwaway(self, backup: PostgresBackup, postgres: Path) -> Iterator[str]:
        """``backup`` restored to its restore point in a throwaway server; yields its URL.

        The server listens on a Unix socket in a new temporary directory only; its settings
        are given on its command line, which outranks whatever the restored
        ``postgresql.auto.conf`` holds. Its files are written while that directory is still
        this process's alone, and given to the owner before the server starts."""
        owner = self.owner
        data = self.directory / f"verify-{backup.id}"
        socket = Path(tempfile.mkdtemp(prefix="renum-verify-"))  # a socket's path: <108 bytes
        server = None
        log = None
        try:
            access = socket / "pg_hba.conf"
            _write_atomically(access, "local all all trust\n", owner)
            config = socket / "postgresql.conf"
            _write_atomically(
                config, "# the throwaway server's settings are on its command line\n", owner
            )
            # The server's output, opened here before the directory is handed over and only
            # ever read back through this descriptor: never a link planted in its place.
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND
            log = os.open(socket / "server.log", flags, 0o600)
            if owner is not None:
                owner.give(log)
                owner.adopt_directory(socket)
            data.mkdir(mode=0o700)
            if owner is not None:
                owner.adopt_directory(data)
            self.pgbackrest(
                "restore",
                f"--pg1-path={data}",
                f"--set={backup.label}",
                "--type=name",
                f"--target={backup.restore_point}",
                "--target-action=promote",
                "--target-timeline=current",  # the backup's own timeline, whatever came after
                "--archive-mode=off",
                "--job-retry=0",  # a file that fails its checksum fails now, not thrice
            )
            settings = {
                "config_file": config,
                "hba_file": access,
                "listen_addresses": "",
                "unix_socket_directories": socket,
                "port": 5432,
                "hot_standby": "off",  # no reads while recovering: no connection limits to match
                "fsync": "off",
                "archive_mode": "off",
                "logging_collector": "off",
                "shared_preload_libraries": "",
            }
            command = [str(postgres), "-D", str(data)]
            for name, value in settings.items():
                command += ["-c", f"{name}={value}"]
            server = subprocess.Popen(  # noqa: S603 - PostgreSQL's own program
                command, stdout=log, stderr=subprocess.STDOUT, cwd="/", **run_as(owner)
            )
            live = make_url(self.url)  # its user, database and options; the throwaway's socket
            query = {k: v for k, v in live.query.items() if k not in CONNECTION_QUERY}
            url = live.set(  # no password: the throwaway server trusts its socket
                password=None,
                host=None,
                port=None,
                query={**query, "host": str(socket), "port": "5432"},
            )
            target = url.render_as_string()
            self._wait_until_promoted(server, target, log)
            yield target
        finally:
            if server is not None:
                server.send_signal(signal.SIGINT)  # fast shutdown
                try:
                    server.wait(timeout=60)
                finally:
                    if server.poll() is None:
                        server.kill()
                        server.wait()
            if log is not None:
                os.close(log)
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(socket, ignore_errors=True)

    @staticmethod
    def _wait_until_promoted(server: subprocess.Popen[bytes], url: str, log: int) -> None:
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while time.monotonic() < deadline:
            if server.poll() is not None:
                tail = os.pread(log, 65536, max(0, os.fstat(log).st_size - 65536))
                said = tail.decode("utf-8", errors="replace").strip().splitlines()
                worst = [line for line in said if "FATAL" in line or "PANIC" in line] or said
                raise BackupError(
                    "the throwaway server stopped while recovering: " + " / ".join(worst[-3:])
                )
            if in_recovery(url) is False:
                return
            time.sleep(0.2)
        raise BackupError("the throwaway server did not finish recovering within its time")

    def restore(
        self,
        backup: PostgresBackup | None = None,
        to: datetime | None = None,
        into: Path | None = None,
    ) -> str:
        """Restore into the (stopped) server's data directory, or ``into`` another, empty one
        (a copy to read from, which never archives into the repository): ``backup`` to its
        restore point, or the state at ``to`` (point-in-time, from the archived WAL), or,
        with neither, the latest state the archive holds. PostgreSQL finishes the recovery
        when it is started. Returns what was restored, in words."""
        target = into or self.database
        if not target.is_absolute():
            raise BackupError(f"{target} is not an absolute path")
        if (target / "postmaster.pid").exists():
            raise BackupError(f"PostgreSQL is running on {target}: stop it first")
        if into is not None and into.exists() and any(into.iterdir()):
            raise BackupError(f"{into} is not empty: a copy goes into an empty directory")
        if backup is not None and backup.verification and not backup.verification.passed:
            raise BackupError(f"backup {backup.id} failed its last verification; not restored")
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = self.owner
        if owner is not None:
            owner.adopt_directory(target)
        self.configure()
        options = [f"--pg1-path={target}"]
        if (target / "PG_VERSION").exists():
            options.append("--delta")  # only the files that differ
        if into is not None:
            options.append("--archive-mode=off")
        if backup is not None:
            options += [
                f"--set={backup.label}",
                "--type=name",
                f"--target={backup.restore_point}",
                "--target-timeline=current",
            ]
            said = f"backup {backup.id} (as it was at {backup.taken_at.isoformat()})"
        elif to is not None:
            options += ["--type=time", f"--target={to.isoformat(sep=' ')}"]
            said = f"the state at {to.isoformat()}"
        else:
            said = "the latest state the archive holds"
        if backup is not None or to is not None:
            options.append("--target-action=promote")
        self.pgbackrest("restore", *options)
        return said
