"""Disaster drills: the disk holding the database is lost while the backend takes writes.

On the embedded database, SQLite comes back from its Litestream replica. On PostgreSQL, a
private cluster of about 1 GB archiving its WAL with pgBackRest (``archive_timeout`` 5 s, as
``renum backup setup`` advises) comes back from its last full backup and the archived WAL.

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
the writes lost, and the RTO, from the disaster to a backend ready to serve (target for the
1 GB PostgreSQL database: at most 60 s). On PostgreSQL the backup is taken and verified while
the writes go on, which proves the facts recorded at its restore point exact under load.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
from drill_support import (
    ARCHIVING,
    account_names,
    archive_with_pgbackrest,
    ok,
    postgres_settings,
    renum,
)

from qa.client import API, ApiClient
from qa.factories import DEFAULT_PASSWORD, unique_email, unique_name
from qa.launcher import LaunchedBackend
from qa.pg_cluster import PrivateCluster, scratch_directory
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


def judged(
    writer: Writer, present: set[str], disaster: float, ready: float
) -> tuple[list[str], list[str], float, float]:
    """The writes acknowledged and those lost (only the last ones may be: no hole), the RPO
    (how long before the disaster the earliest lost write was acknowledged) and the RTO (from
    the disaster to a backend ready to serve)."""
    acknowledged = [name for name, _ in writer.acknowledged]
    lost = [name for name in acknowledged if name not in present]
    kept = len(acknowledged) - len(lost)
    assert kept > 0, "nothing acknowledged came back"
    assert acknowledged[:kept] == [n for n in acknowledged if n in present]  # no hole
    assert lost == acknowledged[kept:]
    earliest_lost = writer.acknowledged[kept][1] if lost else disaster
    return acknowledged, lost, disaster - earliest_lost, ready - disaster


def lose_disk(database: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)


def test_a_lost_disk_comes_back_from_the_replica(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    replica = tmp_path / "replica"
    backend = LaunchedBackend.start(
        "sqlite", extra_env={"RENUM_BACKUPS__REPLICA_DIRECTORY": str(replica)}
    )
    url = backend.env["RENUM_DATABASE__URL"]
    database = backend.sqlite_file
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

        acknowledged, lost, rpo, rto = judged(writer, account_names(database), disaster, ready)
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


BALLAST_ROWS = 5_800_000  # over 1 GiB with its index: md5 text, poorly compressible


def crash(cluster: PrivateCluster) -> None:
    """Every process of the cluster killed with SIGKILL at once (the machine dies)."""
    server = int((cluster.data / "postmaster.pid").read_text().split()[0])
    parent = psutil.Process(server)
    everyone = [*parent.children(recursive=True), parent]
    for process in everyone:
        with contextlib.suppress(psutil.NoSuchProcess):  # a child gone with its parent
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(everyone, timeout=10)


def test_a_lost_postgresql_disk_comes_back_from_pgbackrest(
    record_property: Callable[[str, object], None],
) -> None:
    backups = scratch_directory("renum-drill-backups-")
    cluster = PrivateCluster(
        scratch_directory("renum-drill-pg-"),
        {**ARCHIVING, "max_wal_size": "'2GB'"},
    )
    backend = None
    try:
        cluster.init()
        cluster.start()
        settings = postgres_settings(cluster, backups)
        archive_with_pgbackrest(cluster, settings)
        cluster.query(
            "CREATE TABLE drill_ballast AS SELECT g AS id, md5(g::text) || md5((-g)::text) "
            "|| md5((g * 7)::text) || md5((g * 13)::text) AS filler "
            "FROM generate_series(1, $1::integer) AS g",
            BALLAST_ROWS,
            database="renum",
        )
        cluster.query("ALTER TABLE drill_ballast ADD PRIMARY KEY (id)", database="renum")
        (size,) = cluster.query("SELECT pg_database_size('renum')", database="renum")
        database_bytes = int(size[0])
        assert database_bytes >= 2**30

        backend = LaunchedBackend.start("postgresql", database_url=settings["RENUM_DATABASE__URL"])
        with ApiClient(backend.base_url) as client:
            writer = Writer(client.login(backend.admin_email, backend.admin_password))
            writer.start()
            wait_until(lambda: len(writer.acknowledged) >= 20, 30, what="writes under way")
            ok("backup", "run", "--type", "full", **settings)  # while the writes go on
            verified = ok("backup", "verify", **settings)
            assert "verified" in verified
            time.sleep(WRITING_SECONDS)  # the archive follows a steady stream of writes
            assert writer.is_alive(), "the writes stopped before the disaster"
            disaster = time.monotonic()
            kill_machine(backend)
            crash(cluster)
            writer.stopping.set()
            writer.join(timeout=30)
        shutil.rmtree(cluster.data)  # the disk is lost; the repository is elsewhere

        ok("backup", "restore", "--yes", **settings)
        cluster.start()
        backend.respawn()
        ready = time.monotonic()

        present = {row[0] for row in cluster.query("SELECT name FROM accounts", database="renum")}
        acknowledged, lost, rpo, rto = judged(writer, present, disaster, ready)
        for name, value in (
            ("drill_postgres_database_bytes", database_bytes),
            ("drill_postgres_rpo_seconds", round(rpo, 3)),
            ("drill_postgres_writes_acknowledged", len(acknowledged)),
            ("drill_postgres_writes_lost", len(lost)),
            ("drill_postgres_rto_seconds", round(rto, 3)),
        ):
            record_property(name, value)
        quiet = disaster - writer.acknowledged[-1][1]
        print(
            f"\nthe last write was acknowledged {quiet:.2f} s before the disaster"
            f"\nPostgreSQL ({database_bytes / 2**30:.2f} GiB) from pgBackRest: {len(lost)} of "
            f"{len(acknowledged)} acknowledged writes lost (RPO {rpo:.2f} s), serving again "
            f"{rto:.2f} s after the disaster"
        )

        with ApiClient(backend.base_url) as client:
            admin = client.login(backend.admin_email, backend.admin_password)
            name = unique_name("After")
            body = {"name": name, "owner_email": unique_email(), "owner_password": DEFAULT_PASSWORD}
            assert admin.post(f"{API}/accounts", json=body).status_code == 201
    finally:
        if backend is not None:
            backend.stop()
        cluster.__exit__(None, None, None)
        shutil.rmtree(backups, ignore_errors=True)
