"""Schema drift: where the live database differs from the ORM models, told in plain words.

``renum db check`` runs it. Alembic's autogenerate comparison (``compare_metadata``) reflects the
schema and compares it with the models' ``MetaData``, which the caller passes in (this layer does
not import the models): missing or extra tables, columns, indexes, unique constraints and
foreign keys; changed column types, nullability, server defaults and comments. Nothing is
written: the schema is read in one transaction that is rolled back.

The comparison is configured so that a database migrated with ``renum db upgrade`` shows no
difference on SQLite or PostgreSQL; each case treated as equivalent says why next to its rule
(``compare_type``, ``compare_server_default``). Tables of other components sharing the database
are left out (``is_foreign_table``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Column,
    Connection,
    ForeignKeyConstraint,
    Index,
    MetaData,
    Table,
    UniqueConstraint,
    inspect,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import ArgumentError, CompileError, SQLAlchemyError
from sqlalchemy.schema import ColumnDefault, DefaultClause, SchemaItem
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.types import TypeEngine

from app.core.config import DatabaseSettings
from app.db import migrate

# Alembic's own bookkeeping: the revision the database is at, not a model.
VERSION_TABLE = "alembic_version"
# Tables other components keep in the same database, by name prefix: the job queue's
# (Procrastinate creates procrastinate_jobs, procrastinate_events, ...). Another component
# sharing the database adds its prefix here.
FOREIGN_TABLE_PREFIXES: tuple[str, ...] = ("procrastinate_",)

DifferenceKind = Literal[
    "revision",
    "missing_table",
    "extra_table",
    "missing_column",
    "extra_column",
    "missing_index",
    "extra_index",
    "missing_unique",
    "extra_unique",
    "missing_foreign_key",
    "extra_foreign_key",
    "type",
    "nullable",
    "server_default",
    "comment",
    "table_comment",
    "other",
]


class CannotCheck(Exception):
    """The schema could not be compared (database unreachable, not migrated, ...); the message
    is one readable line saying why and what to do."""


def is_foreign_table(name: str | None) -> bool:
    """True for tables in the database that are not Renum's models': Alembic's version table
    and those of the components named in ``FOREIGN_TABLE_PREFIXES``."""
    if name is None:
        return False
    return name == VERSION_TABLE or name.startswith(FOREIGN_TABLE_PREFIXES)


def include_name(name: str | None, type_: str, parent_names: dict[str, str | None]) -> bool:
    """Alembic's reflection filter: foreign tables are not even reflected."""
    if type_ == "table":
        return not is_foreign_table(name)
    return True


def include_object(
    obj: SchemaItem, name: str | None, type_: str, reflected: bool, compare_to: SchemaItem | None
) -> bool:
    """Alembic's object filter, on both sides: foreign tables and everything on them (columns,
    indexes, constraints), whether reflected or declared in the metadata."""
    if type_ == "table":
        return not is_foreign_table(name)
    table = getattr(obj, "table", None)
    return not (isinstance(table, Table) and is_foreign_table(table.name))


def type_ddl(type_: TypeEngine[Any], dialect: Dialect) -> str | None:
    """The column type as the dialect writes it in DDL (``VARCHAR(200)``, ``JSONB``), with
    variants (``with_variant``) and type decorators resolved; None when it has no DDL form."""
    try:
        ddl = type_.compile(dialect=dialect)
    except CompileError:
        return None
    return re.sub(r"\s*,\s*", ", ", " ".join(ddl.upper().split()))


def compare_type(
    context: MigrationContext,
    inspected_column: Column[Any],
    metadata_column: Column[Any],
    inspected_type: TypeEngine[Any],
    metadata_type: TypeEngine[Any],
) -> bool | None:
    """False (same type) when both types have the same DDL on this dialect, else None: Alembic's
    own comparison decides, which knows the synonyms (FLOAT and DOUBLE PRECISION, NUMERIC and
    DECIMAL on PostgreSQL) and compares lengths and precisions only when both sides give them.

    Same DDL, same type: a model type is compared as the dialect creates it, so a
    ``JSON().with_variant(JSONB(), "postgresql")`` column is JSONB on PostgreSQL and JSON on
    SQLite, and a type decorator (``UTCDateTime``) is its implementation (TIMESTAMP WITH TIME
    ZONE, DATETIME); JSON and JSONB stay different types (JSONB normalises documents and has
    operators of its own).

    SQLite's type affinity is not folded in: SQLite keeps each column's declared type, and the
    migrations declare it from the same SQLAlchemy types as the models, so a migrated database
    compares equal by declared type. Folding types into SQLite's five affinities would hide
    VARCHAR(200) becoming TEXT, which the same migration would make a real change on PostgreSQL.

    Boolean and enum columns: their CHECK constraints are not compared (Alembic compares no
    CHECK constraint), and the models store enums as VARCHAR, so neither can differ here.
    """
    wanted = type_ddl(metadata_type, context.dialect)
    if wanted is not None and wanted == type_ddl(inspected_type, context.dialect):
        return False
    return None


