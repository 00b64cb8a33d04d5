"""Load drills: the harness's longer runs, each a minute or so of Locust against real
backends, in the drills session (CI runs it after nox):

- a short smoke run against a launched backend that reports everything (the load_smoke
  session of the default run makes the same run, without looking into its reports);
- master and two workers against a "deployment" reached only over HTTP, its CPU and memory
  read from its /metrics, failing the one service level it cannot meet;
- the same short release-shaped run twice, as built (saved as the baseline) and with 0.4 s
  added to starting an execution: the comparison must call it a regression although every
  service level still passes.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest

from qa import launcher
from qa.load import runner
from qa.load.baseline import REGRESSION
from qa.load.slowdown import ROUTE_ENV, SECONDS_ENV, SlowedBackend

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
from load_support import loose_thresholds

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")


def test_workers_and_a_target_reached_over_http(
    tmp_path: Path, launch_backend: runner.Launch, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = launch_backend()
    monkeypatch.setenv(launcher.TARGET_EMAIL_ENV, deployment.admin_email)
    monkeypatch.setenv(launcher.TARGET_PASSWORD_ENV, deployment.admin_password)
    monkeypatch.delenv("RENUM_LOAD_MODEL_BASE_URL", raising=False)
    impossible = ["[sla.groups.probes]", "min_rps = 100000"]
    options = runner.Options(
        profile="spike",
        target=deployment.base_url,
        users=15,
        run_time=20,
        workers=2,
        thresholds=loose_thresholds(tmp_path, *impossible),
        reports=tmp_path / "reports",
        save_baseline=tmp_path / "never.json",
    )
    outcome = runner.run(options)
    failed = [c for c in outcome.checks if c.status != "pass"]
    assert [(c.threshold.scope, c.threshold.metric) for c in failed] == [("group:probes", "rps")]
    assert not outcome.ok
    assert outcome.saved is None  # a run that failed its service levels is no baseline
    assert not (tmp_path / "never.json").exists()
    summary = outcome.summary
    assert summary["backend"] == "remote"
    assert summary["workers"] == 2
    assert summary["peak_users"] == 15
    # the deployment's CPU and memory come from its /metrics
    assert summary["resources"]["source"] == "metrics"
    assert summary["resources"]["samples"] >= 5
    assert summary["resources"]["rss_mb_peak"] > 20
    # the workers' users ran every scenario (they got the accounts from the master)
    assert summary["groups"]["executions"]["requests"] > 10
    assert summary["groups"]["outcomes"]["failures"] == 0


def test_the_release_comparison_catches_a_deliberate_slowdown(tmp_path: Path) -> None:
    """The same short release-shaped run twice: once as built, recorded as the baseline, once
    with 0.4 s added to starting an execution. The comparison must call it a regression."""
    thresholds = loose_thresholds(tmp_path)
    base = tmp_path / "baseline.json"

    def options(name: str, **changes: object) -> runner.Options:
        fields = {"profile": "release", "users": 6, "run_time": 24, "thresholds": thresholds}
        return runner.Options(**fields, reports=tmp_path / name, **changes)  # type: ignore[arg-type]

    before = runner.run(options("before", save_baseline=base))
    assert before.ok, before.report
    assert before.saved == base
    slow = {ROUTE_ENV: r"POST /api/v1/teams/[^/]+/executions", SECONDS_ENV: "0.4"}
    after = runner.run(options("after", compare=base, backend_env=slow), launch=SlowedBackend.start)
    assert not after.ok
    regressions = {(d.scope, d.metric) for d in after.deltas if d.status == REGRESSION}
    assert ("group:executions", "p95_ms") in regressions, after.report
    assert ("group:outcomes", "p95_ms") in regressions, after.report
    slowed = after.summary["routes"]["POST /api/v1/teams/{team_id}/executions"]
    assert slowed["p50_ms"] >= 400
    assert all(c.status == "pass" for c in after.checks)  # the SLA alone would not notice
    comparison = (tmp_path / "after" / "comparison.md").read_text()
    assert "| group:executions | p95_ms |" in comparison
    assert "REGRESSION" in comparison
    assert after.report.rstrip().endswith("Verdict: FAIL")


def test_a_short_run_reports_everything_and_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = tmp_path / "reports"
    thresholds = loose_thresholds(tmp_path)
    argv = ["--profile", "smoke", "--run-time", "20s", "--reports", str(reports)]
    argv += ["--thresholds", str(thresholds), "--save-baseline", str(tmp_path / "smoke.json")]
    code = runner.main(argv)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "Verdict: PASS" in printed
    assert "| overall | failure_ratio | <= 0.05 |" in printed
    for name in ("locust.html", "locust_stats.csv", "locust_stats_history.csv", "locust.json"):
        assert (reports / name).stat().st_size > 0, name
    summary = json.loads((reports / "summary.json").read_text())
    assert summary["profile"] == "smoke"
    assert summary["backend"] == "launched sqlite"
    assert summary["planned_duration_s"] == 20
    # every kind of user ran: the API user, the operator, the anonymous probes
    assert {"auth", "executions", "outcomes", "probes", "metrics", "dependencies"} <= set(
        summary["groups"]
    )
    assert summary["groups"]["outcomes"]["failures"] == 0  # every execution completed
    assert not any(UUID.search(route) for route in summary["routes"])  # templates, not ids
    assert "GET /api/v1/executions/{execution_id}" in summary["routes"]
    assert summary["resources"]["source"] == "psutil"
    assert summary["resources"]["samples"] >= 10
    assert summary["resources"]["rss_mb_peak"] > 20
    series = list(csv.DictReader((reports / "resources.csv").open()))
    assert len(series) == summary["resources"]["samples"]
    assert (reports / "verdict.md").read_text().rstrip().endswith("Verdict: PASS")
    # a group of one route has Locust's own percentiles for that route
    with (reports / "locust_stats.csv").open() as stats:
        [metrics_row] = [r for r in csv.DictReader(stats) if r["Name"] == "/metrics"]
    assert summary["groups"]["metrics"]["p95_ms"] == float(metrics_row["95%"])
    assert summary["groups"]["metrics"]["requests"] == int(metrics_row["Request Count"])
    saved = json.loads((tmp_path / "smoke.json").read_text())
    assert saved["overall"] == summary["overall"]
