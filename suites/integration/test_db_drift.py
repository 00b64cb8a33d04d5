"""``renum db check`` and the migrations' downgrades, as an operator runs them: the installed
console script against a fresh database of each flavour given with ``--db`` (the nox session
gives ``sqlite,postgresql``; a PostgreSQL database is created for each test and dropped after).

A freshly migrated database shows no drift, nor one migrated to head, down to base and up again;
schema changes made outside the migrations are named one per line with exit code 1; a database
that cannot be compared (unreachable, empty) gives exit code 2 and one readable line.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from integration_support import Cli, cli_env
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.core.config import DatabaseSettings
from app.db import migrate
from app.db.base import Base
from app.db.database import build_engine
from qa import services

pytestmark = pytest.mark.both_databases

HEAD = migrate.head_revision()
# A loopback port nothing listens on (the discard service): the connection is refused at once.
CLOSED_PORT_URL = "postgresql+asyncpg://postgres@127.0.0.1:9/test"


def fresh_postgres_database() -> tuple[str, str]:
    """A new, empty database on the local PostgreSQL: (its name, its URL)."""
    name = f"renum_drift_{uuid.uuid4().hex[:12]}"
    return name, services.create_postgres_database(name)


@pytest.fixture
def database_url(db_flavour: str, tmp_path: Path) -> Iterator[str]:
    if db_flavour == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'drift.db'}"
        return
    name, url = fresh_postgres_database()
    try:
        yield url
    finally:
        services.drop_postgres_database(name)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database whatever ``--db`` says, for what only PostgreSQL can do."""
    name, url = fresh_postgres_database()
    try:
        yield url
    finally:
        services.drop_postgres_database(name)


def make_cli(tmp_path: Path, url: str) -> Cli:
    env = cli_env(
        RENUM_ENVIRONMENT="test",
        RENUM_SECRET_KEY="drift-test-secret-key-0123456789abcdefghijklm",
        RENUM_DATABASE__URL=url,
    )
    return Cli(env=env, cwd=tmp_path)


@pytest.fixture
def cli(tmp_path: Path, database_url: str) -> Cli:
    return make_cli(tmp_path, database_url)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def exits(result: subprocess.CompletedProcess[str], code: int) -> str:
    text_ = output(result)
    assert "Traceback" not in text_, f"a traceback instead of a message:\n{text_}"
    assert result.returncode == code, f"expected exit {code}, got {result.returncode}:\n{text_}"
    return text_


def check_json(cli: Cli, code: int) -> dict[str, Any]:
    result = cli("db", "check", "--json")
    exits(result, code)
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def run_sql(url: str, *statements: str) -> None:
    """Change the schema behind the migrations' back, as someone with a SQL console would."""

    async def run() -> None:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                for statement in statements:
                    await conn.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(run())


def migrate_to(url: str, revision: str = "head") -> None:
    """Migrate in this process (quicker than the console script, which the round-trip tests
    run): up to ``revision``, or down to it when it is ``base`` or a relative ``-N``."""

    async def run() -> None:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            if revision == "base" or revision.startswith("-"):
                await migrate.downgrade(engine, revision)
            else:
                await migrate.upgrade(engine, revision)
        finally:
            await engine.dispose()

    asyncio.run(run())


def upgrade(cli: Cli, revision: str = "head") -> None:
    exits(cli("db", "upgrade", revision), 0)


def test_a_fresh_database_has_no_drift(cli: Cli, db_flavour: str) -> None:
    upgrade(cli)
    text_ = exits(cli("db", "check"), 0)
    assert text_.strip().splitlines() == [
        f"no drift: the {db_flavour} database (revision {HEAD}) matches the models"
    ]
    report = check_json(cli, 0)
    assert report["status"] == "ok"
    assert report["revision"] == report["head"] == HEAD
    assert report["differences"] == []


@pytest.mark.drill  # a long scenario: run by `nox -s drills`
def test_upgrade_downgrade_to_base_and_upgrade_again_leaves_no_drift(
    cli: Cli, database_url: str
) -> None:
    migrate_to(database_url)
    exits(cli("db", "downgrade", "base"), 0)
    # Every table is gone with the last downgrade: nothing left to compare.
    assert "the database is empty" in exits(cli("db", "check"), 2)
    upgrade(cli)
    exits(cli("db", "check"), 0)


@pytest.mark.drill  # a long scenario: run by `nox -s drills`
def test_every_migration_downgrades_one_step_at_a_time(cli: Cli, database_url: str) -> None:
    migrate_to(database_url)
    for _ in range(len(revisions())):
        migrate_to(database_url, "-1")
    assert current_revision(database_url) is None
    migrate_to(database_url)
    exits(cli("db", "check"), 0)


def current_revision(url: str) -> str | None:
    async def read() -> str | None:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config())
    return [revision.revision for revision in script.walk_revisions()]


