"""Private PostgreSQL clusters for drills: PostgreSQL 15's own programs start a server with
its own data directory on a free loopback port, so a test may archive, kill, corrupt or
restore it without touching the shared server. Run as root, the cluster belongs to the
``postgres`` user (PostgreSQL refuses to run as root); its directory is created under the
system's temporary directory so that user can reach it."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg

from qa.launcher import free_port
from qa.polling import wait_until

BIN = Path("/usr/lib/postgresql/15/bin")
SERVICE_USER = "postgres"


def run_as_service_user() -> dict[str, Any]:
    """``subprocess`` arguments running a child as the ``postgres`` user when this is root."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam(SERVICE_USER)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def fetch(statement: str, *arguments: Any, **connect: Any) -> list[Any]:
    """The rows ``statement`` returns with its ``$n`` ``arguments``, on a connection of its own
    as ``postgres`` to the server ``connect`` names (host, port, database)."""

    async def run() -> list[Any]:
        connection = await asyncpg.connect(user="postgres", timeout=5, **connect)
        try:
            return list(await connection.fetch(statement, *arguments))
        finally:
            await connection.close()

    return asyncio.run(run())


def scratch_directory(prefix: str) -> Path:
    """A new directory the cluster's user may use (given to it when this is root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    give_to_service_user(path)
    return path


def give_to_service_user(path: Path) -> None:
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVICE_USER)
        os.chown(path, user.pw_uid, user.pw_gid)


class PrivateCluster:
    """A PostgreSQL cluster in ``root/data`` listening on 127.0.0.1:``port`` and in ``root``
    (its socket), with ``settings`` added to its configuration."""

    def __init__(self, root: Path, settings: dict[str, str] | None = None) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.settings = settings or {}
        self.log = root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def query(self, statement: str, *arguments: Any, database: str = "postgres") -> list[Any]:
        """The rows ``statement`` returns (one statement with its ``$n`` ``arguments``, in its
        own transaction)."""
        return fetch(statement, *arguments, host="127.0.0.1", port=self.port, database=database)

    def _run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, check=True, capture_output=True, text=True, cwd="/", **run_as_service_user()
        )

    def init(self) -> PrivateCluster:
        self._run(str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.configure()
        return self

    def configure(self) -> None:
        """Append this cluster's port, socket and settings to its configuration (the last
        value of a setting wins: a data directory restored from another cluster takes this
        one's place with it)."""
        lines = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            **self.settings,
        }
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as config:
            config.writelines(f"{name} = {value}\n" for name, value in lines.items())

    def start(self, *, writable: bool = True) -> None:
        """Start the server; with ``writable``, return once it takes writes (a recovering
        server accepts reads before it is promoted)."""
        self._run(
            str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "120",
            "start",
        )  # fmt: skip
        if writable:
            wait_until(
                lambda: not self.query("SELECT pg_is_in_recovery()")[0][0],
                timeout=120,
                what="the server to finish recovering and take writes",
                interval=0.1,
            )

    def stop(self, mode: str = "fast") -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    @property
    def running(self) -> bool:
        done = subprocess.run(
            [str(BIN / "pg_ctl"), "-D", str(self.data), "status"],
            capture_output=True, cwd="/", check=False, **run_as_service_user(),
        )  # fmt: skip
        return done.returncode == 0

    def __enter__(self) -> PrivateCluster:
        try:
            self.init()
            self.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.data.exists() and self.running:
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