def _enclosed(text: str) -> bool:
    """Whether one pair of parentheses encloses all of ``text`` (``(1)``, not ``(1) + (2)``)."""
    if not (text.startswith("(") and text.endswith(")")):
        return False
    depth = 0
    for position, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and position < len(text) - 1:
            return False
    return True


def default_literal(sql: str) -> str:
    """A server default's SQL reduced to its literal: outer parentheses, casts (``'0'::integer``)
    and quotes removed. Both dialects write the same default differently: SQLite keeps the text
    as declared (``'0'``), PostgreSQL adds casts (``'x'::character varying``)."""
    text = sql.strip()
    while _enclosed(text):
        text = text[1:-1].strip()
    text = re.sub(r"(::[\w ]+(\(\d+(,\s*\d+)?\))?)+$", "", text).strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        text = text[1:-1].replace("''", "'")
    return text


def matches_python_default(column: Column[Any], server_default: str) -> bool:
    """Whether ``server_default`` (SQL, as reflected) holds the column's constant client-side
    default (``default=0``), booleans read back as PostgreSQL's ``true``/``false`` or SQLite's
    ``1``/``0``. False for callables, SQL expressions and no client-side default."""
    default = column.default
    if not isinstance(default, ColumnDefault) or not default.is_scalar:
        return False
    value, literal = default.arg, default_literal(server_default)
    if isinstance(value, bool):
        return literal.lower() in ({"true", "1"} if value else {"false", "0"})
    if isinstance(value, int | float | str):
        return literal == str(value)
    return False


