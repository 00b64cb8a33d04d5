"""The local services the harness uses (PostgreSQL, Redis), where to find them, and what to
say when one is missing: the command that starts it, never a silent skip."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

POSTGRES_URL_ENV = "RENUM_QA_POSTGRES_URL"
REDIS_URL_ENV = "RENUM_QA_REDIS_URL"
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class ServiceUnavailable(RuntimeError):
    """A service a test needs is not running; the message says how to start it."""


@dataclass(frozen=True)
class Service:
    name: str
    url: str
    start_command: str

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 0

    def require(self, timeout: float = 2.0) -> None:
        host, port = self.address
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return
        except OSError as exc:
            raise ServiceUnavailable(
                f"{self.name} is not reachable at {host}:{port} ({exc}). "
                f"Start it with: {self.start_command}"
            ) from None


def postgres() -> Service:
    return Service(
        "PostgreSQL",
        os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL),
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    )


def redis() -> Service:
    return Service(
        "Redis",
        os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL),
        'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
        "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
    )


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _execute(url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_postgres_database(name: str) -> str:
    """Create an empty database on the local PostgreSQL and return its SQLAlchemy URL."""
    service = postgres()
    service.require()
    asyncio.run(_execute(service.url, f'CREATE DATABASE "{name}"'))
    base = service.url.rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_postgres_database(name: str) -> None:
    asyncio.run(_execute(postgres().url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def migrated_database(flavour: str, directory: Path, prefix: str) -> Iterator[str]:
    """A new database of ``flavour`` migrated to the head revision, as a SQLAlchemy URL:
    ``sqlite`` a file in ``directory``, ``postgresql`` a database named ``prefix`` plus a random
    suffix on the local server, dropped afterwards."""
    from app.core.config import DatabaseSettings
    from app.db import migrate
    from app.db.database import build_engine

    name = None
    if flavour == "sqlite":
        url = f"sqlite+aiosqlite:///{directory / f'{prefix}.db'}"
    else:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        url = create_postgres_database(name)

    async def upgrade() -> None:
        engine = build_engine(DatabaseSettings(url=url))
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(upgrade())
        yield url
    finally:
        if name is not None:
            drop_postgres_database(name)
