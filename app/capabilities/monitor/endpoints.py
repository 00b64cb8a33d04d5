"""Endpoint performance: every API request counted by route template
(``/api/v1/teams/{team_id}``, never the raw path), method and status class, timed in a latency
histogram, and the requests in flight counted.

``EndpointStats`` is a request observer of the base middleware (``app.core.middleware``), which
already times every request for the access log: the monitor adds no middleware layer of its
own. Per request it does O(1) work: one dictionary lookup for the label set's children (made
once per route, method and status class) and two metric updates. Probes and the metrics route
(``/health/*``, ``/livez``, ``/readyz``, ``/metrics``) are left out, as is WebSocket traffic. A
request no route matched counts under the template ``<unmatched>``, so a scan of random paths
cannot grow the label sets. The requests in flight are a plain counter, copied to the
``http_requests_in_flight`` gauge with each system sample.

The route template is rebuilt from the path and its parameters (``route_template``): the route
object FastAPI hands over knows only its own part of the path, not the prefixes of the routers
that include it. The figures are Prometheus metrics in the app's shared registry
(``app.core.metrics``), named as Prometheus recommends: ``http_requests_total``,
``http_request_duration_seconds``, ``http_requests_in_flight``. ``EndpointStats.table`` reads
them back for the dashboard.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.types import Scope

from app.core.metrics import Metrics

UNMATCHED = "<unmatched>"
EXCLUDED_PREFIXES = ("/health/", "/livez", "/readyz", "/metrics")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def excluded(path: str) -> bool:
    return path.startswith(EXCLUDED_PREFIXES) or path == "/health"


class EndpointStats:
    """The endpoint metrics of one app."""

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
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self.active = 0  # requests in flight now

    def publish_in_flight(self) -> None:
        """Copy the requests in flight to their gauge (with each system sample)."""
        self.in_flight.set(self.active)

    def request_started(self, scope: Scope) -> None:
        if not excluded(scope["path"]):
            self.active += 1

    def request_finished(self, scope: Scope, status: int, seconds: float) -> None:
        if not excluded(scope["path"]):
            self.active -= 1
            self.record(scope["method"], route_template(scope), status, seconds)

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, STATUS_CLASSES[min(max(status // 100, 1), 5) - 1])
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(*key),
                self.duration.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def table(self) -> list[RouteFigures]:
        """Every route's totals and latency quantiles so far, in this process."""
        counts: dict[tuple[str, str], dict[str, float]] = {}
        for sample in _samples(self.requests):
            if sample.name.endswith("_total"):
                labels = sample.labels
                by_class = counts.setdefault((labels["method"], labels["route"]), {})
                by_class[labels["status"]] = sample.value
        buckets: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for sample in _samples(self.duration):
            if sample.name.endswith("_bucket"):
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
                )
            )
        return rows


def _samples(metric: Counter | Histogram) -> Iterator[Any]:
    for family in metric.collect():
        yield from family.samples


@dataclass(frozen=True)
class RouteFigures:
    """One route's figures: requests and 5xx answers so far, latency quantiles in seconds
    (None before its first request)."""

    method: str
    route: str
    requests: float
    errors: float
    client_errors: float
    p50: float | None
    p95: float | None
    p99: float | None


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


def route_template(scope: Scope) -> str:
    """The template of the route that answered (``/api/v1/teams/{team_id}``): the path with
    each path parameter's value put back as ``{name}``, so that it holds whatever prefixes
    the routers that included the route added. ``UNMATCHED`` when no route matched."""
    if scope.get("route") is None:
        return UNMATCHED
    path: str = scope["path"]
    params: dict[str, Any] = scope.get("path_params") or {}
    if not params:
        return path
    segments = path.split("/")
    for name, value in params.items():
        text = str(value)
        if "/" in text:  # a {name:path} parameter: the rest of the path
            if path.endswith("/" + text):
                kept = path[: -len(text)].split("/")
                segments = [*kept[:-1], "{" + name + "}"]
            continue
        segments = ["{" + name + "}" if segment == text else segment for segment in segments]
    return "/".join(segments)
