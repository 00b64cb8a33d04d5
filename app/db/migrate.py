"""Alembic migrations driven from Renum's settings: upgrade, downgrade, current, head."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


class MigrationBrokeForeignKeys(RuntimeError):
    """A migration left rows pointing at rows that do not exist; it was rolled back."""


async def _run(engine: AsyncEngine, step: Callable[[Config], None]) -> None:
    """Run one Alembic command in one transaction. On SQLite, foreign keys are not enforced
    while it runs and are checked before the commit: Alembic's batch mode alters a table by
    copying it and dropping the original, and with foreign keys on SQLite would delete every
    row referring to it (ON DELETE CASCADE). The pragma only takes effect outside a
    transaction, so it is set on the connection before the transaction begins."""
    async with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        # The driver's own connection: SQLAlchemy's would begin a transaction first.
        driver = (await conn.get_raw_connection()).driver_connection if sqlite else None
        if driver is not None:
            await driver.execute("PRAGMA foreign_keys=OFF")
        try:
            async with conn.begin():
                await conn.run_sync(lambda c: step(alembic_config(c)))
                if driver is not None:
                    broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).fetchall()
                    if broken:
                        table, row = tuple(broken[0])[:2]
                        raise MigrationBrokeForeignKeys(
                            f"the migration left {len(broken)} rows referring to missing rows "
                            f"(first: table {table}, row {row})"
                        )
        finally:
            if driver is not None:
                await driver.execute("PRAGMA foreign_keys=ON")


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    await _run(engine, lambda config: command.upgrade(config, revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    await _run(engine, lambda config: command.downgrade(config, revision))


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await revision_on(conn)


async def revision_on(conn: AsyncConnection) -> str | None:
    """The revision the database on ``conn`` is at (None before the first migration)."""
    return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