def compare_server_default(
    context: MigrationContext,
    inspected_column: Column[Any],
    metadata_column: Column[Any],
    inspected_default: str | None,
    metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool | None:
    """False (same default) in the one case below, else None: the dialect's own comparison
    decides (on PostgreSQL it asks the server whether the two expressions are equal; on SQLite
    it compares the texts without quotes and parentheses).

    A server default the models do not declare, equal to the model's constant client-side
    default, is equivalent: it is how a migration fills a NOT NULL column it adds to existing
    rows (``accounts.active_executions``, migration 0002, ``server_default="0"`` beside the
    model's ``default=0``). Every insert through the models writes the model's default, and any
    other insert gets the server default: the same value either way.
    """
    if metadata_column.server_default is not None or inspected_default is None:
        return None
    if matches_python_default(metadata_column, inspected_default):
        return False
    return None


@dataclass(frozen=True)
class Difference:
    """One way the database differs from the models. ``models`` and ``database`` hold each
    side's value for a changed column (type, nullability, default), or the definition of an
    object only one side has. For ``revision``, they hold the code's head and the database's
    revision, and ``name`` says whether that revision is ``pending`` (an older one of this
    code's migrations) or ``unknown`` (not one of them)."""

    kind: DifferenceKind
    table: str | None
    name: str | None = None
    models: str | None = None
    database: str | None = None

    @property
    def where(self) -> str:
        """What differs: ``table.column`` for a column, else the object's or table's name."""
        if self.table and self.name and self.kind in _COLUMN_KINDS:
            return f"{self.table}.{self.name}"
        return self.name or self.table or "?"

    def line(self) -> str:
        """The difference in plain words, on one line."""
        if self.kind == "revision":
            return _revision_line(self.name, self.models, self.database)
        if self.kind == "other":
            return f"other difference on {self.where}: {self.models or self.database}"
        if self.kind in _CHANGES:
            return (
                f"{_CHANGES[self.kind]} of {self.where}: {self.models} in the models, "
                f"{self.database} in the database"
            )
        presence, noun = self.kind.split("_", 1)
        named = self.table and self.name and self.kind not in _COLUMN_KINDS
        on = f" on {self.table}" if named else ""
        if presence == "missing":
            shape = f" {self.models}" if self.models else ""
            return (
                f"missing {_NOUNS.get(noun, noun)} {self.where}{on}{shape} "
                "(in the models, not in the database)"
            )
        shape = f" {self.database}" if self.database else ""
        return (
            f"extra {_NOUNS.get(noun, noun)} {self.where}{on}{shape} "
            "(in the database, not in the models)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "message": self.line()}


_COLUMN_KINDS = frozenset(
    {"missing_column", "extra_column", "type", "nullable", "server_default", "comment"}
)
_CHANGES = {
    "type": "type",
    "nullable": "nullability",
    "server_default": "server default",
    "comment": "comment",
    "table_comment": "comment",
}
_NOUNS = {"unique": "unique constraint", "foreign_key": "foreign key"}


def _revision_line(state: str | None, head: str | None, current: str | None) -> str:
    if state == "unknown":
        return (
            f"revision: {current} in the database is not one of this code's migrations (head "
            f"{head}): a newer release migrated it; run that release, or its "
            f"`renum db downgrade {head}`"
        )
    return (
        f"revision: {current} in the database, {head} in the code "
        "(migrations pending: run `renum db upgrade`)"
    )


def _columns(items: Iterable[Any]) -> str:
    return ", ".join(str(getattr(item, "name", item)) for item in items)


def _index_shape(index: Index) -> str:
    unique = "unique " if index.unique else ""
    return f"{unique}({_columns(index.expressions)})"


def _foreign_key_shape(key: ForeignKeyConstraint) -> str:
    target = key.elements[0].target_fullname.rsplit(".", 1)[0] if key.elements else "?"
    referred = ", ".join(element.target_fullname.rsplit(".", 1)[-1] for element in key.elements)
    return f"({_columns(key.columns)}) -> {target}({referred})"


def _nullability(nullable: Any) -> str:
    return "NULL allowed" if nullable else "NOT NULL"


def _default_text(default: Any) -> str:
    if default is None:
        return "none"
    if isinstance(default, DefaultClause):
        default = default.arg
    if isinstance(default, ClauseElement):
        return str(getattr(default, "text", default))
    return str(default)


def _comment_text(comment: Any) -> str:
    return "none" if comment is None else repr(comment)


def _type_text(type_: Any, dialect: Dialect) -> str:
    if not isinstance(type_, TypeEngine):
        return "unknown"
    return type_ddl(type_, dialect) or repr(type_)


def describe(diff: tuple[Any, ...], dialect: Dialect) -> Difference:
    """One of Alembic's difference tuples (``compare_metadata``) as a ``Difference``."""
    op = diff[0]
    if op in ("add_table", "remove_table"):
        table: Table = diff[1]
        kind: DifferenceKind = "missing_table" if op == "add_table" else "extra_table"
        return Difference(kind, table.name)
    if op in ("add_column", "remove_column"):
        column: Column[Any] = diff[3]
        shape = _type_text(column.type, dialect)
        if op == "add_column":
            return Difference("missing_column", diff[2], column.name, models=shape)
        return Difference("extra_column", diff[2], column.name, database=shape)
    if op in ("add_index", "remove_index"):
        index: Index = diff[1]
        table_name = index.table.name if index.table is not None else None
        if op == "add_index":
            return Difference("missing_index", table_name, index.name, models=_index_shape(index))
        return Difference("extra_index", table_name, index.name, database=_index_shape(index))
    if op in ("add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        constraint = diff[1]
        constraint_table = constraint.table.name if constraint.table is not None else None
        name = str(constraint.name) if constraint.name else None
        if isinstance(constraint, ForeignKeyConstraint):
            shape = _foreign_key_shape(constraint)
            if op.startswith("add"):
                return Difference("missing_foreign_key", constraint_table, name, models=shape)
            return Difference("extra_foreign_key", constraint_table, name, database=shape)
        if isinstance(constraint, UniqueConstraint):
            shape = f"({_columns(constraint.columns)})"
            if op.startswith("add"):
                return Difference("missing_unique", constraint_table, name, models=shape)
            return Difference("extra_unique", constraint_table, name, database=shape)
        return Difference("other", constraint_table, name, models=op)
    if op in ("modify_type", "modify_nullable", "modify_default", "modify_comment"):
        _, _schema, table_name, column_name, _existing, in_database, in_models = diff
        if op == "modify_type":
            return Difference(
                "type",
                table_name,
                column_name,
                models=_type_text(in_models, dialect),
                database=_type_text(in_database, dialect),
            )
        if op == "modify_nullable":
            return Difference(
                "nullable",
                table_name,
                column_name,
                models=_nullability(in_models),
                database=_nullability(in_database),
            )
        if op == "modify_default":
            return Difference(
                "server_default",
                table_name,
                column_name,
                models=_default_text(in_models),
                database=_default_text(in_database),
            )
        return Difference(
            "comment",
            table_name,
            column_name,
            models=_comment_text(in_models),
            database=_comment_text(in_database),
        )
    if op in ("add_table_comment", "remove_table_comment"):
        commented: Table = diff[1]
        in_database = diff[2] if op == "add_table_comment" else commented.comment
        in_models = commented.comment if op == "add_table_comment" else None
        return Difference(
            "table_comment",
            commented.name,
            models=_comment_text(in_models),
            database=_comment_text(in_database),
        )
    return Difference("other", None, models=str(op))


def _flatten(diffs: Iterable[Any]) -> Iterable[tuple[Any, ...]]:
    # Changes to one column come grouped in a list; everything else is a tuple.
    for diff in diffs:
        if isinstance(diff, list):
            yield from diff
        else:
            yield diff


def differences(diffs: Sequence[Any], dialect: Dialect) -> list[Difference]:
    """Alembic's differences in plain form, ordered by table, then kind and name, without
    anything on a foreign table."""
    found = [describe(diff, dialect) for diff in _flatten(diffs)]
    kept = [d for d in found if not is_foreign_table(d.table)]
    return sorted(kept, key=lambda d: (d.table or "", d.kind, d.name or ""))


@dataclass
class DriftReport:
    """The comparison's outcome: the database's revision, the code's head, what differs."""

    dialect: str
    revision: str | None
    head: str | None
    differences: list[Difference] = field(default_factory=list)

    @property
    def drift(self) -> bool:
        return bool(self.differences)

    def summary(self) -> str:
        if not self.drift:
            return (
                f"no drift: the {self.dialect} database (revision {self.revision}) matches "
                "the models"
            )
        count = len(self.differences)
        return (
            f"drift: {count} difference{'s' if count != 1 else ''} between the models and the "
            f"{self.dialect} database (revision {self.revision or 'none'}, code head "
            f"{self.head or 'none'})"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "drift" if self.drift else "ok",
            "dialect": self.dialect,
            "revision": self.revision,
            "head": self.head,
            "differences": [d.as_dict() for d in self.differences],
        }


def configure_context(connection: Connection) -> MigrationContext:
    """A migration context on ``connection`` set up for the comparison (see the module
    docstring)."""
    return MigrationContext.configure(
        connection,
        opts={
            "compare_type": compare_type,
            "compare_server_default": compare_server_default,
            "include_name": include_name,
            "include_object": include_object,
        },
    )


def _known_revisions() -> set[str]:
    script = ScriptDirectory.from_config(migrate.alembic_config())
    return {revision.revision for revision in script.walk_revisions()}


def compare_schema(connection: Connection, metadata: MetaData) -> DriftReport:
    """Compare the schema on ``connection`` with ``metadata``; raise ``CannotCheck`` when the
    database was never migrated (nothing to compare with)."""
    context = configure_context(connection)
    revision = context.get_current_revision()
    if revision is None:
        tables = [t for t in inspect(connection).get_table_names() if not is_foreign_table(t)]
        if not tables:
            raise CannotCheck(
                "the database is empty (no tables, no migration revision): "
                "run `renum db upgrade` to create the schema"
            )
        raise CannotCheck(
            f"the database has tables ({', '.join(sorted(tables)[:3])}, ...) but no migration "
            f"revision in {VERSION_TABLE}: it was not created by `renum db upgrade`, so there is "
            "no migrated schema to compare"
        )
    head = migrate.head_revision()
    found = differences(compare_metadata(context, metadata), connection.dialect)
    if revision != head:
        state = "pending" if revision in _known_revisions() else "unknown"
        found.insert(0, Difference("revision", None, state, models=head, database=revision))
    return DriftReport(connection.dialect.name, revision, head, found)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def check_database(settings: DatabaseSettings, metadata: MetaData) -> DriftReport:
    """Compare the configured database with ``metadata`` without changing anything; raise
    ``CannotCheck`` with a one-line reason when that is impossible."""
    from app.db.database import build_probe_engine

    try:
        url = make_url(settings.url)
    except (ArgumentError, ValueError) as exc:
        raise CannotCheck(f"RENUM_DATABASE__URL is not a valid database URL: {exc}") from None
    where = url.render_as_string(hide_password=True)
    # Connecting to a missing SQLite file would create it, and a check creates nothing.
    sqlite_file = url.database if settings.is_sqlite and url.database != ":memory:" else None
    if sqlite_file and not await asyncio.to_thread(Path(sqlite_file).is_file):
        raise CannotCheck(
            f"no SQLite database at {sqlite_file}: run `renum db upgrade` to create it"
        )
    try:
        engine = build_probe_engine(settings)
    except ImportError as exc:
        raise CannotCheck(f"the database driver for {where} is not installed: {exc}") from None
    try:
        async with engine.connect() as conn:
            try:
                return await conn.run_sync(lambda sync: compare_schema(sync, metadata))
            finally:
                await conn.rollback()
    except CannotCheck:
        raise
    except (OSError, TimeoutError) as exc:
        raise CannotCheck(f"cannot reach the database at {where}: {_first_line(exc)}") from None
    except SQLAlchemyError as exc:
        raise CannotCheck(f"database error at {where}: {_first_line(exc)}") from None
    finally:
        await engine.dispose()
