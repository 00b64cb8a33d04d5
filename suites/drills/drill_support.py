"""What several drills share: the ``renum`` command run as operators run it, and a private
PostgreSQL cluster archiving its WAL into an encrypted pgBackRest repository the way
``renum backup setup`` tells operators to set it up."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from qa.pg_cluster import PrivateCluster

KEY = "drill passphrase, long enough"
ARCHIVING = {"archive_mode": "on", "wal_level": "replica"}


def renum(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """The installed ``renum`` command with only ``settings`` as its ``RENUM_*`` variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RENUM_")}
    return subprocess.run(  # noqa: S603 - our own console script, fixed arguments
        [str(Path(sys.executable).parent / "renum"), *args],
        env={**env, **settings}, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def ok(*args: str, **settings: str) -> str:
    """``renum *args``, which must succeed; what it printed."""
    done = renum(*args, **settings)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def postgres_settings(cluster: PrivateCluster, backups: Path) -> dict[str, str]:
    """The backup settings for ``cluster``'s database ``renum``, backups in ``backups``."""
    return {
        "RENUM_DATABASE__URL": cluster.url("renum"),
        "RENUM_BACKUPS__DIRECTORY": str(backups),
        "RENUM_BACKUPS__CIPHER_KEY": KEY,
        "RENUM_BACKUPS__POSTGRES_DATA_DIRECTORY": str(cluster.data),
        "RENUM_BACKUPS__POSTGRES_SOCKET_DIRECTORY": str(cluster.root),
    }


def archive_with_pgbackrest(cluster: PrivateCluster, settings: dict[str, str]) -> None:
    """Migrate ``cluster``'s new database ``renum``, run ``renum backup setup`` and apply the
    archiving lines it prints (``cluster`` runs with ``ARCHIVING``)."""
    cluster.query("CREATE DATABASE renum")
    ok("db", "upgrade", **settings)
    for line in ok("backup", "setup", **settings).splitlines():
        if line.startswith(("archive_command", "archive_timeout")):
            cluster.query(f"ALTER SYSTEM SET {line.split('  #')[0]}")
    cluster.query("SELECT pg_reload_conf()")


def account_names(database: Path) -> set[str]:
    """The names of the accounts in the SQLite database file ``database`` (read only)."""
    connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {row[0] for row in connection.execute("SELECT name FROM accounts")}
    finally:
        connection.close()
