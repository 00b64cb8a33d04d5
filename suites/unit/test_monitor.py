"""The monitor's parts without a server: the bounded history and its downsampling, latency
quantiles from histogram buckets, route templates, the endpoint middleware's counts and
exclusions, the system sampler's figures, and the monitor's windows over route totals."""

from __future__ import annotations

import collections
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from app.capabilities.monitor import endpoints
from app.capabilities.monitor.endpoints import (
    BUCKETS,
    OTHER_METHOD,
    UNMATCHED,
    EndpointStats,
    quantile,
    route_template,
)
from app.capabilities.monitor.executions import ExecutionMetrics
from app.capabilities.monitor.history import History
from app.capabilities.monitor.monitor import AdvancedHealthMonitor
from app.capabilities.monitor.system import FIGURES, LoopLag, SystemSampler, data_directory
from app.core.metrics import Metrics
from app.core.middleware import HELD_OPEN, RequestContextMiddleware

# -- history ---------------------------------------------------------------------------------


def test_the_history_keeps_recent_samples_and_downsamples_older_ones() -> None:
    history = History(interval_seconds=1, keep_seconds=10, coarse_every=5, coarse_keep_seconds=20)
    for second in range(40):
        history.add(float(second), {"cpu": float(second % 7), "gone": None})
    points = history.points("cpu")
    fine, coarse = points[-10:], points[:-10]
    assert [p.at for p in fine] == [float(s) for s in range(30, 40)]  # full resolution
    assert len(coarse) == 4  # 20 s of coarse points at 5 samples each, the oldest dropped
    assert [p.at for p in coarse] == [10.0, 15.0, 20.0, 25.0]
    first = coarse[0]  # samples 10..14: values 3, 4, 5, 6, 0
    assert first.value == pytest.approx(18 / 5)
    assert first.peak == 6.0  # a spike stays visible once downsampled
    assert history.points("gone") == []
    assert history.latest() == {"cpu": 39 % 7}
    assert [p.at for p in history.points("cpu", since=35)] == [35.0, 36.0, 37.0, 38.0, 39.0]


def test_the_history_drops_values_that_are_not_numbers_and_refuses_bad_settings() -> None:
    history = History(interval_seconds=1, keep_seconds=5)
    history.add(1.0, {"x": math.nan, "y": math.inf, "z": 1.0})
    assert set(history.series) == {"z"}
    with pytest.raises(ValueError, match="interval > 0"):
        History(interval_seconds=0, keep_seconds=5)


# -- quantiles and route templates -------------------------------------------------------------


def test_quantiles_interpolate_inside_the_bucket_like_histogram_quantile() -> None:
    buckets = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (math.inf, 100.0)]
    assert quantile(buckets, 0.5) == pytest.approx(0.1)
    assert quantile(buckets, 0.7) == pytest.approx(0.1 + 0.4 * (70 - 50) / 40)
    assert quantile(buckets, 0.99) == pytest.approx(0.5 + 0.5 * (99 - 90) / 10)
    assert quantile([(0.1, 0.0), (math.inf, 0.0)], 0.5) is None
    assert quantile([(1.0, 0.0), (math.inf, 3.0)], 0.5) == 1.0  # beyond the last bound
    assert quantile([], 0.5) is None


@pytest.mark.parametrize(
    ("path", "params", "template"),
    [
        ("/api/v1/teams", {}, "/api/v1/teams"),
        ("/api/v1/teams/7f3a", {"team_id": "7f3a"}, "/api/v1/teams/{team_id}"),
        (
            "/api/v1/teams/ab/members/cd",
            {"team_id": "ab", "agent_id": "cd"},
            "/api/v1/teams/{team_id}/members/{agent_id}",
        ),
        ("/static/vendor/uplot.js", {"path": "vendor/uplot.js"}, "/static/{path}"),
    ],
)
def test_route_templates_put_the_parameters_back(
    path: str, params: dict[str, str], template: str
) -> None:
    assert route_template({"route": object(), "path": path, "path_params": params}) == template


def test_a_request_no_route_matched_counts_as_unmatched() -> None:
    assert route_template({"path": "/wp-admin/x.php"}) == UNMATCHED


# -- the request observer ------------------------------------------------------------------


