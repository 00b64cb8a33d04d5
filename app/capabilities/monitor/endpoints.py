"""Endpoint performance: every API request counted by route template
(``/api/v1/teams/{team_id}``, never the raw path), method and status class, timed in a latency
histogram, and the requests in flight counted.

``EndpointStats`` is a request observer of the base middleware (``app.core.middleware``), which
already times every request for the access log: the monitor adds no middleware layer of its
own. Probes and the metrics route (``/health/*``, ``/livez``, ``/readyz``, ``/metrics``) are
left out, as is WebSocket traffic. A request no route matched counts under the template
``<unmatched>``, so a scan of random paths cannot grow the label sets.

The figures are Prometheus metrics in the app's shared registry (``app.core.metrics``), named as
Prometheus recommends: ``http_requests_total``, ``http_request_duration_seconds``,
``http_requests_in_flight``. A request does not touch them, though: each update of a
prometheus_client metric takes a lock and a histogram's walks its buckets, about half of the
2.2 µs a request cost the monitor when it updated them directly (the rest: its label lookup and
splitting the path for the template). A request adds to plain Python numbers instead, a list of
cells per method and route (its status class, its latency bucket, the sum of latencies: three
list items, no lock, since only the event loop records), 0.8 µs in all; ``flush`` folds what
accumulated into the Prometheus metrics, one ``inc`` per non-empty cell however many requests
it counted. Every read folds first: ``Metrics.service_registry`` (hence the ``/metrics``
exposition) through a ``before_collect`` hook, ``table()``, and each system sample, which calls
``publish_in_flight``. So the figures a process reports about itself are exact whenever they
are read.

Under ``renum serve --workers N`` each worker's folded figures reach the scrape through the
multiprocess files; a worker folds when it answers a scrape and at each of its system samples
(``RENUM_MONITOR__INTERVAL_SECONDS``, 10 s by default). A scrape therefore has the answering
worker's requests up to that moment and the others' up to their last sample: the sum lags by at
most one sampling interval (counters only ever catch up, so ``rate()`` over a scrape window is
unaffected but for that delay). The same holds for the service-wide figures the monitor reads
from ``Metrics.service_registry()``.

The route template is rebuilt from the path and its parameters (``route_template``): the route
object FastAPI hands over knows only its own part of the path, not the prefixes of the routers
that include it. ``EndpointStats`` keeps the template it rebuilt for each route, so a request
to a route already seen costs a dictionary lookup instead of splitting its path.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import Scope

from app.core.metrics import Metrics
from app.core.middleware import HELD_OPEN
from app.core.request_context import UNMATCHED, route_template

# Methods counted under their own name; any other (h11 accepts any token) under OTHER_METHOD,
# so that made-up methods cannot grow the label sets.
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
OTHER_METHOD = "OTHER"
EXCLUDED_PREFIXES = ("/health/", "/livez", "/readyz", "/metrics")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
MAX_TEMPLATES_PER_ROUTE = 8  # a bound on the cache, beyond any app's inclusions of one router

# The cells of one method and route, in one list: the requests of each status class, the sum
# of their durations, then how many fell in each latency bucket (not cumulative; the last one
# is +Inf, past the highest bound).
_SUM = len(STATUS_CLASSES)
_FIRST_BUCKET = _SUM + 1
_CELLS = _FIRST_BUCKET + len(BUCKETS) + 1


def excluded(path: str) -> bool:
    return path.startswith(EXCLUDED_PREFIXES) or path == "/health"


class EndpointStats:
    """The endpoint metrics of one app. Recording and folding run on the event loop only."""

    def __init__(self, metrics: Metrics) -> None:
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests answered, by method, route template and status class.",
            ("method", "route", "status"),
            registry=metrics.shared,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by route template.",
            ("method", "route"),
            buckets=BUCKETS,
            registry=metrics.shared,
        )
        self.in_flight = metrics.gauge(
            "http_requests_in_flight", "HTTP requests being answered now.", mode="livesum"
        )
        metrics.before_collect(self.flush)  # a scrape reads exact figures
        self.active = 0  # requests in flight now
        # Recorded since the last flush, by (method, route): see _SUM and _FIRST_BUCKET.
        self._pending: dict[tuple[str, str], list[float]] = {}
        # The metrics' children, made when a label set is first folded.
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}
        # Each route's templates (one per router that includes it, usually one), by id(route):
        # (route, the template's text before its first parameter, its number of "/", the
        # template). Routes are not hashable (they compare by path); the route itself is kept
        # so that a reused id is never mistaken for it.
        self._templates: dict[int, tuple[tuple[Any, str, int, str], ...]] = {}

    # -- the request path ------------------------------------------------------------------

    def request_started(self, scope: Scope) -> None:
        if not excluded(scope["path"]):
            self.active += 1

    def request_finished(self, scope: Scope, status: int, seconds: float) -> None:
        if excluded(scope["path"]):
            return
        self.active -= 1
        method = scope["method"] if scope["method"] in METHODS else OTHER_METHOD
        timed = not scope.get(HELD_OPEN)
        self.record(method, self.template(scope), status, seconds if timed else None)

    def template(self, scope: Scope) -> str:
        """``route_template(scope)``, worked out once per route: a route seen before answers
        from the cache when the path fits a template it had (the same text before the first
        parameter, as many segments), which tells apart the inclusions of a router included
        under several prefixes, and the depths of a ``{name:path}`` parameter (never cached:
        its depth varies)."""
        route = scope.get("route")
        if route is None:
            return UNMATCHED
        path: str = scope["path"]
        if not scope.get("path_params"):
            return path
        slashes = path.count("/")
        kept = self._templates.get(id(route), ())
        for known in kept:
            if known[0] is route and known[2] == slashes and path.startswith(known[1]):
                return known[3]
        template = route_template(scope)
        if template.count("/") == slashes:  # no parameter spans several segments
            entry = (route, template.split("{", 1)[0], slashes, template)
            mine = [known for known in kept if known[0] is route]
            self._templates[id(route)] = (*mine[-(MAX_TEMPLATES_PER_ROUTE - 1) :], entry)
        return template

    def record(self, method: str, route: str, status: int, seconds: float | None) -> None:
        """Count one request (O(1): three additions to plain numbers; ``flush`` folds them
        into the metrics). ``seconds`` None: counted, not timed (held open on purpose)."""
        cells = self._pending.get((method, route))
        if cells is None:
            cells = self._pending[(method, route)] = [0.0] * _CELLS
        status_class = status // 100
        cells[status_class - 1 if 1 <= status_class <= 5 else (0 if status_class < 1 else 4)] += 1
        if seconds is None:
            return
        cells[_SUM] += seconds
        # The bucket of the first bound at or above the duration (Prometheus' "le").
        cells[_FIRST_BUCKET + bisect_left(BUCKETS, seconds)] += 1

    # -- folding and reading ----------------------------------------------------------------

    def flush(self) -> None:
        """Fold what was recorded since the last flush into the Prometheus metrics and copy
        the requests in flight to their gauge: one update per non-empty cell, however many
        requests it counts."""
        pending, self._pending = self._pending, {}
        for (method, route), cells in pending.items():
            for index, status_class in enumerate(STATUS_CLASSES):
                if cells[index]:
                    self._counter(method, route, status_class).inc(cells[index])
            _add_observations(self._histogram(method, route), cells[_FIRST_BUCKET:], cells[_SUM])
        self.in_flight.set(self.active)

    def publish_in_flight(self) -> None:
        """With each system sample: fold the recorded requests (so that a worker's figures
        reach the multiprocess sum at least once per sampling interval) and copy the requests
        in flight to their gauge."""
        self.flush()

    def _counter(self, method: str, route: str, status_class: str) -> Any:
        key = (method, route, status_class)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = self.requests.labels(*key)
        return child

    def _histogram(self, method: str, route: str) -> Any:
        key = (method, route)
        child = self._histograms.get(key)
        if child is None:
            child = self._histograms[key] = self.duration.labels(*key)
        return child

    def table(self, registry: CollectorRegistry | None = None) -> list[RouteFigures]:
        """Every route's totals and latency quantiles so far: this process's, or those
        ``registry`` holds (``Metrics.service_registry()``: every worker's, added up, in
        multiprocess mode). Folds this process's recorded requests first."""
        self.flush()
        if registry is None:
            families = [*self.requests.collect(), *self.duration.collect()]
        else:
            families = list(registry.collect())
        counts: dict[tuple[str, str], dict[str, float]] = {}
        buckets: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for family in families:
            for sample in family.samples:
                if sample.name == "http_requests_total":
                    labels = sample.labels
                    by_class = counts.setdefault((labels["method"], labels["route"]), {})
                    by_class[labels["status"]] = by_class.get(labels["status"], 0.0) + sample.value
                elif sample.name == "http_request_duration_seconds_bucket":
                    key = (sample.labels["method"], sample.labels["route"])
                    buckets.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
        rows = []
        for (method, route), by_class in sorted(counts.items(), key=lambda item: item[0][1]):
            cumulative = sorted(buckets.get((method, route), []))
            rows.append(
                RouteFigures(
                    method=method,
                    route=route,
                    requests=sum(by_class.values()),
                    errors=by_class.get("5xx", 0.0),
                    client_errors=by_class.get("4xx", 0.0),
                    p50=quantile(cumulative, 0.50),
                    p95=quantile(cumulative, 0.95),
                    p99=quantile(cumulative, 0.99),
                    buckets=tuple(cumulative),
                )
            )
        return rows


