"""Query hygiene for every engine: each statement counted into the request that issued it (the
per-request query budget, which catches N+1 patterns) and timed (the slow-query log).

``instrument(engine, hooks)`` attaches SQLAlchemy's cursor events to a synchronous engine (an
``AsyncEngine``'s ``sync_engine`` too): ``before_cursor_execute`` adds one to the current
``QueryCounter`` and notes the time on the statement's execution context,
``after_cursor_execute`` (or ``handle_error``, for a statement that failed) hands a statement
slower than ``hooks.slow_query_ms()`` to ``hooks.on_slow_query`` as a ``SlowQuery``: its SQL
text as the driver received it, bound parameters as placeholders (``?``, ``$1``, ``%(name)s``),
quoted literals masked, whitespace collapsed and cut to ``MAX_STATEMENT_CHARS``. A parameter's
value never reaches it (engines hide parameters as well: ``hide_parameters=True``).

The current counter lives in a context variable. ``start`` sets one where a request begins
(where requests are counted: development and test); the code that answers the request runs in
that context or in copies of it (``asyncio.gather`` and ``create_task`` copy the context into
their child tasks, a thread pool's ``to_thread`` too, and SQLAlchemy's asyncio bridge runs each
statement in a greenlet sharing the task's context), and a copy holds the same counter object,
so every statement the request issues adds to one count. A task that outlives the request (work
the request started in the background) holds it too: the counter stops counting once closed
(``QueryCounter.close``), and such a task may ``detach`` from it at its start. Where no counter
was started (requests are not counted), a slow statement's route is asked of
``QueryHooks.current_route``; a detached context has none. ``loop.run_in_executor`` does not
copy the context: statements run that way are timed but counted into no request.

Per statement the cost is a context-variable read, an addition and two clock reads; the SQL text
is only looked at for the rare statement that was slow.
"""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event

from app.core.logging import get_logger

MAX_STATEMENT_CHARS = 1000
TRUNCATED = " …"
# The attribute of a statement's execution context holding when its cursor call began.
_STARTED = "_renum_query_started"
# SQL string literals ('it''s' included): masked, since a statement written with its values
# inline (rather than bound) would otherwise show them.
_STRING_LITERAL = re.compile(r"'(?:[^']|'')*'")

log = get_logger("app.db.queries")


class QueryCounter:
    """The statements one request has issued so far. ``counting`` false: attributed to the
    request (``route``), not counted (the per-request budget is off, as in production)."""

    __slots__ = ("count", "counting", "open")

    def __init__(self, *, counting: bool = True) -> None:
        self.count = 0
        self.counting = counting
        self.open = True

    def route(self) -> str | None:
        """What issued the statements, as logs name it (``GET /api/v1/teams/{team_id}``);
        subclasses that know it say so."""
        return None

    def close(self) -> None:
        """The request ended: statements issued from now on (by work it left running) are
        neither counted nor attributed to it."""
        self.counting = False
        self.open = False


_current: ContextVar[QueryCounter | None] = ContextVar("renum_query_counter", default=None)
# The counter of a detached context: closed, so its statements belong to no request.
DETACHED = QueryCounter(counting=False)
DETACHED.close()


def start(counter: QueryCounter | None = None) -> QueryCounter:
    """Make ``counter`` (a new one by default) the current counter of this context and of the
    tasks and threads started from it from now on; return it."""
    counter = counter if counter is not None else QueryCounter()
    _current.set(counter)
    return counter


def current() -> QueryCounter | None:
    """This context's counter, if a request started one."""
    counter = _current.get()
    return None if counter is DETACHED else counter


def clear() -> None:
    """Leave this context with no counter and not detached (as a new context is)."""
    _current.set(None)


def detach() -> None:
    """Count and attribute this context's statements to no request from now on (for a
    background task started from a request; the request's own context keeps its counter)."""
    _current.set(DETACHED)


@dataclass(frozen=True, slots=True)
class SlowQuery:
    """A statement slower than the threshold: its text (parameters as placeholders), how long
    the driver took, the threshold, and the route of the request that issued it (None outside
    a request)."""

    statement: str
    duration_ms: float
    threshold_ms: float
    route: str | None
    executemany: bool = False
    failed: bool = False


