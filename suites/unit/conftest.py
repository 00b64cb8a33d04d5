"""Shared fixtures of the unit suite: a clean environment, in-process apps, tmp databases.

Every unit test runs with no ``RENUM_*`` variable set and in an empty working directory, so a
developer's environment or ``.env`` file cannot change what the settings model sees. Global
logging state (structlog's configuration and the root logger's handlers) is restored after
each test, because ``configure_logging`` rewires both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpcore  # noqa: F401  (see below)
import pytest
import structlog

from app.core.config import DatabaseSettings, Settings
from app.db import migrate
from app.db.database import SQLAlchemyManager
from qa import services

# Inner pytest sessions (pytester) run in this process and drop every module they import
# when they end. httpx imports httpcore lazily and caches its exception classes on first use;
# importing httpcore here keeps one copy of those classes for the whole run.
pytest_plugins = ["pytester"]

TEST_SECRET = "unit-test-secret-key-0123456789abcdefghijklmnop"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("RENUM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    access = logging.getLogger("uvicorn.access")
    access_disabled = access.disabled
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    access.disabled = access_disabled
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture(autouse=True)
def example_passwords_accepted() -> Iterator[None]:
    """A test that starts an app or the CLI in staging or production turns on the refusal of
    the examples' passwords for the whole process; the next test starts without it, as the
    test profile does."""
    from app.core.example_passwords import refuse_example_passwords

    yield
    refuse_example_passwords(False)


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 at its production cost takes a good part of a second a hash, and many unit tests
    make one (a bootstrap admin, a user, a login). Only the cost parameters change: hashes are
    still argon2id, verified the same way. ``test_security.py`` overrides this fixture and
    checks the real hasher and its configuration."""
    from argon2 import PasswordHasher

    import app.main
    from app.core import security

    monkeypatch.setattr(
        security, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    # The apps and commands the tests make leave it so (their settings' cost is the default).
    for module in (security, app.main):
        monkeypatch.setattr(module, "configure_password_hashing", lambda cost: None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'unit.db'}"


@contextlib.asynccontextmanager
async def migrated(kind: str, directory: Path) -> AsyncIterator[SQLAlchemyManager]:
    """A migrated database of ``kind`` (``sqlite``: a file in ``directory``; ``postgresql``:
    a new database on the shared server, dropped afterwards)."""
    name = None
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{directory / 'migrated.db'}"
    else:
        name = f"renum_unit_{uuid.uuid4().hex[:10]}"
        url = await asyncio.to_thread(services.create_postgres_database, name)
    db = SQLAlchemyManager(DatabaseSettings(url=url))
    await migrate.upgrade(db.engine)
    try:
        yield db
    finally:
        await db.dispose()
        if name is not None:
            await asyncio.to_thread(services.drop_postgres_database, name)


@pytest.fixture(params=["sqlite", "postgresql"])
async def migrated_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SQLAlchemyManager]:
    """A migrated database of each kind; its URL is ``migrated_database.settings.url``."""
    async with migrated(request.param, tmp_path) as db:
        yield db


MakeSettings = Callable[..., Settings]


@pytest.fixture
def make_settings(sqlite_url: str) -> MakeSettings:
    """``make_settings(**overrides)``: test settings on this test's SQLite file, JSON logs."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "environment": "test",
            "secret_key": TEST_SECRET,
            "log_format": "json",
            "database": {"url": sqlite_url},
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    """Test settings with a configured bootstrap admin (root@example.com)."""
    return make_settings(
        bootstrap_admin_email="root@example.com", bootstrap_admin_password="root-password-1"
    )