def _add_observations(child: Any, buckets: list[float], total: float) -> None:
    """Add many observations to a histogram's child at once: ``buckets[i]`` of them in bucket
    ``i`` (not cumulative), ``total`` the sum of their values. prometheus_client observes one
    value at a time only; its histogram child keeps one value per bucket (``_buckets``,
    cumulated when collected) and one for the sum (``_sum``), memory-mapped ones in
    multiprocess mode, so adding to them is what ``observe`` does, many times over. The unit
    tests compare the result with ``observe`` called once per value, which catches a change of
    those internals upstream."""
    for value, count in zip(child._buckets, buckets, strict=True):
        if count:
            value.inc(count)
    child._sum.inc(total)


@dataclass(frozen=True)
class RouteFigures:
    """One route's figures: requests and 5xx answers so far, latency quantiles in seconds
    (None before its first request) and the latency histogram's cumulative buckets
    ``(upper bound, count)`` they come from, so that a reader can take the difference of two
    readings for the quantiles of a window."""

    method: str
    route: str
    requests: float
    errors: float
    client_errors: float
    p50: float | None
    p95: float | None
    p99: float | None
    buckets: tuple[tuple[float, float], ...] = ()  # cumulative (upper bound, count)


def quantile(cumulative: list[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile from cumulative histogram buckets ``(upper bound, count)``, by linear
    interpolation inside the bucket it falls in (as PromQL's histogram_quantile does); the
    highest finite bound when it falls in the +Inf bucket."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    total = cumulative[-1][1]
    rank = q * total
    counts = [count for _, count in cumulative]
    index = min(bisect_left(counts, rank), len(cumulative) - 1)
    upper, count = cumulative[index]
    lower, below = (0.0, 0.0) if index == 0 else cumulative[index - 1]
    if upper == float("inf"):
        return lower
    if count == below:
        return upper
    return lower + (upper - lower) * (rank - below) / (count - below)
