"""A highly available PostgreSQL cluster for the failover drill: a private etcd and Patroni
nodes running PostgreSQL 15, all on loopback, all started and stopped by the test.

``PatroniCluster`` starts one etcd member (its data directory in the cluster's temporary
directory, its client and peer URLs on free 127.0.0.1 ports) and ``size`` Patroni nodes, each
with its own PostgreSQL data directory, REST API port and PostgreSQL port on 127.0.0.1. Patroni
bootstraps the first leader with ``initdb`` and clones the others from it by streaming
replication; ``synchronous_mode`` makes one replica synchronous, so a commit the leader
acknowledged is on that replica too, and only that replica may be promoted when the leader
goes. The timings (``ttl`` 10 s, ``loop_wait`` 1 s, ``retry_timeout`` 4 s) make a failover take
seconds rather than the default half-minute: the leader's key expires ``ttl`` after its last
renewal and the synchronous replica promotes itself at its next loop.

Applications reach the cluster through ``url``: every node's address in the SQLAlchemy URL's
query string (``?host=127.0.0.1:P1&host=127.0.0.1:P2``, the form SQLAlchemy's asyncpg dialect
turns into asyncpg's list of hosts; a comma-separated netloc is refused by SQLAlchemy's URL
parser) with ``target_session_attrs=read-write``, so asyncpg tries the nodes in turn and keeps
the one that takes writes.

``kill`` SIGKILLs a node's Patroni, its postmaster and every backend of it at once, as if its
machine died: nothing shuts down cleanly and nothing hands the leadership over. Patroni runs
with the system's Python (Debian's ``patroni`` package); as root, Patroni, PostgreSQL and etcd
run as the ``postgres`` user (PostgreSQL refuses to run as root), as ``qa.pg_cluster`` does.
``close`` stops everything that is left and removes the directory.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import asyncpg
import httpx
import psutil

from qa.launcher import free_port
from qa.pg_cluster import (
    BIN,
    fetch,
    give_to_service_user,
    run_as_service_user,
    scratch_directory,
)
from qa.polling import wait_until

PATRONI = "/usr/bin/patroni"
ETCD = "/usr/bin/etcd"
# Patroni's timings: the leader's key lives ``ttl`` seconds unless renewed, each node runs its
# loop every ``loop_wait`` seconds, and a DCS or PostgreSQL call is retried for
# ``retry_timeout`` seconds (``loop_wait + 2 * retry_timeout`` must stay within ``ttl``).
TTL_SECONDS = 10
LOOP_WAIT_SECONDS = 1
RETRY_TIMEOUT_SECONDS = 4
# Starting or stopping a node waits this long at most (initdb, a base backup, a checkpoint).
PATIENCE = 120.0
# The programs run with only these variables: nothing of the test's virtualenv reaches the
# system's Python that runs Patroni.
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}

T = TypeVar("T")


@dataclass
class PatroniNode:
    """One Patroni node: its name, its ports on 127.0.0.1, its directory and its process."""

    name: str
    root: Path
    pg_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "patroni.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.pg_port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def postmaster(self) -> psutil.Process | None:
        """The node's running postmaster (from ``postmaster.pid``), or None."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
            process = psutil.Process(pid)
        except (OSError, ValueError, psutil.Error):
            return None
        return process if process.status() != psutil.STATUS_ZOMBIE else None

    def query(self, statement: str, *arguments: Any, database: str = "postgres") -> list[Any]:
        """The rows ``statement`` returns on this node's PostgreSQL (its own connection)."""
        return fetch(statement, *arguments, host="127.0.0.1", port=self.pg_port, database=database)

    def takes_writes(self) -> bool:
        """Whether this node's PostgreSQL answers and is out of recovery (a primary)."""
        try:
            return not self.query("SELECT pg_is_in_recovery()")[0][0]
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class PatroniCluster:
    """etcd and ``size`` Patroni nodes in a temporary directory (see the module's docstring);
    a context manager that starts them and waits for a leader and a streaming synchronous
    replica, and stops and removes everything when it ends."""

    def __init__(self, size: int = 2) -> None:
        if size < 2:
            raise ValueError("a failover needs at least two nodes")
        self.root = scratch_directory("renum-ha-")
        self.scope = f"renum-drill-{uuid.uuid4().hex[:8]}"
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.etcd: subprocess.Popen[bytes] | None = None
        self.nodes = [PatroniNode(f"node{n}", self.root / f"node{n}") for n in range(size)]

    # -- start-up ------------------------------------------------------------------------------

    def start(self) -> PatroniCluster:
        """Start etcd and the nodes (the first one bootstraps), and wait until there is a leader
        whose synchronous replica streams from it."""
        self._start_etcd()
        for node in self.nodes:
            self._start_node(node)
            if node is self.nodes[0]:
                self._wait(node.takes_writes, f"{node.name} bootstrapped as the leader")
        self.wait_for_sync_replica()
        return self

    def _spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as output:
            return subprocess.Popen(
                command,
                cwd=self.root,
                env={**CLEAN_ENV, "HOME": str(self.root)},
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **run_as_service_user(),
            )

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        self.etcd = self._spawn(
            [
                ETCD,
                "--name", "drill",
                "--data-dir", str(self.root / "etcd"),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"drill={peer}",
                "--initial-cluster-state", "new",
                "--initial-cluster-token", self.scope,
            ],
            self.root / "etcd.log",
        )  # fmt: skip

        def healthy() -> bool:
            try:
                answer = httpx.get(f"{client}/health", timeout=2).json()
            except (httpx.HTTPError, ValueError):
                return False
            return isinstance(answer, dict) and answer.get("health") == "true"

        wait_until(healthy, timeout=PATIENCE, what="etcd healthy", interval=0.1)

    def _config(self, node: PatroniNode) -> dict[str, Any]:
        """The node's Patroni configuration: etcd's v3 API (etcd 3.4 serves no v2 by
        default), the timings above, synchronous mode (not strict: a leader left alone keeps
        taking writes), and trust on loopback for the test's connections and replication."""
        return {
            "scope": self.scope,
            "namespace": "/renum-drill/",
            "name": node.name,
            "restapi": {
                "listen": f"127.0.0.1:{node.api_port}",
                "connect_address": f"127.0.0.1:{node.api_port}",
            },
            "etcd3": {"hosts": [f"127.0.0.1:{self.etcd_port}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL_SECONDS,
                    "loop_wait": LOOP_WAIT_SECONDS,
                    "retry_timeout": RETRY_TIMEOUT_SECONDS,
                    "maximum_lag_on_failover": 1024 * 1024,
                    "synchronous_mode": True,
                    "synchronous_mode_strict": False,
                    "postgresql": {
                        "use_pg_rewind": False,
                        "use_slots": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_keep_size": "64MB",
                            "synchronous_commit": "on",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}],
            },
            "postgresql": {
                "listen": node.address,
                "connect_address": node.address,
                "data_dir": str(node.data),
                "bin_dir": str(BIN),
                "pgpass": str(node.root / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": "drill"},
                    "replication": {"username": "replicator", "password": "drill"},
                },
                "parameters": {
                    "unix_socket_directories": str(node.root),
                    # A SIGKILL spares the operating system's page cache: syncing to disk
                    # would only slow the drill down.
                    "fsync": "off",
                    "max_connections": 100,
                },
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication replicator 127.0.0.1/32 trust",
                ],
            },
        }

    def _start_node(self, node: PatroniNode) -> None:
        node.root.mkdir()
        give_to_service_user(node.root)
        config = node.root / "patroni.yml"
        # JSON is YAML: Patroni reads it as its configuration file.
        config.write_text(json.dumps(self._config(node), indent=2), encoding="utf-8")
        node.process = self._spawn([PATRONI, str(config)], node.log)

    # -- the cluster's state -------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        """The cluster's members as a live node's REST API shows them (empty when none
        answers)."""
        for node in self.nodes:
            if not node.alive:
                continue
            try:
                response = httpx.get(f"http://127.0.0.1:{node.api_port}/cluster", timeout=2)
                members: list[dict[str, Any]] = response.json().get("members", [])
            except (httpx.HTTPError, ValueError):
                continue
            return members
        return []

    def node(self, name: str) -> PatroniNode:
        return next(node for node in self.nodes if node.name == name)

    def leader(self) -> PatroniNode | None:
        """The node etcd names the leader, once its PostgreSQL takes writes."""
        for member in self.members():
            if member.get("role") == "leader":
                node = self.node(str(member["name"]))
                return node if node.alive and node.takes_writes() else None
        return None

    def sync_replicas(self, leader: PatroniNode) -> list[str]:
        """The nodes streaming from ``leader`` as synchronous standbys (PostgreSQL's view)."""
        try:
            rows = leader.query(
                "SELECT application_name FROM pg_stat_replication "
                "WHERE state = 'streaming' AND sync_state = 'sync'"
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return []
        return [str(row[0]) for row in rows]

    def wait_for_sync_replica(self) -> tuple[PatroniNode, PatroniNode]:
        """Wait until a leader has a synchronous replica streaming from it: (leader,
        replica)."""

        def pair() -> tuple[PatroniNode, PatroniNode] | None:
            leader = self.leader()
            if leader is None:
                return None
            names = self.sync_replicas(leader)
            return (leader, self.node(names[0])) if names else None

        found = self._wait(pair, "a leader with a streaming synchronous replica")
        assert found is not None  # _wait returns a truthy value
        return found

    def wait_for_leader(self, other_than: PatroniNode) -> PatroniNode:
        """Wait until a node other than ``other_than`` leads and takes writes."""

        def promoted() -> PatroniNode | None:
            leader = self.leader()
            return leader if leader is not None and leader is not other_than else None

        leader = self._wait(promoted, "a new leader")
        assert leader is not None  # _wait returns a truthy value
        return leader

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` through every node (see the module's
        docstring)."""
        hosts = "&".join(f"host={node.address}" for node in self.nodes)
        return f"postgresql+asyncpg://postgres@/{database}?{hosts}&target_session_attrs=read-write"

    def logs(self) -> str:
        return "\n".join(f"--- {node.name}:\n{node.log_tail()}" for node in self.nodes)

    def _wait(self, predicate: Callable[[], T], what: str) -> T:
        """``wait_until`` bounded by the patience; a timeout's message ends with the nodes'
        logs as they were then."""
        try:
            return wait_until(predicate, timeout=PATIENCE, what=what, interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    # -- faults and teardown -------------------------------------------------------------------

    def kill(self, node: PatroniNode) -> None:
        """SIGKILL the node's Patroni, its postmaster and the postmaster's children at once."""
        victims = [psutil.Process(node.process.pid)] if node.alive and node.process else []
        postmaster = node.postmaster()
        if postmaster is not None:
            victims += [postmaster, *postmaster.children(recursive=True)]
        for victim in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.send_signal(signal.SIGKILL)
        psutil.wait_procs(victims, timeout=10)
        if node.process is not None:
            node.process.wait()

    def close(self) -> None:
        """Stop the nodes (SIGTERM: Patroni stops its PostgreSQL), then etcd; kill whatever
        does not stop within the patience; remove the directory."""
        running = [node for node in self.nodes if node.alive]
        for node in running:
            assert node.process is not None
            node.process.send_signal(signal.SIGTERM)
        for node in running:
            assert node.process is not None
            try:
                node.process.wait(PATIENCE / 4)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        for node in self.nodes:
            postmaster = node.postmaster()
            if postmaster is not None:
                self.kill(node)
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.terminate()
            try:
                self.etcd.wait(PATIENCE / 4)
            except subprocess.TimeoutExpired:
                self.etcd.kill()
                self.etcd.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PatroniCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
