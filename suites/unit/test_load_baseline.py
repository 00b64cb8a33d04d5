"""Baselines (qa/load/baseline.py): saving and loading, and the comparison of a run with one:
better, within tolerance, regression (p95 +15%, p99 +25%, throughput -10%, failures +0.5 pp,
never under 20 ms of growth), rare groups judged on failures only, missing scopes, and the
table a release engineer reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qa.launcher import REPO_ROOT
from qa.load import baseline
from qa.load.baseline import BETTER, FEW, MISSING, REGRESSION, WITHIN, compare, regressed
from qa.load.thresholds import Tolerances

TOLERANCES = Tolerances()  # the defaults: the committed file states the same


def figures(p95: float = 200.0, p99: float = 400.0, rps: float = 50.0, failures: float = 0.0):
    return {
        "requests": 1000,
        "p95_ms": p95,
        "p99_ms": p99,
        "rps": rps,
        "failure_ratio": failures,
    }


def run(overall: dict[str, Any] | None = None, **groups: dict[str, Any]) -> dict[str, Any]:
    return {
        "profile": "release",
        "peak_users": 20,
        "planned_duration_s": 270,
        "backend": "launched sqlite",
        "overall": overall or figures(),
        "groups": groups,
    }


def rated(deltas: list[baseline.Delta]) -> dict[tuple[str, str], str]:
    return {(d.scope, d.metric): d.status for d in deltas}


def test_the_same_figures_are_within_tolerance() -> None:
    deltas = compare(run(), run(), TOLERANCES)
    assert set(rated(deltas).values()) == {WITHIN}
    assert not regressed(deltas)
    assert [d.change for d in deltas] == ["+0.0%", "+0.0%", "+0.0%", "+0.00 pp"]


def test_small_drifts_stay_within_their_tolerances() -> None:
    now = run(figures(p95=229.0, p99=499.0, rps=45.5, failures=0.004))
    deltas = compare(run(), now, TOLERANCES)
    assert set(rated(deltas).values()) == {WITHIN}
    assert not regressed(deltas)


def test_clear_improvements_are_better() -> None:
    now = run(figures(p95=150.0, p99=250.0, rps=60.0))
    found = rated(compare(run(figures(failures=0.02)), now, TOLERANCES))
    assert found == {
        ("overall", "p95_ms"): BETTER,
        ("overall", "p99_ms"): BETTER,
        ("overall", "rps"): BETTER,
        ("overall", "failure_ratio"): BETTER,
    }


def test_slower_p95_is_a_regression() -> None:
    deltas = compare(run(), run(figures(p95=231.0)), TOLERANCES)
    assert rated(deltas)[("overall", "p95_ms")] == REGRESSION
    assert rated(deltas)[("overall", "p99_ms")] == WITHIN
    assert regressed(deltas)
    [p95] = [d for d in deltas if d.metric == "p95_ms"]
    assert p95.change == "+15.5%"
    assert p95.allowed == "+15%"


def test_lower_throughput_and_more_failures_are_regressions() -> None:
    found = rated(compare(run(), run(figures(rps=44.9, failures=0.006)), TOLERANCES))
    assert found[("overall", "rps")] == REGRESSION
    assert found[("overall", "failure_ratio")] == REGRESSION


def test_a_few_milliseconds_on_a_fast_route_are_noise() -> None:
    base = run(probes=figures(p95=2.0, p99=3.0))
    now = run(probes=figures(p95=12.0, p99=21.0))  # +500%, but only 10-18 ms
    assert set(rated(compare(base, now, TOLERANCES)).values()) == {WITHIN}
    now = run(probes=figures(p95=30.0, p99=3.0))  # 28 ms more: real
    assert rated(compare(base, now, TOLERANCES))[("group:probes", "p95_ms")] == REGRESSION


def test_a_group_with_few_requests_is_judged_on_its_failures_only() -> None:
    rare = {**figures(rps=0.1), "requests": 25}
    base = run(dependencies=rare)
    now = run(dependencies={**rare, "p95_ms": 900.0, "rps": 0.05, "failure_ratio": 0.0})
    found = rated(compare(base, now, TOLERANCES))
    assert found[("group:dependencies", "p95_ms")] == FEW
    assert found[("group:dependencies", "p99_ms")] == FEW
    assert found[("group:dependencies", "rps")] == FEW
    assert found[("group:dependencies", "failure_ratio")] == WITHIN
    assert not regressed(compare(base, now, TOLERANCES))
    failing = run(dependencies={**rare, "failure_ratio": 0.2})
    assert regressed(compare(base, failing, TOLERANCES))


def test_each_route_group_is_compared_and_a_vanished_one_fails() -> None:
    base = run(probes=figures(), executions=figures(p95=900.0))
    now = run(executions=figures(p95=1500.0), usage=figures())
    deltas = compare(base, now, TOLERANCES)
    found = rated(deltas)
    assert found[("group:executions", "p95_ms")] == REGRESSION
    assert found[("group:probes", "requests")] == MISSING
    assert not any(scope == "group:usage" for scope, _ in found)  # new groups are not judged
    assert regressed(compare(run(probes=figures()), run(), TOLERANCES))


def test_tolerances_come_from_the_thresholds_file() -> None:
    strict = Tolerances(p95_increase=0.05, latency_floor_ms=0)
    assert rated(compare(run(), run(figures(p95=215.0)), strict))[("overall", "p95_ms")] == (
        REGRESSION
    )


def test_the_comparison_table() -> None:
    deltas = compare(run(), run(figures(p95=300.0, rps=0.0)), TOLERANCES)
    table = baseline.comparison_table(deltas, "load/baselines/release.json")
    assert table.startswith("Compared with load/baselines/release.json:")
    assert "| overall | p95_ms | 200 | 300 | +50.0% | +15% | REGRESSION |" in table
    assert "| overall | rps | 50 | 0 | -100.0% | -10% | REGRESSION |" in table
    assert table.endswith("2 regression(s)")
    calm = baseline.comparison_table(compare(run(), run(), TOLERANCES), "b.json")
    assert calm.endswith("no regression beyond the tolerances")
    zero = baseline.Delta("overall", "rps", 0.0, 3.0, "-10%", BETTER)
    assert zero.change == "new"
    assert baseline.Delta("overall", "rps", 0.0, 0.0, "-10%", WITHIN).change == "+0%"
    assert baseline.Delta("x", "requests", 5, None, "-", MISSING).change == "-"


def test_notes_say_when_runs_are_not_comparable() -> None:
    assert baseline.notes(run(), run()) == []
    other = {**run(), "peak_users": 40, "backend": "remote"}
    assert baseline.notes(run(), other) == [
        "peak_users differs: baseline 20, this run 40",
        "backend differs: baseline 'launched sqlite', this run 'remote'",
    ]


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = baseline.save(run(), tmp_path / "nested" / "release.json")
    loaded = baseline.load(path)
    assert loaded["format"] == baseline.FORMAT
    assert loaded["overall"] == figures()


def test_unreadable_baselines_say_why(tmp_path: Path) -> None:
    with pytest.raises(baseline.BaselineError, match="cannot read the baseline"):
        baseline.load(tmp_path / "absent.json")
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(baseline.BaselineError, match="is not JSON"):
        baseline.load(garbage)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"overall": {}}))
    with pytest.raises(baseline.BaselineError, match="is not a load-test baseline"):
        baseline.load(other)


def test_the_committed_release_baseline_is_readable() -> None:
    committed = baseline.load(REPO_ROOT / "load" / "baselines" / "release.json")
    assert committed["profile"] == "release"
    assert committed["overall"]["requests"] > 0
    assert committed["resources"]["samples"] > 0
    assert not regressed(compare(committed, committed, TOLERANCES))