def app_with_stats() -> tuple[FastAPI, EndpointStats, Metrics]:
    metrics = Metrics("0", "test")
    stats = EndpointStats(metrics)
    app = FastAPI()
    items = APIRouter(prefix="/api/v1/items")

    @items.get("/{item_id}")
    async def get_item(item_id: str) -> dict[str, str]:
        if item_id == "boom":
            raise RuntimeError("a bug")
        return {"id": item_id}

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "pass"}

    app.include_router(items)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=1024, observers=[stats])
    return app, stats, metrics


def samples(stats: EndpointStats, name: str) -> dict[tuple[str, ...], float]:
    """The metrics' samples named ``name``, once the recorded requests are folded into them."""
    stats.flush()
    found = {}
    for family in (stats.requests, stats.duration):
        for metric in family.collect():
            for sample in metric.samples:
                if sample.name == name:
                    found[tuple(sample.labels.values())] = sample.value
    return found


@pytest.mark.anyio
async def test_requests_are_counted_by_template_method_and_status_class() -> None:
    app, stats, metrics = app_with_stats()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for item in ("a", "b", "c"):
            assert (await client.get(f"/api/v1/items/{item}")).status_code == 200
        assert (await client.get("/api/v1/items/boom")).status_code == 500
        assert (await client.get("/nowhere")).status_code == 404
        assert (await client.post("/api/v1/items/a")).status_code == 405
        for _ in range(5):
            await client.get("/health/live")  # probes are left out
    # A scrape folds what the requests recorded: exact without anyone flushing first.
    scraped = {
        (tuple(sample.labels.values()), sample.value)
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
        if sample.name == "http_requests_total"
    }
    assert (("GET", "/api/v1/items/{item_id}", "2xx"), 3.0) in scraped
    requests = samples(stats, "http_requests_total")
    assert requests == {
        ("GET", "/api/v1/items/{item_id}", "2xx"): 3.0,
        ("GET", "/api/v1/items/{item_id}", "5xx"): 1.0,
        ("GET", UNMATCHED, "4xx"): 1.0,
        ("POST", "/api/v1/items/{item_id}", "4xx"): 1.0,
    }
    counts = samples(stats, "http_request_duration_seconds_count")
    assert counts[("GET", "/api/v1/items/{item_id}")] == 4.0
    assert stats.active == 0  # every request left
    stats.publish_in_flight()
    assert "http_requests_in_flight 0.0" in metrics.exposition().decode()
    (row,) = [r for r in stats.table() if r.method == "GET" and r.route.startswith("/api")]
    assert (row.requests, row.errors) == (4.0, 1.0)
    assert row.p50 is not None
    assert row.p99 is not None
    assert row.p50 <= row.p99


def test_folded_requests_read_as_if_each_had_been_observed() -> None:
    """``flush`` adds many observations to a histogram's buckets at once, through
    prometheus_client's internals: the result must be what ``observe`` makes, one by one."""
    metrics = Metrics("0", "test")
    stats = EndpointStats(metrics)
    histogram = Histogram(
        "http_request_duration_seconds",
        "reference",
        ("method", "route"),
        buckets=BUCKETS,
        registry=CollectorRegistry(),
    )
    reference = histogram.labels("GET", "/r")
    durations = [0.0, 0.001, 0.005, 0.0051, 0.01, 0.3, 0.3, 7.0, 30.0, 31.0, 1e6]
    for _ in range(2):  # folding twice adds up
        for index, seconds in enumerate(durations):
            stats.record("GET", "/r", (200, 404, 503, 99, 600)[index % 5], seconds)
            reference.observe(seconds)
        stats.flush()
    folded = {
        (sample.name, sample.labels.get("le")): sample.value
        for family in stats.duration.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }
    observed = {
        (sample.name, sample.labels.get("le")): sample.value
        for family in histogram.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }
    assert folded == pytest.approx(observed)
    assert folded[("http_request_duration_seconds_count", None)] == 2 * len(durations)
    # Status classes outside 1xx-5xx count in the nearest one, as before.
    assert samples(stats, "http_requests_total") == {
        ("GET", "/r", "1xx"): 4.0,  # 99
        ("GET", "/r", "2xx"): 6.0,
        ("GET", "/r", "4xx"): 4.0,
        ("GET", "/r", "5xx"): 8.0,  # 503 and 600
    }
    (row,) = stats.table()
    assert row.buckets[-1] == (math.inf, 2.0 * len(durations))


