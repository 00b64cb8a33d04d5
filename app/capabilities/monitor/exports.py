"""The monitor for the tools operators already run: the alert rules as Prometheus alerting
rules (``renum alerts export --format prometheus``) and a Grafana dashboard of the metrics
Renum serves on ``/metrics`` (``renum grafana export``).

Both are generated from what Renum really has: the rules from ``RULE_SPECS`` with the
settings' overrides applied (bound, duration, minimum of requests, severity, switched off), the
dashboard from the metric families below. ``metric_names`` finds the metrics an expression
reads, so a test can hold every one of them against a live ``/metrics``.

Renum's own evaluator judges each process's figures over its monitor's window (five minutes);
the exported rules judge the same figures over the same window as Prometheus scrapes them,
summed across the processes it scrapes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from app.capabilities.monitor.alerting import tuned_specs
from app.capabilities.monitor.executions import TENANT_SIDE
from app.core.config import AlertRuleSettings

WINDOW = "5m"
# How far back the forecasts' linear fit looks (Renum's own forecasts read the monitor's
# history, by default six hours).
FORECAST_RANGE = "6h"
METRIC = re.compile(r"\b((?:renum|http|process|python)_[a-z0-9_]+)\b")
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def _route_error_ratio(bound: float, minimum: float) -> str:
    requests = f"sum by (method, route) (increase(http_requests_total[{WINDOW}]))"
    errors = f'sum by (method, route) (increase(http_requests_total{{status="5xx"}}[{WINDOW}]))'
    return f"({errors} / {requests}) > {bound:g} and {requests} >= {minimum:g}"


def _route_latency(bound: float, minimum: float) -> str:
    p95 = (
        "histogram_quantile(0.95, sum by (method, route, le) "
        f"(rate(http_request_duration_seconds_bucket[{WINDOW}])))"
    )
    requests = f"sum by (method, route) (increase(http_requests_total[{WINDOW}]))"
    return f"{p95} > {bound:g} and {requests} >= {minimum:g}"


def _memory_high(bound: float, _minimum: float) -> str:
    return f"max by (instance) (renum_host_memory_used_ratio) > {bound / 100:g}"


def _dependency_failing(_bound: float, _minimum: float) -> str:
    return 'min by (check) (renum_dependency_up{critical="true"}) == 0'


def _provider_error_ratio(bound: float, minimum: float) -> str:
    # A tenant's own mistakes (a wrong key, a request the provider refused) are calls, not the
    # provider's failures, as in Renum's own rule (TENANT_SIDE).
    ok = "|".join(sorted({"ok", *TENANT_SIDE}))
    calls = f"sum by (provider) (increase(renum_model_calls_total[{WINDOW}]))"
    failed = f'sum by (provider) (increase(renum_model_calls_total{{outcome!~"{ok}"}}[{WINDOW}]))'
    return f"({failed} / {calls}) > {bound:g} and {calls} >= {minimum:g}"


def _disk_full(bound: float, _minimum: float) -> str:
    used = f"predict_linear(renum_disk_used_ratio[{FORECAST_RANGE}], {bound:g})"
    return f"max by (instance) ({used}) >= 1"


def _pool_exhausted(bound: float, _minimum: float) -> str:
    in_use = f"predict_linear(renum_database_connections_in_use[{FORECAST_RANGE}], {bound:g})"
    size = "sum by (instance) (renum_database_pool_size)"
    return f"sum by (instance) ({in_use}) >= {size} and {size} > 0"


EXPRESSIONS: dict[str, Callable[[float, float], str]] = {
    "route_error_ratio": _route_error_ratio,
    "route_latency_p95": _route_latency,
    "memory_high": _memory_high,
    "dependency_failing": _dependency_failing,
    "provider_error_ratio": _provider_error_ratio,
    "disk_full_forecast": _disk_full,
    "pool_exhaustion_forecast": _pool_exhausted,
}


def _duration(seconds: float) -> str:
    """Prometheus's duration for a whole number of seconds (``for``)."""
    return f"{round(seconds)}s"


def prometheus_rules(overrides: Mapping[str, AlertRuleSettings] | None = None) -> dict[str, Any]:
    """The alert rules as a Prometheus rule file (one group, ``renum``): each enabled rule
    with its bound, duration, minimum and severity as configured."""
    rules = []
    for tuned in tuned_specs(overrides):
        rule: dict[str, Any] = {
            "alert": tuned.name,
            "expr": EXPRESSIONS[tuned.name](tuned.bound, tuned.minimum),
        }
        if tuned.for_seconds > 0:
            rule["for"] = _duration(tuned.for_seconds)
        rule["labels"] = {"severity": tuned.severity.value, "service": "renum"}
        rule["annotations"] = {"summary": tuned.summary}
        rules.append(rule)
    return {"groups": [{"name": "renum", "rules": rules}]}


