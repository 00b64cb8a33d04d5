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
only (the integration suite's launcher fails a run whose server logged one); in staging and
production the counter only tells the slow-query report which route issued a statement.

``QueryBudget.hooks`` are what the engines' instrumentation (``app.db.queries.instrument``)
does with a statement slower than ``database_manager.slow_query_ms``: log it as ``slow_query``
(the SQL with placeholders, never a parameter, and the route) and count it in
``renum_database_slow_queries_total{route}`` (``<background>`` for statements issued outside a
request). Budgets and threshold are read from the live settings at each use: a reload applies
at once.

Per request: one object, one context-variable write, and at the end one comparison; the route
template is worked out only for a request whose count could exceed a budget.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter
from starlette.types import Scope

from app.core.config import Environment, Settings
from app.core.logging import get_logger
from app.core.metrics import Metrics
from app.core.middleware import HELD_OPEN
from app.core.request_context import UNMATCHED, route_template
from app.db import queries
from app.db.queries import QueryCounter, QueryHooks, SlowQuery

BACKGROUND = "<background>"
COUNTED_ENVIRONMENTS = frozenset({Environment.development, Environment.test})

log = get_logger("app.database_manager")


class RequestQueries(QueryCounter):
    """The counter of one HTTP request: it names the request's route (``GET /api/v1/...``),
    worked out once, when first asked."""

    __slots__ = ("_route", "scope")

    def __init__(self, scope: Scope, *, counting: bool) -> None:
        # QueryCounter's fields set here rather than through super().__init__: one call
        # fewer on every request.
        self.count = 0
        self.counting = counting
        self.open = True
        self.scope = scope
        self._route: str | None = None

    def route(self) -> str:
        if self._route is None:
            self._route = f"{self.scope.get('method', 'GET')} {route_template(self.scope)}"
        return self._route


class QueryBudget:
    """Counts each request's statements (development and test) and reports those over their
    route's budget; reports slow statements with their route (every environment)."""

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
        self.hooks = QueryHooks(slow_query_ms=self.slow_query_ms, on_slow_query=self.slow_query)

    # -- the request path ------------------------------------------------------------------

    def request_started(self, scope: Scope) -> None:
        queries.start(RequestQueries(scope, counting=self.counting))

    def request_finished(self, scope: Scope, status: int, seconds: float) -> None:
        counter = queries.current()
        queries.detach()
        if not isinstance(counter, RequestQueries) or counter.scope is not scope:
            return
        counting = counter.counting
        counter.close()
        if counting and not scope.get(HELD_OPEN):
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