@pytest.mark.anyio
async def test_each_route_s_template_is_worked_out_once_and_stays_right(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A route included under two prefixes (one with a parameter), a parameter's value equal
    to a fixed segment, a converted parameter and a ``{name:path}`` one: each request counts
    under its own template, whichever order they come in and whatever the cache holds; a
    template is worked out once, but for the ``{name:path}`` one's changing depth."""
    worked_out: list[str] = []

    def counted(scope: Any) -> str:
        worked_out.append(scope["path"])
        return route_template(scope)

    monkeypatch.setattr(endpoints, "route_template", counted)
    metrics = Metrics("0", "test")
    stats = EndpointStats(metrics)
    app = FastAPI()
    parts = APIRouter()

    @parts.get("/{item_id}/parts/{part}")
    async def get_part(item_id: str, part: str) -> dict[str, str]:
        return {"id": item_id, "part": part}

    @app.get("/numbers/{number:int}")
    async def number(number: int) -> dict[str, int]:
        return {"number": number}

    @app.get("/files/{rest:path}")
    async def file(rest: str) -> dict[str, str]:
        return {"rest": rest}

    app.include_router(parts, prefix="/api/v1/items")
    app.include_router(parts, prefix="/api/v2/groups/{group}/items")
    app.add_middleware(RequestContextMiddleware, max_body_bytes=1024, observers=[stats])
    paths = {
        "/api/v1/items/a/parts/b": "/api/v1/items/{item_id}/parts/{part}",
        "/api/v1/items/parts/parts/parts": "/api/v1/items/{item_id}/parts/{part}",
        "/api/v2/groups/g1/items/a/parts/b": "/api/v2/groups/{group}/items/{item_id}/parts/{part}",
        "/numbers/007": "/numbers/{number}",
        "/files/a": "/files/{rest}",
        "/files/a/b/c.js": "/files/{rest}",
    }
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(2):
            for path in [*paths, *reversed(paths)]:
                assert (await client.get(path)).status_code == 200, path
    expected: dict[tuple[str, ...], float] = {}
    for template in paths.values():
        key = ("GET", template, "2xx")
        expected[key] = expected.get(key, 0.0) + 4.0
    assert samples(stats, "http_requests_total") == expected
    # Once per route and prefix, and the "/files/{rest}" path deeper than its template each
    # time; "/api/v1/items/parts/parts/parts" found its inclusion's template in the cache.
    assert collections.Counter(worked_out) == {
        "/api/v1/items/a/parts/b": 1,
        "/api/v2/groups/g1/items/a/parts/b": 1,
        "/numbers/007": 1,
        "/files/a": 1,
        "/files/a/b/c.js": 4,
    }


def test_the_metrics_pass_the_prometheus_parser() -> None:
    metrics = Metrics("0", "test")
    stats = EndpointStats(metrics)
    stats.record("GET", "/api/v1/x/{id}", 204, 0.02)
    body = metrics.exposition().decode()
    names = {f.name for f in text_string_to_metric_families(body)}
    assert {"http_requests", "http_request_duration_seconds", "process_cpu_seconds"} <= names
    assert 'http_requests_total{method="GET",route="/api/v1/x/{id}",status="2xx"} 1.0' in body


# -- the sampler and the monitor -------------------------------------------------------------


def test_the_data_directory_is_the_sqlite_file_s_folder(tmp_path: Path) -> None:
    assert data_directory(f"sqlite+aiosqlite:///{tmp_path}/db/renum.db") == tmp_path / "db"
    assert data_directory("postgresql+asyncpg://h/db") == Path.cwd()
    assert data_directory("sqlite+aiosqlite:///:memory:") == Path.cwd()


class Pool:
    def size(self) -> int:
        return 5

    def checkedout(self) -> int:
        return 2

    def overflow(self) -> int:
        return -3  # SQLAlchemy counts below zero until the pool is full


def test_the_sampler_reads_every_figure(tmp_path: Path) -> None:
    sampler = SystemSampler(tmp_path, pool=Pool, load=lambda: (3, 1))
    figures = sampler.sample(loop_lag_ms=1.5)
    assert set(figures) == set(FIGURES)
    assert figures["process_rss_bytes"]
    assert figures["process_rss_bytes"] > 1_000_000
    assert figures["disk_free_bytes"]
    assert figures["disk_free_bytes"] > 0
    assert 0 <= (figures["disk_used_percent"] or 0) <= 100
    assert (figures["pool_size"], figures["pool_checked_out"], figures["pool_overflow"]) == (
        5.0,
        2.0,
        0.0,
    )
    assert (figures["executions_running"], figures["executions_queued"]) == (3.0, 1.0)
    assert figures["loop_lag_ms"] == 1.5
    no_pool = SystemSampler(tmp_path / "gone", pool=object, load=lambda: (0, 0)).sample()
    assert no_pool["pool_size"] is None
    assert no_pool["disk_used_percent"] is None  # a missing folder is no figure, not an error


def test_loop_lag_is_measured_from_the_expected_wake_up() -> None:
    lag = LoopLag()
    assert lag.woke() is None
    lag.expect(-0.25)  # "should have woken a quarter second ago"
    woke = lag.woke()
    assert woke is not None
    assert woke >= 250


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_monitor_reports_rates_and_error_ratios_over_its_window(tmp_path: Path) -> None:
    metrics = Metrics("0", "test")
    stats = EndpointStats(metrics)
    clock = Clock()
    monitor = AdvancedHealthMonitor(
        metrics,
        SystemSampler(tmp_path, pool=Pool, load=lambda: (0, 0)),
        endpoints=stats,
        interval_seconds=10,
        history_seconds=3600,
        window_seconds=30,
        clock=clock,
    )
    route = "/api/v1/teams/{team_id}"
    for _ in range(100):
        stats.record("GET", route, 200, 0.01)  # before the window
    monitor.record({"host_cpu_percent": 50.0, "disk_used_percent": 40.0})
    for _step in range(3):
        clock.now += 10
        for _ in range(18):
            stats.record("GET", route, 200, 0.01)
        for _ in range(2):
            stats.record("GET", route, 503, 2.0)
        monitor.record({"host_cpu_percent": 50.0})
    (window,) = monitor.route_windows()
    assert window.window_seconds == 30
    assert (window.requests, window.errors) == (60.0, 6.0)
    assert window.rate == 2.0
    assert window.error_ratio == pytest.approx(0.1)
    snapshot: dict[str, Any] = monitor.snapshot()
    assert snapshot["routes"][0]["route"] == route
    assert snapshot["slowest"][0]["p99_seconds"] > snapshot["slowest"][0]["p50_seconds"]
    assert snapshot["system"]["host_cpu_percent"]["value"] == 50.0
    body = metrics.exposition().decode()
    assert "renum_host_cpu_ratio 0.5" in body
    assert "renum_disk_used_ratio 0.4" in body


def test_requests_held_open_are_counted_not_timed_and_odd_methods_share_one_label() -> None:
    """An event stream or a long-poll lasts as long as its client wants: counted, but its
    duration would make a healthy route look slow. A made-up method (h11 accepts any
    token) counts as OTHER, so a scan of methods cannot grow the label sets."""
    stats = EndpointStats(Metrics("0", "test"))
    held = {"path": "/api/v1/executions/1/events", "method": "GET", HELD_OPEN: True}
    for scope in (held, {"path": "/api/v1/teams", "method": "BREW"}):
        stats.request_started(scope)
        stats.request_finished(scope, 200, 3600.0)
    counts = samples(stats, "http_requests_total")
    assert counts[("GET", UNMATCHED, "2xx")] == 1
    assert counts[(OTHER_METHOD, UNMATCHED, "2xx")] == 1
    timed = samples(stats, "http_request_duration_seconds_count")
    assert (OTHER_METHOD, UNMATCHED) in timed
    assert timed.get(("GET", UNMATCHED), 0.0) == 0.0


def test_provider_failures_leave_out_the_tenant_s_own_mistakes() -> None:
    calls = ExecutionMetrics(Metrics("0", "test"))
    for outcome, count in (("ok", 6), ("auth", 5), ("bad_request", 2), ("unavailable", 3)):
        calls.model_calls.labels("openai", "gpt-4o-mini", outcome).inc(count)
    assert calls.provider_totals() == {"openai": (16.0, 3.0)}