# -- the Grafana dashboard ------------------------------------------------------------------------

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Each row: its title and panels (title, unit, the queries with their legends).
Panel = tuple[str, str, tuple[tuple[str, str], ...]]
ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Requests",
        (
            (
                "Requests per second by status class",
                "reqps",
                (("sum by (status) (rate(http_requests_total[5m]))", "{{status}}"),),
            ),
            (
                "Share of 5xx answers by route",
                "percentunit",
                (
                    (
                        'sum by (method, route) (rate(http_requests_total{status="5xx"}[5m])) / '
                        "sum by (method, route) (rate(http_requests_total[5m]))",
                        "{{method}} {{route}}",
                    ),
                ),
            ),
            (
                "p95 latency by route",
                "s",
                (
                    (
                        "histogram_quantile(0.95, sum by (method, route, le) "
                        "(rate(http_request_duration_seconds_bucket[5m])))",
                        "{{method}} {{route}}",
                    ),
                ),
            ),
            (
                "Requests in flight",
                "short",
                (("sum(http_requests_in_flight)", "in flight"),),
            ),
        ),
    ),
    (
        "Executions and models",
        (
            (
                "Executions started and ended",
                "short",
                (
                    (
                        "sum by (strategy) (increase(renum_executions_started_total[5m]))",
                        "started {{strategy}}",
                    ),
                    (
                        "sum by (status) (increase(renum_executions_ended_total[5m]))",
                        "ended {{status}}",
                    ),
                ),
            ),
            (
                "Executions running and queued",
                "short",
                (
                    ("sum(renum_executions_running)", "running"),
                    ("sum(renum_executions_queued)", "queued"),
                ),
            ),
            (
                "p95 step duration by strategy",
                "s",
                (
                    (
                        "histogram_quantile(0.95, sum by (strategy, le) "
                        "(rate(renum_step_duration_seconds_bucket[5m])))",
                        "{{strategy}}",
                    ),
                ),
            ),
            (
                "Model calls by provider and outcome",
                "short",
                (
                    (
                        "sum by (provider, outcome) (increase(renum_model_calls_total[5m]))",
                        "{{provider}} {{outcome}}",
                    ),
                ),
            ),
            (
                "p95 model call duration by model",
                "s",
                (
                    (
                        "histogram_quantile(0.95, sum by (model, le) "
                        "(rate(renum_model_call_duration_seconds_bucket[5m])))",
                        "{{model}}",
                    ),
                ),
            ),
            (
                "Tokens per hour by model",
                "short",
                (
                    (
                        "sum by (model, direction) (increase(renum_tokens_total[1h]))",
                        "{{model}} {{direction}}",
                    ),
                ),
            ),
            (
                "Cost per hour by who paid",
                "currencyUSD",
                (("sum by (paid_by) (increase(renum_cost_usd_total[1h]))", "{{paid_by}}"),),
            ),
        ),
    ),
    (
        "Database",
        (
            (
                "Connections in use against the pool",
                "short",
                (
                    ("sum(renum_database_connections_in_use)", "in use"),
                    ("sum(renum_database_pool_size)", "pool size"),
                    ("sum(renum_database_pool_overflow)", "overflow"),
                ),
            ),
            (
                "Breaker open and refused requests",
                "short",
                (
                    ("max(renum_database_breaker_open)", "breaker open"),
                    (
                        "sum(increase(renum_database_refused_requests_total[5m]))",
                        "refused requests",
                    ),
                ),
            ),
            (
                "Slow queries",
                "short",
                (("sum(increase(renum_database_slow_queries_total[5m]))", "slow queries"),),
            ),
        ),
    ),
    (
        "Host, dependencies and security",
        (
            (
                "Host CPU and memory in use",
                "percentunit",
                (
                    ("max(renum_host_cpu_ratio)", "CPU"),
                    ("max(renum_host_memory_used_ratio)", "memory"),
                ),
            ),
            (
                "Data disk used",
                "percentunit",
                (("max(renum_disk_used_ratio)", "used"),),
            ),
            (
                "Event loop lag",
                "s",
                (("max(renum_event_loop_lag_seconds)", "lag"),),
            ),
            (
                "Dependency checks passing",
                "short",
                (("min by (check) (renum_dependency_up)", "{{check}}"),),
            ),
            (
                "Security events by kind",
                "short",
                (("sum by (kind) (increase(renum_security_events_total[5m]))", "{{kind}}"),),
            ),
        ),
    ),
)


def grafana_dashboard() -> dict[str, Any]:
    """A Grafana dashboard (JSON model, schema version 39) of Renum's metrics, with a
    Prometheus data source variable: rows of time series panels, two panels a line."""
    panels: list[dict[str, Any]] = []
    y = 0
    for row_title, row_panels in ROWS:
        panels.append(
            {
                "id": len(panels) + 1,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        for index, (title, unit, queries) in enumerate(row_panels):
            panels.append(
                {
                    "id": len(panels) + 1,
                    "type": "timeseries",
                    "title": title,
                    "datasource": DATASOURCE,
                    "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                    "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": y + 8 * (index // 2)},
                    "targets": [
                        {
                            "refId": chr(ord("A") + number),
                            "datasource": DATASOURCE,
                            "expr": expression,
                            "legendFormat": legend,
                        }
                        for number, (expression, legend) in enumerate(queries)
                    ],
                }
            )
        y += 8 * ((len(row_panels) + 1) // 2)
    return {
        "title": "Renum",
        "uid": "renum-overview",
        "tags": ["renum"],
        "timezone": "utc",
        "schemaVersion": 39,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                }
            ]
        },
        "panels": panels,
    }


def dashboard_expressions(dashboard: Mapping[str, Any]) -> list[str]:
    """Every query of a dashboard's panels."""
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
        if "expr" in target
    ]


def metric_names(expression: str) -> set[str]:
    """The metric names an expression reads (Renum's, HTTP's and the process's families)."""
    return set(METRIC.findall(QUOTED.sub('""', expression)))  # label values are not names


def served_metric_names(exposition: str) -> set[str]:
    """The metric names a Prometheus text exposition serves: its families (``# TYPE``, with
    or without samples yet) and their samples' names (a histogram's ``_bucket``, ``_sum``,
    ``_count``)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def unknown_metrics(expressions: list[str], served: set[str]) -> dict[str, set[str]]:
    """The expressions that read a metric not in ``served``, with those metrics."""
    unknown = {}
    for expression in expressions:
        missing = metric_names(expression) - served
        if missing:
            unknown[expression] = missing
    return unknown
