"""The engine's statements compiled once and run as the driver's SQL
(``app.repositories.prepared.Prepared``), on SQLite and PostgreSQL through the database
manager's own transactions: values go through their types' processing as SQLAlchemy's own
execution would, the query hooks still see every statement, and what it cannot run faithfully
(a column default left to Python, a missing value) is refused instead of written wrong."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Integer,
    MetaData,
    Table,
    Uuid,
    bindparam,
    insert,
    select,
    update,
)

from app.core.config import Settings
from app.db.base import UTCDateTime, utcnow
from app.db.database import SQLAlchemyManager
from app.db.queries import QueryHooks, SlowQuery
from app.repositories.prepared import Prepared
from qa import services

pytestmark = pytest.mark.anyio

metadata = MetaData()
things = Table(
    "prepared_things",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("at", UTCDateTime, nullable=False),
    Column("data", JSON, nullable=False),
    Column("n", Integer, nullable=False),
    Column("touched", UTCDateTime, onupdate=utcnow),
)

add = Prepared(
    insert(things).values(
        {name: bindparam(name, type_=things.c[name].type) for name in ("id", "at", "data", "n")}
    )
)
bump = Prepared(
    update(things)
    .where(things.c.id == bindparam("id_", type_=things.c.id.type))
    .values(n=things.c.n + 1, touched=bindparam("now", type_=UTCDateTime()))
    .returning(things.c.n)
)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SQLAlchemyManager]:
    name = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'prepared.db'}"
    else:
        name = f"renum_prepared_{uuid.uuid4().hex[:10]}"
        url = await asyncio.to_thread(services.create_postgres_database, name)
    manager = SQLAlchemyManager(Settings(environment="test", database={"url": url}).database)
    try:
        await manager.run_transaction(metadata.create_all)
        yield manager
    finally:
        await manager.dispose()
        if name is not None:
            await asyncio.to_thread(services.drop_postgres_database, name)


def _rows(n: int) -> list[dict[str, Any]]:
    at = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    return [
        {"id": uuid.uuid4(), "at": at + timedelta(seconds=i), "data": {"i": i, "x": [1]}, "n": i}
        for i in range(n)
    ]


async def test_values_are_stored_as_sqlalchemy_stores_them(database: SQLAlchemyManager) -> None:
    rows = _rows(3)

    def work(conn: Connection) -> list[Any]:
        add.run_many(conn, rows[:2])  # the driver's executemany
        add.run(conn, rows[2])
        bumped = bump.run(conn, {"id_": rows[1]["id"], "now": utcnow()}).scalar_one()
        assert bumped == 2
        return list(conn.execute(select(things).order_by(things.c.at)).mappings())

    stored = await database.run_transaction(work)
    rows[1]["n"] = 2
    assert [{k: r[k] for k in ("id", "at", "data", "n")} for r in stored] == rows
    assert all(r["at"].tzinfo is not None for r in stored)
    assert [r["touched"] is not None for r in stored] == [False, True, False]


async def test_the_query_hooks_see_its_statements(database: SQLAlchemyManager) -> None:
    seen: list[SlowQuery] = []
    database.attach_query_hooks(QueryHooks(slow_query_ms=lambda: 0.0, on_slow_query=seen.append))

    def work(conn: Connection) -> None:
        add.run_many(conn, _rows(2))

    await database.run_transaction(work)
    assert any(q.statement.startswith("INSERT INTO prepared_things") for q in seen)


async def test_what_it_cannot_run_faithfully_is_refused(database: SQLAlchemyManager) -> None:
    # The onupdate of ``touched`` would be computed in Python, which driver SQL skips.
    implicit = Prepared(update(things).values(n=bindparam("n_", type_=Integer())))

    def left_to_python(conn: Connection) -> None:
        implicit.run(conn, {"n_": 1})

    with pytest.raises(ValueError, match="touched"):
        await database.run_transaction(left_to_python)

    def missing(conn: Connection) -> None:
        bump.run(conn, {"id_": uuid.uuid4()})  # no "now"

    with pytest.raises(KeyError, match="now"):
        await database.run_transaction(missing)
