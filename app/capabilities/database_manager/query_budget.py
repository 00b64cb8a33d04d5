"""The per-request query budget and the slow-query report of the database manager.

``QueryBudget`` is a request observer of the base middleware (``app.core.middleware``). When a
request starts it makes a counter (``app.db.queries``) the current one: the statements the
request issues, in its own task or in tasks and threads it starts (``asyncio.gather``
included), add to it. When the request ends it compares the count with the route's budget
(``database_manager.query_budgets["METHOD /template"]``, else ``query_budget``) and logs a
request over it as ``query_budget_exceeded`` (route, count, budget): an N+1 pattern shows up as
a count that grows with the data. A request held open on purpose (``hold_open`` of
``app.core.middleware``: an event stream, a long-poll) is not checked: its statements grow with
the time the client waits, not with the data. Requests are counted in development and test
only (the integration suite's launcher fails a run whose server logged one).

``QueryBudget.hooks`` are what the engines' instrumentation (``app.db.queries.instrument``)
does with a statement slower than ``database_manager.slow_query_ms``: log it as ``slow_query``
(the SQL with placeholders, never a parameter, and the route) and count it in
``renum_database_slow_queries_total{route}`` (``<background>`` for statements issued outside a
request). Budgets and threshold are read from the live settings at each use: a reload applies
at once.

Per request where requests are counted: one object, one context-variable write, and at the
end one comparison; the route template is worked out only for a request whose count could
exceed a budget. Elsewhere nothing per request: a slow statement's route comes from the
request's context (``app.core.request_context``), which the base middleware sets anyway.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter
from starlette.types import Scope

from app.core.config import Environment, Settings
from app.core.logging import get_logger
from app.core.metrics import Metrics
from app.core.middleware import HELD_OPEN
from app.core.request_context import UNMATCHED, current_scope, route_template
from app.db import queries
from app.db.queries import QueryCounter, QueryHooks, SlowQuery

BACKGROUND = "<background>"
COUNTED_ENVIRONMENTS = frozenset({Environment.development, Environment.test})

log = get_logger("app.database_manager")


class RequestQueries(QueryCounter):
    """The counter of one HTTP request: it names the request's route (``GET /api/v1/...``),
    worked out once, when first asked."""

    __slots__ = ("_route", "scope")

    def __init__(self, scope: Scope) -> None:
        # QueryCounter's fields set here rather than through super().__init__: one call
        # fewer on every request.
        self.count = 0
        self.counting = True
        self.open = True
        self.scope = scope
        self._route: str | None = None

    def route(self) -> str:
        if self._route is None:
            self._route = _route_of(self.scope)
        return self._route


def _route_of(scope: Scope) -> str:
    return f"{scope.get('method', 'GET')} {route_template(scope)}"


def current_route() -> str | None:
    """The route of the request being answered in this context (None outside a request, and
    in work a request left running once it was answered)."""
    scope = current_scope()
    return None if scope is None else _route_of(scope)


class QueryBudget:
    """Counts each request's statements (development and test: a request observer there, and
    nowhere else) and reports those over their route's budget; reports slow statements with
    the route of the request that issued them (every environment: from the request's context
    where requests are not counted)."""

    def __init__(self, settings: Callable[[], Settings], metrics: Metrics) -> None:
        self.settings = settings  # read at each use: budgets and threshold reload live
        self.counting = settings().environment in COUNTED_ENVIRONMENTS
        self.slow_queries = Counter(
            "renum_database_slow_queries",
            "Statements slower than database_manager.slow_query_ms, by the route of the "
            "request that issued them (<background> outside a request).",
            ("route",),
            registry=metrics.shared,
        )
        self.hooks = QueryHooks(
            slow_query_ms=self.slow_query_ms,
            on_slow_query=self.slow_query,
            current_route=current_route,
        )

    # -- the request path (observed where requests are counted) ----------------------------

    def request_started(self, scope: Scope) -> None:
        if self.counting:
            queries.start(RequestQueries(scope))

    def request_finished(self, scope: Scope, status: int, seconds: float) -> None:
        if not self.counting:
            return
        counter = queries.current()
        queries.detach()
        if not isinstance(counter, RequestQueries) or counter.scope is not scope:
            return
        counter.close()
        if not scope.get(HELD_OPEN):
            self.check(counter)

    def check(self, counter: QueryCounter) -> bool:
        """Log the request of ``counter`` if it issued more statements than its route's budget
        allows; whether it did."""
        section = self.settings().database_manager
        budgets = section.query_budgets
        if counter.count <= section.query_budget and not budgets:
            return False
        route = counter.route() or UNMATCHED
        budget = budgets.get(route, section.query_budget)
        if counter.count <= budget:
            return False
        log.warning("query_budget_exceeded", route=route, count=counter.count, budget=budget)
        return True

    # -- the engines' hooks ----------------------------------------------------------------

    def slow_query_ms(self) -> float:
        return self.settings().database_manager.slow_query_ms

    def slow_query(self, query: SlowQuery) -> None:
        """Log a slow statement and count it (called on the thread that ran it)."""
        queries.log_slow_query(query)
        self.slow_queries.labels(query.route or BACKGROUND).inc()
