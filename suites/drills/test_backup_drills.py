"""Disaster drill on the embedded database: the disk holding SQLite is lost while the backend
takes writes, and the database comes back from its Litestream replica.

A backend replicating continuously to a replica directory (``backups.replica_directory``)
takes account creations back to back; then the machine "dies": the backend and its
Litestream are killed with SIGKILL at the same moment and the database file, its log and its
shared memory are deleted. ``renum backup restore --yes`` brings the replica's latest state
back and a new backend starts on it.

What is asserted is order and counts: the writes lost are only the last ones acknowledged
(every write acknowledged before the first lost one is there: no hole), the restored backend
serves writes again, and its data passes SQLite's integrity check (the restore refuses it
otherwise). What is measured and recorded (JUnit properties, printed): the RPO, how long
before the disaster the earliest lost write was acknowledged (target: at most 5 s of writes),
the writes lost, and the RTO, from the disaster to a backend ready to serve.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from qa.client import API, ApiClient
from qa.factories import DEFAULT_PASSWORD, unique_email, unique_name
from qa.launcher import LaunchedBackend
from qa.polling import wait_until

WRITING_SECONDS = 5.0


class Writer(threading.Thread):
    """Creates accounts back to back until stopped; remembers each acknowledged one with the
    moment its 201 arrived."""

    def __init__(self, admin: ApiClient) -> None:
        super().__init__(daemon=True)
        self.admin = admin
        self.acknowledged: list[tuple[str, float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            name = unique_name("Drill")
            body = {"name": name, "owner_email": unique_email(), "owner_password": DEFAULT_PASSWORD}
            try:
                response = self.admin.post(f"{API}/accounts", json=body, timeout=5)
            except httpx.HTTPError:
                return  # the backend is gone
            if response.status_code == 201:
                self.acknowledged.append((name, time.monotonic()))


def kill_machine(backend: LaunchedBackend) -> None:
    """SIGKILL the backend and every process it started (its Litestream) at once."""
    assert backend.process is not None
    parent = psutil.Process(backend.process.pid)
    everyone = [*parent.children(recursive=True), parent]
    for process in everyone:
        process.kill()
    psutil.wait_procs(everyone, timeout=10)
    backend.process.wait()


def renum(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """The installed ``renum`` command with only ``settings`` as its ``RENUM_*`` variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RENUM_")}
    return subprocess.run(  # noqa: S603 - our own console script, fixed arguments
        [str(Path(sys.executable).parent / "renum"), *args],
        env={**env, **settings}, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def lose_disk(database: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)


def account_names(database: Path) -> set[str]:
    connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {row[0] for row in connection.execute("SELECT name FROM accounts")}
    finally:
        connection.close()


def test_a_lost_disk_comes_back_from_the_replica(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    replica = tmp_path / "replica"
    backend = LaunchedBackend.start(
        "sqlite", extra_env={"RENUM_BACKUPS__REPLICA_DIRECTORY": str(replica)}
    )
    url = backend.env["RENUM_DATABASE__URL"]
    database = Path(url.removeprefix("sqlite+aiosqlite:///"))
    try:
        with ApiClient(backend.base_url) as client:
            writer = Writer(client.login(backend.admin_email, backend.admin_password))
            writer.start()
            wait_until(lambda: len(writer.acknowledged) >= 20, 30, what="writes under way")
            time.sleep(WRITING_SECONDS)  # let the replica follow a steady stream of writes
            disaster = time.monotonic()
            kill_machine(backend)
            writer.stopping.set()
            writer.join(timeout=30)
        lose_disk(database)

        restored = renum(
            "backup", "restore", "--yes",
            RENUM_DATABASE__URL=url, RENUM_BACKUPS__REPLICA_DIRECTORY=str(replica),
        )  # fmt: skip
        assert restored.returncode == 0, restored.stderr
        backend.respawn()
        ready = time.monotonic()

        present = account_names(database)
        acknowledged = [name for name, _ in writer.acknowledged]
        lost = [name for name in acknowledged if name not in present]
        kept = len(acknowledged) - len(lost)
        assert kept > 0, "nothing acknowledged came back"
        assert acknowledged[:kept] == [n for n in acknowledged if n in present]  # no hole
        assert lost == acknowledged[kept:]
        earliest_lost = writer.acknowledged[kept][1] if lost else disaster
        rpo, rto = disaster - earliest_lost, ready - disaster
        for name, value in (
            ("drill_sqlite_rpo_seconds", round(rpo, 3)),
            ("drill_sqlite_writes_acknowledged", len(acknowledged)),
            ("drill_sqlite_writes_lost", len(lost)),
            ("drill_sqlite_rto_seconds", round(rto, 3)),
        ):
            record_property(name, value)
        print(
            f"\nSQLite from its Litestream replica: {len(lost)} of {len(acknowledged)} "
            f"acknowledged writes lost (RPO {rpo:.2f} s), serving again {rto:.2f} s after the "
            "disaster"
        )

        with ApiClient(backend.base_url) as client:
            admin = client.login(backend.admin_email, backend.admin_password)
            name = unique_name("After")
            body = {"name": name, "owner_email": unique_email(), "owner_password": DEFAULT_PASSWORD}
            assert admin.post(f"{API}/accounts", json=body).status_code == 201
    finally:
        backend.stop()
