"""Core statements compiled once per dialect and run as the driver's own SQL (``Prepared``).

SQLAlchemy finds a statement it has compiled before in its cache, but each execution still
derives the statement's cache key (a walk of the whole statement: for the engine's one-statement
commits on PostgreSQL, a tree of CTEs), looks it up, and builds the parameters through its
generic path. The engine runs a few fixed statements for every step, so it compiles each of
them once per dialect and hands the driver the compiled SQL and the parameters in its order
(``Connection.exec_driver_sql``): the same SQL, each value through its bind parameter's own type
processing, the same connection events (the query hooks still count and time every statement),
without the work per call.

What it allows, it checks when it compiles: a positional paramstyle (both drivers here use
one; any other runs the statement as usual), no parameters expanded at execution (``IN`` lists)
and no column default or onupdate computed in Python (the statement names every value). Its
results are the driver's rows, with no result processing: use it for statements that return
nothing, a row count, or integers.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ARRAY, Connection, CursorResult, Dialect
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeEngine

# The value of a bind parameter the caller must give (the statement holds none).
_MISSING = object()


@dataclass(frozen=True)
class _Form:
    """A statement compiled for one dialect: its SQL and its parameters in order, each as its
    name, its type's bind processor (or None) and the value the statement holds for it (a
    literal such as the 1 of ``lease + 1``), or ``_MISSING``."""

    sql: str
    binds: tuple[tuple[str, Any, Any], ...]

    def arguments(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        values = []
        for name, process, held in self.binds:
            value = params.get(name, held)
            if value is _MISSING:
                raise KeyError(f"no value for the bind parameter {name!r}")
            values.append(value if process is None else process(value))
        return tuple(values)


class Prepared:
    """A Core statement compiled once per dialect, run as the driver's SQL (see the module)."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        # By dialect (each engine has its own), held no longer than its engine.
        self._forms: weakref.WeakKeyDictionary[Dialect, _Form | None] = weakref.WeakKeyDictionary()

    def form(self, dialect: Dialect) -> _Form | None:
        """The statement compiled for ``dialect``; None when it must run as usual."""
        try:
            return self._forms[dialect]
        except KeyError:
            form = self._forms[dialect] = _compile(self.statement, dialect)
            return form

    def run(self, conn: Connection, params: Mapping[str, Any]) -> CursorResult[Any]:
        """Execute once with ``params`` (by bind parameter name)."""
        form = self.form(conn.dialect)
        if form is None:
            return conn.execute(self.statement, dict(params))
        return conn.exec_driver_sql(form.sql, form.arguments(params))

    def run_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Execute once per row of ``rows`` (the driver's executemany)."""
        if not rows:
            return
        form = self.form(conn.dialect)
        if form is None:
            conn.execute(self.statement, [dict(row) for row in rows])
        elif len(rows) == 1:
            conn.exec_driver_sql(form.sql, form.arguments(rows[0]))
        else:
            conn.exec_driver_sql(form.sql, [form.arguments(row) for row in rows])


def _compile(statement: Executable, dialect: Dialect) -> _Form | None:
    if not isinstance(statement, ClauseElement):
        return None
    compiled = statement.compile(dialect=dialect)
    if not isinstance(compiled, SQLCompiler) or not compiled.positional:
        return None
    if compiled.insert_prefetch or compiled.update_prefetch:
        names = [c.name for c in (*compiled.insert_prefetch, *compiled.update_prefetch)]
        raise ValueError(f"the statement leaves {names} to Python-side defaults: bind them")
    if compiled.post_compile_params or compiled.literal_execute_params:
        raise ValueError("the statement has parameters expanded at execution")
    binds = []
    for name in compiled.positiontup or ():
        bind = compiled.binds[name]
        held = _MISSING if bind.required else bind.effective_value
        binds.append((name, _bind_processor(bind.type, dialect), held))
    return _Form(compiled.string, tuple(binds))


def _bind_processor(type_: TypeEngine[Any], dialect: Dialect) -> Any:
    """The type's bind processor for ``dialect``; none for a one-dimensional array of items
    that need none (SQLAlchemy's would only copy the list, which the driver takes as it is)."""
    impl = type_.dialect_impl(dialect)
    if (
        isinstance(impl, ARRAY)
        and impl.dimensions in (None, 1)
        and impl.item_type.dialect_impl(dialect).bind_processor(dialect) is None
    ):
        return None
    return impl.bind_processor(dialect)
