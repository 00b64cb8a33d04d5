"""Schema drift (``app.db.drift``, ``renum db check``): which tables are left out, which type and
default differences count, how each difference reads, and the command on a temporary SQLite.
The same checks on PostgreSQL, and the migrations' round trip, are in the integration suite."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import DefaultClause
from sqlalchemy.types import NullType, TypeEngine
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import DatabaseSettings
from app.db import migrate
from app.db.base import Base, UTCDateTime
from app.db.drift import (
    FOREIGN_TABLE_PREFIXES,
    VERSION_TABLE,
    CannotCheck,
    Difference,
    DriftReport,
    check_database,
    compare_server_default,
    compare_type,
    default_literal,
    describe,
    differences,
    include_name,
    include_object,
    is_foreign_table,
    matches_python_default,
    type_ddl,
)

PG = postgresql.dialect()
LITE = sqlite.dialect()
runner = CliRunner()


def context(dialect: Dialect) -> MigrationContext:
    return MigrationContext.configure(dialect_name=dialect.name)


def same_type(dialect: Dialect, in_database: TypeEngine[Any], in_models: TypeEngine[Any]) -> Any:
    return compare_type(
        context(dialect), Column("c", in_database), Column("c", in_models), in_database, in_models
    )


# Which tables are left out.


def test_alembic_version_and_the_job_queue_tables_are_foreign() -> None:
    assert VERSION_TABLE == "alembic_version"
    assert "procrastinate_" in FOREIGN_TABLE_PREFIXES
    assert is_foreign_table("alembic_version")
    assert is_foreign_table("procrastinate_jobs")
    assert is_foreign_table("procrastinate_periodic_defers")
    assert not is_foreign_table("executions")
    assert not is_foreign_table("my_procrastinate_jobs")  # a prefix, not a substring
    assert not is_foreign_table(None)


def test_include_name_skips_reflecting_foreign_tables_only() -> None:
    assert not include_name("procrastinate_jobs", "table", {})
    assert not include_name("alembic_version", "table", {})
    assert include_name("users", "table", {})
    assert include_name(None, "schema", {})
    assert include_name("procrastinate_jobs_pkey", "index", {"table_name": "users"})


def test_include_object_leaves_out_a_foreign_table_and_everything_on_it() -> None:
    metadata = MetaData()
    jobs = Table("procrastinate_jobs", metadata, Column("id", Integer), Column("queue", Text))
    users = Table("users", metadata, Column("id", Integer), Column("email", Text))
    jobs_index = Index("procrastinate_jobs_queue", jobs.c.queue)
    users_index = Index("ix_users_email", users.c.email)
    unique = UniqueConstraint(jobs.c.id)
    jobs.append_constraint(unique)

    assert not include_object(jobs, jobs.name, "table", True, None)
    assert not include_object(jobs.c.queue, "queue", "column", True, None)
    assert not include_object(jobs_index, jobs_index.name, "index", False, None)
    assert not include_object(unique, None, "unique_constraint", True, None)
    assert include_object(users, users.name, "table", True, None)
    assert include_object(users.c.email, "email", "column", False, None)
    assert include_object(users_index, users_index.name, "index", True, None)


# Which type differences count.


def test_a_variant_is_compared_as_the_type_the_dialect_creates() -> None:
    json_or_jsonb = JSON().with_variant(postgresql.JSONB(), "postgresql")
    assert same_type(PG, postgresql.JSONB(), json_or_jsonb) is False
    assert same_type(LITE, JSON(), json_or_jsonb) is False


def test_json_and_jsonb_stay_different_types() -> None:
    # Not equal by DDL: Alembic's own comparison decides (and finds them different).
    assert same_type(PG, postgresql.JSONB(), JSON()) is None
    assert type_ddl(JSON(), PG) != type_ddl(postgresql.JSONB(), PG)


def test_a_type_decorator_is_compared_as_its_implementation() -> None:
    assert same_type(PG, postgresql.TIMESTAMP(timezone=True), UTCDateTime()) is False
    assert same_type(LITE, sqlite.DATETIME(), UTCDateTime()) is False
    assert same_type(LITE, sqlite.CHAR(32), Uuid()) is False  # SQLite stores UUIDs as CHAR(32)


def test_a_real_type_change_is_left_to_alembic() -> None:
    assert same_type(PG, Text(), String(200)) is None
    assert same_type(LITE, Text(), String(200)) is None  # no folding into SQLite's affinities
    assert same_type(PG, String(120), String(360)) is None


def test_type_ddl_normalises_spacing_and_case() -> None:
    assert type_ddl(String(200), PG) == "VARCHAR(200)"
    assert type_ddl(postgresql.NUMERIC(18, 8), PG) == "NUMERIC(18, 8)"
    assert type_ddl(UTCDateTime(), PG) == "TIMESTAMP WITH TIME ZONE"
    assert type_ddl(NullType(), PG) is None


# Which server default differences count.


@pytest.mark.parametrize(
    ("sql", "literal"),
    [
        ("'0'", "0"),
        ("0", "0"),
        ("(0)", "0"),
        ("'0'::integer", "0"),
        ("'queued'::character varying", "queued"),
        ("('it''s')", "it's"),
        ("'1.5'::numeric(10, 2)", "1.5"),
        ("(1) + (2)", "(1) + (2)"),
        ("now()", "now()"),
    ],
)
def test_default_literal(sql: str, literal: str) -> None:
    assert default_literal(sql) == literal


def test_a_server_default_equal_to_the_model_default_matches() -> None:
    assert matches_python_default(Column("n", Integer, default=0), "'0'")
    assert matches_python_default(Column("n", Integer, default=0), "0")
    assert not matches_python_default(Column("n", Integer, default=0), "1")
    assert matches_python_default(Column("s", String(8), default="queued"), "'queued'::text")
    assert matches_python_default(Column("b", Boolean, default=True), "true")
    assert matches_python_default(Column("b", Boolean, default=True), "1")
    assert not matches_python_default(Column("b", Boolean, default=True), "false")
    assert matches_python_default(Column("b", Boolean, default=False), "0")


def test_a_model_without_a_constant_default_matches_no_server_default() -> None:
    assert not matches_python_default(Column("n", Integer), "0")
    assert not matches_python_default(Column("n", Integer, default=lambda: 0), "0")
    assert not matches_python_default(Column("j", JSON, default=dict), "'{}'")


def server_default_differs(
    metadata_column: Column[Any], inspected_default: str | None, dialect: Dialect = LITE
) -> Any:
    inspected = Column(metadata_column.name, metadata_column.type)
    return compare_server_default(
        context(dialect),
        inspected,
        metadata_column,
        inspected_default,
        metadata_column.server_default,
        None,
    )


def test_a_migration_backfill_default_is_no_drift() -> None:
    # accounts.active_executions: server_default "0" in migration 0002, default=0 in the model.
    assert server_default_differs(Column("n", Integer, default=0), "'0'") is False
    assert server_default_differs(Column("n", Integer, default=0), "0", PG) is False


def test_other_server_defaults_are_left_to_the_dialect() -> None:
    assert server_default_differs(Column("n", Integer, default=0), "5") is None
    assert server_default_differs(Column("n", Integer), "0") is None
    declared = Column("n", Integer, default=0, server_default=text("0"))
    assert server_default_differs(declared, "0") is None
    assert server_default_differs(Column("n", Integer, server_default=text("0")), None) is None


# How each difference reads.


def table(name: str = "executions") -> Table:
    metadata = MetaData()
    return Table(
        name,
        metadata,
        Column("id", Uuid, primary_key=True),
        Column("account_id", Uuid),
        Column("status", String(16)),
        Column("foo", Text),
    )


def line(diff: tuple[Any, ...], dialect: Dialect = PG) -> str:
    return describe(diff, dialect).line()


def test_tables_and_columns() -> None:
    executions = table()
    assert line(("add_table", executions)) == (
        "missing table executions (in the models, not in the database)"
    )
    assert line(("remove_table", table("stray"))) == (
        "extra table stray (in the database, not in the models)"
    )
    assert line(("remove_column", None, "executions", executions.c.foo)) == (
        "extra column executions.foo TEXT (in the database, not in the models)"
    )
    assert line(("add_column", None, "executions", executions.c.status)) == (
        "missing column executions.status VARCHAR(16) (in the models, not in the database)"
    )
    assert describe(("add_column", None, "executions", executions.c.status), PG) == Difference(
        "missing_column", "executions", "status", models="VARCHAR(16)"
    )


def test_indexes_and_constraints() -> None:
    executions = table()
    index = Index("ix_executions_status", executions.c.status)
    assert line(("add_index", index)) == (
        "missing index ix_executions_status on executions (status) "
        "(in the models, not in the database)"
    )
    pair = Index(
        "ix_executions_account_id_status",
        executions.c.account_id,
        executions.c.status,
        unique=True,
    )
    assert line(("remove_index", pair)) == (
        "extra index ix_executions_account_id_status on executions unique (account_id, status) "
        "(in the database, not in the models)"
    )
    unique = UniqueConstraint(executions.c.status, name="uq_executions_status")
    executions.append_constraint(unique)
    assert line(("add_constraint", unique)) == (
        "missing unique constraint uq_executions_status on executions (status) "
        "(in the models, not in the database)"
    )
    assert describe(("remove_constraint", unique), PG).kind == "extra_unique"
    Table("accounts", executions.metadata, Column("id", Uuid, primary_key=True))
    key = ForeignKeyConstraint(
        ["account_id"], ["accounts.id"], name="fk_executions_account_id_accounts"
    )
    executions.append_constraint(key)
    assert line(("remove_fk", key)) == (
        "extra foreign key fk_executions_account_id_accounts on executions (account_id) "
        "-> accounts(id) (in the database, not in the models)"
    )
    assert describe(("add_fk", key), PG).kind == "missing_foreign_key"


def test_column_changes() -> None:
    assert line(("modify_type", None, "agents", "name", {}, Text(), String(200))) == (
        "type of agents.name: VARCHAR(200) in the models, TEXT in the database"
    )
    assert line(("modify_nullable", None, "users", "full_name", {}, False, True)) == (
        "nullability of users.full_name: NULL allowed in the models, NOT NULL in the database"
    )
    reflected = DefaultClause(text("true"))
    assert line(("modify_default", None, "webhooks", "enabled", {}, reflected, None)) == (
        "server default of webhooks.enabled: none in the models, true in the database"
    )
    assert line(("modify_default", None, "users", "n", {}, None, DefaultClause("0"))) == (
        "server default of users.n: 0 in the models, none in the database"
    )
    assert line(("modify_comment", None, "agents", "model", {}, "hi", None)) == (
        "comment of agents.model: none in the models, 'hi' in the database"
    )


def test_what_has_no_plain_form_still_reads() -> None:
    checked = table()
    check = CheckConstraint("status <> ''", name="ck_executions_status")
    checked.append_constraint(check)
    assert line(("add_constraint", check)) == (
        "other difference on ck_executions_status: add_constraint"
    )
    assert line(("modify_type", None, "agents", "name", {}, None, Text())) == (
        "type of agents.name: TEXT in the models, unknown in the database"
    )
    assert not matches_python_default(Column("d", Numeric, default=Decimal("0")), "0")


def test_table_comments_and_unknown_operations() -> None:
    commented = table()
    commented.comment = "runs"
    assert line(("add_table_comment", commented, None)) == (
        "comment of executions: 'runs' in the models, none in the database"
    )
    assert line(("remove_table_comment", commented)) == (
        "comment of executions: none in the models, 'runs' in the database"
    )
    assert line(("execute", "select 1")) == "other difference on ?: execute"


def test_revision_differences() -> None:
    pending = Difference("revision", None, "pending", models="0006", database="0005")
    assert pending.line() == (
        "revision: 0005 in the database, 0006 in the code "
        "(migrations pending: run `renum db upgrade`)"
    )
    unknown = Difference("revision", None, "unknown", models="0006", database="0099")
    assert "0099 in the database is not one of this code's migrations" in unknown.line()
    assert "`renum db downgrade 0006`" in unknown.line()


def test_differences_flatten_sort_and_leave_out_foreign_tables() -> None:
    executions = table()
    found = differences(
        [
            ("remove_table", table("procrastinate_jobs")),
            [
                ("modify_nullable", None, "users", "email", {}, True, False),
                ("modify_type", None, "users", "email", {}, Text(), String(320)),
            ],
            ("remove_column", None, "executions", executions.c.foo),
            ("remove_table", table("stray")),
        ],
        PG,
    )
    assert [(d.table, d.kind) for d in found] == [
        ("executions", "extra_column"),
        ("stray", "extra_table"),
        ("users", "nullable"),
        ("users", "type"),
    ]


def test_report_summary_and_json() -> None:
    clean = DriftReport("sqlite", "0006", "0006")
    assert not clean.drift
    assert clean.summary() == "no drift: the sqlite database (revision 0006) matches the models"
    assert clean.as_dict() == {
        "status": "ok",
        "dialect": "sqlite",
        "revision": "0006",
        "head": "0006",
        "differences": [],
    }
    one = Difference("extra_table", "stray", database=None)
    drifted = DriftReport("postgresql", "0006", "0006", [one, one])
    assert drifted.drift
    assert drifted.summary().startswith("drift: 2 differences between the models and the ")
    entry = drifted.as_dict()["differences"][0]
    assert entry["kind"] == "extra_table"
    assert entry["message"] == "extra table stray (in the database, not in the models)"


# The check on a temporary SQLite database, in-process.


def sqlite_settings(path: Path) -> DatabaseSettings:
    return DatabaseSettings(url=f"sqlite+aiosqlite:///{path}")


@pytest.mark.anyio
async def test_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(CannotCheck, match=r"no SQLite database at .*absent\.db"):
        await check_database(sqlite_settings(path), Base.metadata)
    assert not path.exists()


@pytest.mark.anyio
async def test_an_empty_or_unmigrated_database_cannot_be_checked(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    with pytest.raises(CannotCheck, match="the database is empty"):
        await check_database(sqlite_settings(path), Base.metadata)
    with sqlite3.connect(path) as conn:
        conn.execute("create table things (id integer primary key)")
    with pytest.raises(CannotCheck, match=r"has tables \(things, ...\) but no migration revision"):
        await check_database(sqlite_settings(path), Base.metadata)


@pytest.mark.anyio
async def test_a_database_error_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder.db"
    folder.mkdir()
    with pytest.raises(CannotCheck) as caught:
        await check_database(sqlite_settings(folder), Base.metadata)
    assert "no SQLite database" in str(caught.value)
    not_sqlite = tmp_path / "text.db"
    not_sqlite.write_text("not a database, " * 100)
    with pytest.raises(CannotCheck, match="database error at sqlite") as caught:
        await check_database(sqlite_settings(not_sqlite), Base.metadata)
    assert "\n" not in str(caught.value)


@pytest.mark.anyio
async def test_a_bad_url_or_a_closed_port_is_one_line() -> None:
    bad_port = DatabaseSettings(url="postgresql+asyncpg://renum@127.0.0.1:port/renum")
    with pytest.raises(CannotCheck, match="RENUM_DATABASE__URL is not a valid database URL"):
        await check_database(bad_port, Base.metadata)
    # A loopback port nothing listens on: refused at once. The password is never shown.
    closed = DatabaseSettings(url="postgresql+asyncpg://renum:s3cret@127.0.0.1:9/renum")
    with pytest.raises(CannotCheck) as caught:
        await check_database(closed, Base.metadata)
    assert str(caught.value).startswith(
        "cannot reach the database at postgresql+asyncpg://renum:***@127.0.0.1:9/renum: "
    )
    assert "s3cret" not in str(caught.value)


@pytest.mark.anyio
async def test_a_missing_driver_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_driver(settings: DatabaseSettings) -> None:
        raise ModuleNotFoundError("No module named 'aiosqlite'")

    monkeypatch.setattr("app.db.database.build_probe_engine", no_driver)
    path = tmp_path / "x.db"
    sqlite3.connect(path).close()
    with pytest.raises(CannotCheck, match=r"the database driver for sqlite.* is not installed"):
        await check_database(sqlite_settings(path), Base.metadata)


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    path = tmp_path / "drift.db"
    monkeypatch.setenv("RENUM_DATABASE__URL", f"sqlite+aiosqlite:///{path}")
    return path


def test_db_check_on_a_fresh_database(database: Path) -> None:
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(cli, ["db", "check"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"no drift: the sqlite database (revision {migrate.head_revision()}) matches the models"
    )
    as_json = runner.invoke(cli, ["db", "check", "--json"])
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["status"] == "ok"


def test_db_check_names_each_difference(database: Path) -> None:
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    with sqlite3.connect(database) as conn:
        conn.execute("alter table executions add column foo text")
        conn.execute("drop index ix_executions_status")
        conn.execute("create table procrastinate_jobs (id integer primary key, queue text)")
    result = runner.invoke(cli, ["db", "check"])
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [
        "extra column executions.foo TEXT (in the database, not in the models)",
        "missing index ix_executions_status on executions (status) "
        "(in the models, not in the database)",
        f"drift: 2 differences between the models and the sqlite database (revision "
        f"{migrate.head_revision()}, code head {migrate.head_revision()})",
    ]
    report = json.loads(runner.invoke(cli, ["db", "check", "--json"]).stdout)
    assert report["status"] == "drift"
    assert [(d["kind"], d["table"], d["name"]) for d in report["differences"]] == [
        ("extra_column", "executions", "foo"),
        ("missing_index", "executions", "ix_executions_status"),
    ]


def test_db_check_reports_pending_migrations(database: Path) -> None:
    assert runner.invoke(cli, ["db", "upgrade", "0005"]).exit_code == 0
    result = runner.invoke(cli, ["db", "check", "--json"])
    assert result.exit_code == 1
    found = json.loads(result.stdout)["differences"]
    assert found[0]["kind"] == "revision"
    assert found[0]["name"] == "pending"
    assert found[0]["database"] == "0005"
    assert {d["table"] for d in found if d["kind"] == "missing_table"} == {
        "alerts",
        "alert_silences",
        "alert_evaluations",
        "ledger_daily_totals",
        "usage_rollups",
        "execution_rollups",
        "audit_entries",
        "audit_head",
        "audit_checkpoints",
        "security_counters",
    }


def test_db_check_cannot_check_exits_2(database: Path) -> None:
    result = runner.invoke(cli, ["db", "check"])
    assert result.exit_code == 2
    assert "Cannot check the schema: no SQLite database at" in result.stderr
    assert not database.exists()
    as_json = runner.invoke(cli, ["db", "check", "--json"])
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout) == {
        "status": "error",
        "error": f"no SQLite database at {database}: run `renum db upgrade` to create it",
    }