@pytest.mark.drill  # a long scenario: run by `nox -s drills`
def test_migrations_down_and_up_keep_the_rows_of_the_tables_they_alter(database_url: str) -> None:
    """0002 and 0004 alter accounts and users, both ways: none of it may take the rows referring
    to a user or an account with it (on SQLite, a table altered by copying it would delete them
    through ON DELETE CASCADE, unless foreign keys are off while migrating). The migrations run
    on the engine ``renum db upgrade`` and ``downgrade`` use, which enforces SQLite's foreign
    keys."""
    migrate_to(database_url)
    account, user, key = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)

    async def insert() -> None:
        import app.models  # noqa: F401  (registers every table on Base.metadata)

        tables = Base.metadata.tables
        engine = create_async_engine(database_url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    tables["accounts"].insert(),
                    {
                        "id": account,
                        "name": "Acme",
                        "name_key": "acme",
                        "is_platform": False,
                        "active_executions": 0,
                        "created_at": now,
                        "updated_at": now,
                    },
                )
                await conn.execute(
                    tables["users"].insert(),
                    {
                        "id": user,
                        "account_id": account,
                        "email": "ops@example.com",
                        "password_hash": "x",
                        "role": "owner",
                        "is_active": True,
                        "token_generation": 3,
                        "created_at": now,
                        "updated_at": now,
                    },
                )
                await conn.execute(
                    tables["api_keys"].insert(),
                    {
                        "id": key,
                        "account_id": account,
                        "user_id": user,
                        "name": "ci",
                        "prefix": "rk_ci",
                        "key_hash": "0" * 64,
                        "role": "owner",
                        "created_at": now,
                    },
                )
        finally:
            await engine.dispose()

    async def count(table: str) -> int:
        engine = create_async_engine(database_url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(text(f"select count(*) from {table}"))).scalar_one())  # noqa: S608 - fixed table names
        finally:
            await engine.dispose()

    async def downgrade(revision: str) -> None:
        engine = build_engine(DatabaseSettings(url=database_url))
        try:
            await migrate.downgrade(engine, revision)
        finally:
            await engine.dispose()

    async def upgrade() -> None:
        engine = build_engine(DatabaseSettings(url=database_url))
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(insert())
    asyncio.run(downgrade("0003"))
    assert [asyncio.run(count(t)) for t in ("accounts", "users", "api_keys")] == [1, 1, 1]
    asyncio.run(downgrade("0001"))
    assert [asyncio.run(count(t)) for t in ("accounts", "users", "api_keys")] == [1, 1, 1]
    asyncio.run(upgrade())  # 0001 -> 0002 rebuilds accounts, 0003 -> 0004 users
    assert [asyncio.run(count(t)) for t in ("accounts", "users", "api_keys")] == [1, 1, 1]


def test_changes_made_outside_the_migrations_are_named(cli: Cli, database_url: str) -> None:
    migrate_to(database_url)
    run_sql(
        database_url,
        "alter table executions add column foo text",
        "drop index ix_executions_status",
    )
    text_ = exits(cli("db", "check"), 1)
    lines = text_.strip().splitlines()
    assert lines[:2] == [
        "extra column executions.foo TEXT (in the database, not in the models)",
        "missing index ix_executions_status on executions (status) "
        "(in the models, not in the database)",
    ]
    assert lines[2].startswith("drift: 2 differences between the models and the ")
    report = check_json(cli, 1)
    assert report["status"] == "drift"
    assert [(d["kind"], d["table"], d["name"]) for d in report["differences"]] == [
        ("extra_column", "executions", "foo"),
        ("missing_index", "executions", "ix_executions_status"),
    ]


def test_other_components_tables_are_left_out(cli: Cli, database_url: str) -> None:
    migrate_to(database_url)
    run_sql(
        database_url,
        "create table procrastinate_jobs (id integer primary key, queue_name text not null)",
        "create index procrastinate_jobs_queue_name on procrastinate_jobs (queue_name)",
        "create table stray (id integer primary key)",
    )
    lines = exits(cli("db", "check"), 1).strip().splitlines()
    assert lines[0] == "extra table stray (in the database, not in the models)"
    assert lines[1].startswith("drift: 1 difference between the models and the ")
    assert len(lines) == 2


def test_pending_migrations_are_drift(cli: Cli, database_url: str) -> None:
    migrate_to(database_url, "0005")
    report = check_json(cli, 1)
    revision = report["differences"][0]
    assert (revision["kind"], revision["name"], revision["database"], revision["models"]) == (
        "revision",
        "pending",
        "0005",
        HEAD,
    )
    assert "migrations pending: run `renum db upgrade`" in revision["message"]


def test_an_empty_database_cannot_be_checked(cli: Cli, database_url: str) -> None:
    if database_url.startswith("sqlite"):
        # No file yet: the check says so and creates none.
        assert "no SQLite database at" in exits(cli("db", "check"), 2)
        assert not Path(database_url.split("///", 1)[1]).exists()
        run_sql(database_url, "select 1")  # an empty SQLite file
    text_ = exits(cli("db", "check"), 2)
    assert text_.strip().splitlines() == [
        "Cannot check the schema: the database is empty (no tables, no migration revision): "
        "run `renum db upgrade` to create the schema"
    ]
    report = check_json(cli, 2)
    assert report["status"] == "error"
    assert report["error"].startswith("the database is empty")


@pytest.mark.parametrize("flag", [[], ["--json"]])
def test_an_unreachable_database_cannot_be_checked(tmp_path: Path, flag: list[str]) -> None:
    cli = make_cli(tmp_path, CLOSED_PORT_URL)
    result = cli("db", "check", *flag)
    text_ = exits(result, 2)
    message = "cannot reach the database at postgresql+asyncpg://postgres@127.0.0.1:9/test"
    assert message in text_
    assert len(result.stderr.strip().splitlines()) == 1
    if flag:
        assert json.loads(result.stdout)["status"] == "error"


def test_nullability_changed_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    cli = make_cli(tmp_path, postgres_url)
    migrate_to(postgres_url)
    run_sql(
        postgres_url,
        "alter table users alter column full_name set not null",
        "alter table executions alter column error set not null",
        "alter table agents alter column name type text",
    )
    lines = exits(cli("db", "check"), 1).strip().splitlines()
    assert lines[:3] == [
        "type of agents.name: VARCHAR(120) in the models, TEXT in the database",
        "nullability of executions.error: NULL allowed in the models, NOT NULL in the database",
        "nullability of users.full_name: NULL allowed in the models, NOT NULL in the database",
    ]
    assert lines[3].startswith("drift: 3 differences")