def statement_text(statement: str, limit: int = MAX_STATEMENT_CHARS) -> str:
    """``statement`` as a log may show it: quoted literals masked (``'?'``), whitespace
    collapsed, at most ``limit`` characters (cut ones end with ``TRUNCATED``). Bound
    parameters are placeholders in it already."""
    head = statement[: limit * 4]  # an INSERT of many rows can be long; enough to fill limit
    text = " ".join(_STRING_LITERAL.sub("'?'", head).split())
    if len(text) > limit or len(head) < len(statement):
        return text[: limit - len(TRUNCATED)].rstrip() + TRUNCATED
    return text


def log_slow_query(query: SlowQuery) -> None:
    """The default report of a slow statement: a ``slow_query`` warning."""
    log.warning(
        "slow_query",
        statement=query.statement,
        duration_ms=round(query.duration_ms, 2),
        threshold_ms=query.threshold_ms,
        route=query.route,
        executemany=query.executemany,
        failed=query.failed,
    )


@dataclass(frozen=True, slots=True)
class QueryHooks:
    """What ``instrument`` does with a slow statement: the threshold in milliseconds (read for
    each statement, so a live settings reload applies at once), the callback told about
    each statement slower than that (called on the thread that ran it; it must not raise), and
    where the route of a statement issued with no counter comes from."""

    slow_query_ms: Callable[[], float]
    on_slow_query: Callable[[SlowQuery], None] = log_slow_query
    current_route: Callable[[], str | None] = lambda: None


# The listeners attached to each instrumented engine, so instrumenting again replaces them.
_attached: weakref.WeakKeyDictionary[Engine, tuple[tuple[str, Callable[..., None]], ...]] = (
    weakref.WeakKeyDictionary()
)


def instrument(sync_engine: Engine, hooks: QueryHooks) -> None:
    """Count and time every statement ``sync_engine`` runs (for an ``AsyncEngine``, pass its
    ``sync_engine``). Instrumenting an engine again replaces its hooks."""
    uninstrument(sync_engine)

    def before_cursor_execute(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        counter = _current.get()
        if counter is not None and counter.counting:
            counter.count += 1
        if context is not None:
            setattr(context, _STARTED, time.perf_counter())

    def finished(context: Any, statement: str, executemany: bool, failed: bool) -> None:
        started = getattr(context, _STARTED, None)
        if started is None:
            return
        setattr(context, _STARTED, None)
        duration_ms = (time.perf_counter() - started) * 1000
        threshold_ms = hooks.slow_query_ms()
        if duration_ms < threshold_ms:
            return
        counter = _current.get()
        if counter is None:
            route = hooks.current_route()
        else:
            route = counter.route() if counter.open else None
        query = SlowQuery(
            statement_text(statement), duration_ms, threshold_ms, route, executemany, failed
        )
        try:
            hooks.on_slow_query(query)
        except Exception as exc:  # a report that failed must not fail the statement
            log.warning("slow_query_report_failed", error_type=type(exc).__name__)

    def after_cursor_execute(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        if context is not None:
            finished(context, statement, executemany, failed=False)

    def handle_error(exception_context: Any) -> None:
        context = exception_context.execution_context
        statement = exception_context.statement
        if context is not None and statement is not None:
            finished(context, statement, bool(getattr(context, "executemany", False)), True)

    listeners: tuple[tuple[str, Callable[..., None]], ...] = (
        ("before_cursor_execute", before_cursor_execute),
        ("after_cursor_execute", after_cursor_execute),
        ("handle_error", handle_error),
    )
    for name, listener in listeners:
        event.listen(sync_engine, name, listener)
    _attached[sync_engine] = listeners


def uninstrument(sync_engine: Engine) -> None:
    """Remove what ``instrument`` attached to ``sync_engine`` (nothing if it attached nothing)."""
    for name, listener in _attached.pop(sync_engine, ()):
        event.remove(sync_engine, name, listener)
