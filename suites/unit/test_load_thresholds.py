"""SLA thresholds (qa/load/thresholds.py) and the run summaries they read (qa/load/results.py):
pass, fail and missing metrics, per-profile overrides, malformed files, the verdict table,
and per-group percentiles from merged Locust histograms."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from qa.launcher import REPO_ROOT
from qa.load import results
from qa.load.thresholds import (
    FAIL,
    MISSING,
    PASS,
    ThresholdsError,
    evaluate,
    load_config,
    parse_config,
    passed,
    verdict_table,
)

CONFIG = {
    "groups": {"probes": ["GET /health/*"], "executions": ["* /api/v1/executions*"]},
    "sla": {
        "overall": {"max_p95_ms": 500, "max_failure_ratio": 0.01, "min_rps": 10},
        "groups": {"probes": {"max_p99_ms": 50}, "executions": {"max_p95_ms": 800}},
        "resources": {"max_rss_mb_peak": 300, "max_cpu_percent_mean": 150},
    },
    "profiles": {"smoke": {"overall": {"min_rps": 2}}},
}


def summary(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "overall": {"p95_ms": 120.0, "failure_ratio": 0.0, "rps": 25.0},
        "groups": {"probes": {"p99_ms": 9.0}, "executions": {"p95_ms": 300.0}},
        "resources": {"rss_mb_peak": 140.0, "cpu_percent_mean": 40.0},
    }
    base.update(overrides)
    return base


def statuses(checks: list[Any]) -> dict[tuple[str, str], str]:
    return {(c.threshold.scope, c.threshold.metric): c.status for c in checks}


def test_every_threshold_met_passes() -> None:
    checks = evaluate(parse_config(CONFIG, "release"), summary())
    assert set(statuses(checks).values()) == {PASS}
    assert len(checks) == 7
    assert passed(checks)
    table = verdict_table(checks)
    assert "| overall | p95_ms | <= 500.0 | 120.0 | pass |" in table
    assert "| overall | rps | >= 10.0 | 25.0 | pass |" in table
    assert "| group:probes | p99_ms | <= 50.0 | 9.0 | pass |" in table
    assert table.endswith("7 of 7 thresholds met")


def test_a_ceiling_exceeded_and_a_floor_missed_fail() -> None:
    measured = summary(overall={"p95_ms": 501.0, "failure_ratio": 0.01, "rps": 9.99})
    checks = evaluate(parse_config(CONFIG, "release"), measured)
    found = statuses(checks)
    assert found[("overall", "p95_ms")] == FAIL
    assert found[("overall", "rps")] == FAIL
    assert found[("overall", "failure_ratio")] == PASS  # the limit itself is allowed
    assert not passed(checks)
    table = verdict_table(checks)
    assert "| overall | p95_ms | <= 500.0 | 501.0 | FAIL |" in table
    assert "| overall | failure_ratio | <= 0.01 | 0.01 | pass |" in table
    assert table.endswith("5 of 7 thresholds met; 2 failed or missing")


def test_a_metric_nobody_measured_is_missing_and_fails() -> None:
    measured = summary(groups={"probes": {"p99_ms": 9.0}}, resources={"source": "metrics"})
    checks = evaluate(parse_config(CONFIG, "release"), measured)
    found = statuses(checks)
    assert found[("group:executions", "p95_ms")] == MISSING  # the group got no request
    assert found[("resources", "rss_mb_peak")] == MISSING  # /metrics could not be read
    assert found[("group:probes", "p99_ms")] == PASS
    assert not passed(checks)
    assert "| group:executions | p95_ms | <= 800.0 | - | MISSING |" in verdict_table(checks)
    partial = summary(overall={"p95_ms": 1.0, "failure_ratio": 0.0, "rps": "n/a"})
    assert statuses(evaluate(parse_config(CONFIG, "release"), partial))[("overall", "rps")] == (
        MISSING
    )


def test_a_profile_overrides_only_what_it_names() -> None:
    smoke = parse_config(CONFIG, "smoke")
    limits = {(t.scope, t.metric): t.limit for t in smoke.thresholds}
    assert limits[("overall", "rps")] == 2
    assert limits[("overall", "p95_ms")] == 500
    quiet = summary(overall={"p95_ms": 100.0, "failure_ratio": 0.0, "rps": 3.0})
    assert passed(evaluate(smoke, quiet))
    assert not passed(evaluate(parse_config(CONFIG, "release"), quiet))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sla": {"overall": {"p95_ms": 1}}}, "sla.overall.p95_ms: a threshold is named max_"),
        ({"sla": {"overall": {"max_p95_ms": "fast"}}}, "the limit must be a number"),
        ({"sla": {"overall": {"max_p95_ms": True}}}, "the limit must be a number"),
        ({"sla": {"overall": 5}}, "sla.overall must be a table"),
        ({"sla": {"groups": {"nope": {"max_p95_ms": 1}}}}, "sla.groups.nope: no such group"),
        ({"sla": {"latency": {}}}, "unknown SLA scopes ['latency']"),
        ({"groups": {"probes": "GET /health/*"}}, "[groups] maps each group name to a list"),
        ({"compare": {"p95_grow": 0.1}}, "[compare]"),
        ({"sla": {}}, "no SLA threshold defined"),
    ],
)
def test_malformed_files_say_where(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ThresholdsError) as caught:
        parse_config({**CONFIG, **change}, "release")
    assert message in str(caught.value)


def test_files_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ThresholdsError, match="cannot read"):
        load_config(tmp_path / "absent.toml", "release")
    broken = tmp_path / "broken.toml"
    broken.write_text("[sla\n")
    with pytest.raises(ThresholdsError, match="is not valid TOML"):
        load_config(broken, "release")


def test_the_committed_thresholds_cover_every_profile_and_group() -> None:
    path = REPO_ROOT / "load" / "thresholds.toml"
    data = tomllib.loads(path.read_text())
    for profile in ("smoke", "release", "soak", "spike"):
        config = load_config(path, profile)
        scopes = {t.scope for t in config.thresholds}
        assert {"overall", "resources"} <= scopes
        assert {f"group:{g}" for g in data["groups"]} <= scopes  # every group has a level
        assert config.tolerances.p95_increase == 0.15
        assert config.tolerances.rps_decrease == 0.10


# -- summaries of Locust's statistics ---------------------------------------------------------


def entry(method: str, name: str, times: dict[int, int], failures: int = 0) -> dict[str, Any]:
    count = sum(times.values())
    return {
        "method": method,
        "name": name,
        "num_requests": count,
        "num_failures": failures,
        "total_response_time": sum(ms * n for ms, n in times.items()),
        "max_response_time": max(times),
        "response_times": {str(ms): n for ms, n in times.items()},  # JSON keys are strings
        "start_time": 1000.0,
        "last_request_timestamp": 1010.0,
    }


def test_percentiles_follow_locusts_rule() -> None:
    histogram = dict.fromkeys(range(1, 101), 1)  # 1..100 ms, once each
    # counted from the slowest down: the smallest time with at most int(n * share) below it,
    # which is what Locust's own report shows for the same requests
    assert results.percentile(histogram, 100, 0.50) == 51
    assert results.percentile(histogram, 100, 0.95) == 96
    assert results.percentile(histogram, 100, 0.99) == 100
    assert results.percentile({5: 3}, 3, 0.99) == 5
    assert results.percentile({}, 0, 0.95) == 0


def test_groups_merge_their_routes_histograms() -> None:
    entries = [
        entry("GET", "/health/live", {1: 90, 2: 10}),
        entry("GET", "/health/ready", {40: 10}),
        entry("POST", "/api/v1/teams/{team_id}/executions", {100: 5}, failures=1),
        entry("GET", "/api/v1/usage", {7: 3}),
        entry("EXECUTION", "end to end (wait)", {300: 4}),
        {**entry("GET", "Aggregated", {1: 1}), "method": None},
    ]
    groups = {"probes": ["GET /health/*"], "runs": ["* /api/v1/teams/*", "EXECUTION *"]}
    found = results.summarise(entries, groups)
    assert found["duration_s"] == 10.0
    probes = found["groups"]["probes"]
    assert probes["requests"] == 110
    assert probes["p50_ms"] == 1
    assert probes["p95_ms"] == 40  # the slow route shows in the group's tail
    assert probes["rps"] == 11.0
    assert found["groups"]["runs"]["requests"] == 9
    assert found["groups"]["other"]["requests"] == 3  # an unmatched route
    overall = found["overall"]
    assert overall["requests"] == 118  # not the execution outcomes, not Locust's total
    assert overall["failures"] == 1
    assert overall["failure_ratio"] == round(1 / 118, 6)
    assert found["routes"]["POST /api/v1/teams/{team_id}/executions"]["failure_ratio"] == 0.2


def test_an_empty_run_has_no_throughput() -> None:
    found = results.summarise([], {})
    assert found["overall"]["requests"] == 0
    assert found["overall"]["rps"] == 0.0
    assert found["overall"]["p95_ms"] == 0.0
    assert results.window([]) == 1.0
    assert results.summarise([entry("GET", "/x", {1: 1})], {}, seconds=0)["overall"]["rps"] == 0
