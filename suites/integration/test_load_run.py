"""The load harness for real: Locust runs as a subprocess against a launched backend and
reports everything; runs that cannot start say why. The longer runs (master and workers
against a deployment reached over HTTP, the baseline comparison catching a deliberately
slowed build) are drills: suites/drills/test_load_drills.py."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from load_support import loose_thresholds

from qa import launcher
from qa.load import runner

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")


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


def test_a_run_that_cannot_start_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.json"
    code = runner.main(["--compare", str(missing), "--reports", str(tmp_path)])
    assert code == 2
    assert "load test could not run: cannot read the baseline" in capsys.readouterr().err


def test_a_target_that_refuses_the_admin_says_so(
    tmp_path: Path,
    launch_backend: runner.Launch,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    deployment = launch_backend()
    monkeypatch.setenv(launcher.TARGET_EMAIL_ENV, deployment.admin_email)
    monkeypatch.setenv(launcher.TARGET_PASSWORD_ENV, "not-the-password")
    reports = ["--reports", str(tmp_path)]
    assert runner.main(["--target", deployment.base_url, "--profile", "smoke", *reports]) == 2
    assert f"login as {deployment.admin_email} failed: 401" in capsys.readouterr().err
    monkeypatch.setenv(launcher.TARGET_PASSWORD_ENV, deployment.admin_password)
    unreachable = f"http://127.0.0.1:{launcher.free_port()}"
    assert runner.main(["--target", unreachable, "--profile", "smoke", *reports]) == 2
    assert "load test could not run" in capsys.readouterr().err
