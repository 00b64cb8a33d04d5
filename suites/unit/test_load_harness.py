"""The load harness's plumbing without Locust: the command line, the Locust commands for
standalone and master/worker runs, the report, resource sampling and the test-only slowdown."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from qa.load import resources, results, runner, slowdown
from qa.load.thresholds import evaluate, parse_config
from qa.polling import wait_until


def test_defaults_are_the_release_profile_on_the_embedded_default() -> None:
    options = runner.parse_args([])
    assert options.profile == "release"
    assert options.target is None
    assert (options.users, options.run_time, options.workers) == (None, None, 0)
    assert options.compare is None
    assert options.save_baseline is None
    assert options.thresholds == runner.THRESHOLDS
    assert options.reports == runner.REPORTS
    assert options.db == "sqlite"


def test_every_override(tmp_path: Path) -> None:
    argv = ["--profile", "spike", "--target", "https://staging.example.com", "--users", "50"]
    argv += ["--run-time", "1h30m", "--workers", "4", "--compare", "release", "--save-baseline"]
    argv += ["--reports", str(tmp_path), "--db", "postgresql"]
    options = runner.parse_args(argv)
    assert options.profile == "spike"
    assert options.target == "https://staging.example.com"
    assert (options.users, options.run_time, options.workers) == (50, 5400, 4)
    assert options.compare == runner.BASELINES / "release.json"  # a profile's committed one
    assert options.save_baseline == runner.BASELINES / "spike.json"
    assert options.reports == tmp_path
    assert options.db == "postgresql"
    chosen = runner.parse_args(["--compare", str(tmp_path / "b.json"), "--save-baseline", "x.json"])
    assert chosen.compare == tmp_path / "b.json"
    assert chosen.save_baseline == Path("x.json")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--profile", "stress"], "invalid choice: 'stress'"),
        (["--users", "0"], "--users must be at least 1"),
        (["--workers", "-1"], "--workers and --remote-workers must be 0 or more"),
        (["--remote-workers", "-2"], "--workers and --remote-workers must be 0 or more"),
        (["--run-time", "soon"], "not a time span"),
        (["--run-time", "0s"], "--run-time must be positive"),
    ],
)
def test_bad_arguments_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        runner.parse_args(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_standalone_locust_runs_headless_with_every_report(tmp_path: Path) -> None:
    main, workers = runner.locust_commands(runner.Options(profile="smoke"), "http://h", tmp_path, 1)
    assert workers == []
    assert main[1:4] == ["-m", "locust", "-f"]
    locustfile, shape = main[4].split(",")
    assert locustfile.endswith("load/locustfile.py")
    assert shape.endswith("load/profiles/smoke.py")
    for flag in ("--headless", "--csv", "--html", "--json-file", "--csv-full-history"):
        assert flag in main
    assert main[main.index("--host") + 1] == "http://h"
    assert "--master" not in main


def test_a_profile_with_users_of_its_own_runs_only_those(tmp_path: Path) -> None:
    options = runner.Options(profile="throughput", workers=2)
    main, workers = runner.locust_commands(options, "http://h", tmp_path, 5557)
    for command in (main, *workers):
        assert command[5] == "ThroughputUser"  # right after the files: no other user runs
    smoke, _ = runner.locust_commands(runner.Options(profile="smoke"), "http://h", tmp_path, 1)
    assert smoke[5] == "--headless"  # every user of the locustfile


def test_a_profile_brings_its_own_thresholds_unless_others_are_given(tmp_path: Path) -> None:
    throughput = runner.get_profile("throughput")
    assert runner.thresholds_of(runner.Options(), throughput) == runner.LOAD_DIR / "throughput.toml"
    mine = tmp_path / "mine.toml"
    assert runner.thresholds_of(runner.Options(thresholds=mine), throughput) == mine
    assert (
        runner.thresholds_of(runner.Options(), runner.get_profile("release")) == runner.THRESHOLDS
    )
    config = runner.load_config(runner.LOAD_DIR / "throughput.toml", "throughput")
    assert {t.scope for t in config.thresholds} == {"group:outcomes", "group:executions"}


def test_workers_use_locusts_master_and_worker_mode(tmp_path: Path) -> None:
    options = runner.Options(profile="release", workers=3)
    main, workers = runner.locust_commands(options, "http://h", tmp_path, 5557)
    assert main[main.index("--expect-workers") + 1] == "3"
    assert main[main.index("--master-bind-port") + 1] == "5557"
    assert len(workers) == 3
    assert all("--worker" in w and w[w.index("--master-port") + 1] == "5557" for w in workers)
    assert all("--headless" not in w for w in workers)


def test_locust_is_not_measured_by_coverage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COVERAGE_PROCESS_CONFIG", "{}")
    monkeypatch.setenv("COVERAGE_FILE", "x")
    env = runner.locust_env({"RENUM_LOAD_USERS": "3"})
    assert not any(name.startswith("COVERAGE_") for name in env)
    assert env["RENUM_LOAD_USERS"] == "3"
    assert env["PATH"] == os.environ["PATH"]


def summary() -> dict[str, Any]:
    figures = {"requests": 10, "rps": 2.0, "failure_ratio": 0.0, "p50_ms": 5.0}
    figures |= {"p95_ms": 9.0, "p99_ms": 12.0}
    return {
        "profile": "smoke",
        "peak_users": 6,
        "duration_s": 45.0,
        "backend": "launched sqlite",
        "overall": figures,
        "groups": {"probes": figures},
        "resources": {"source": "psutil", "samples": 3, "cpu_percent_mean": 12.0}
        | {"cpu_percent_peak": 30.0, "rss_mb_mean": 120.0, "rss_mb_peak": 130.0},
    }


def test_the_report_leads_with_the_figures_and_ends_with_the_verdict() -> None:
    config = parse_config({"sla": {"overall": {"max_p95_ms": 10}}}, "smoke")
    checks = evaluate(config, summary())
    report = runner.render(summary(), checks, None)
    assert report.splitlines()[0] == (
        "# Load test: profile smoke, peak 6 users, 45 s against launched sqlite"
    )
    assert "10 requests, 2.0/s, failure ratio 0.0000; p50 5 ms, p95 9 ms, p99 12 ms" in report
    assert "backend CPU mean 12% (peak 30%), RSS peak 130 MB (psutil, 3 samples)" in report
    assert "| probes | 10 | 2.00 | 0.00% | 5 | 9 | 12 |" in report
    assert report.endswith("Verdict: PASS")
    assert runner.render(summary(), checks, "| x | REGRESSION |").endswith("Verdict: FAIL")
    assert runner.render(summary(), checks, "| x | MISSING |").endswith("Verdict: FAIL")
    failing = evaluate(parse_config({"sla": {"overall": {"max_p95_ms": 1}}}, "smoke"), summary())
    assert runner.render(summary(), failing, None).endswith("Verdict: FAIL")
    quiet = summary() | {"resources": {"source": "metrics", "samples": 0}}
    assert "backend CPU" not in runner.render(quiet, checks, None)


# -- resources ---------------------------------------------------------------------------------


def test_a_local_process_is_sampled_with_psutil(tmp_path: Path) -> None:
    sampler = resources.ProcessSampler(os.getpid(), interval=0.05).start()

    def sampled_three() -> bool:
        sum(i * i for i in range(20_000))  # some CPU to measure
        return len(sampler.samples) >= 3

    # The interval leaves room for the sampler's thread on a busy machine.
    wait_until(sampled_three, what="three samples", interval=0.01)
    samples = sampler.stop()
    assert len(samples) >= 2
    assert all(s.rss_mb > 10 for s in samples)
    assert max(s.cpu_percent for s in samples) > 0
    figures = resources.summarise(samples, sampler.source)
    assert figures["source"] == "psutil"
    assert figures["samples"] == len(samples)
    assert figures["rss_mb_peak"] == max(s.rss_mb for s in samples)
    path = resources.write_series(samples, tmp_path / "resources.csv")
    assert path.read_text().splitlines()[0] == "seconds,cpu_percent,rss_mb"


def test_an_empty_series_has_no_figures() -> None:
    assert resources.summarise([], "metrics") == {"source": "metrics", "samples": 0}


def test_an_unreachable_deployment_gives_errors_not_samples() -> None:
    sampler = resources.MetricsSampler("http://127.0.0.1:9", interval=0.05).start()
    wait_until(lambda: sampler.errors, what="a failed scrape")
    assert sampler.stop() == []
    assert sampler.errors
    assert "ConnectError" in sampler.errors[0]


def test_a_deployment_without_process_metrics_gives_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="# TYPE other gauge\nother 1.0\n")

    sampler = resources.MetricsSampler("http://deploy", transport=httpx.MockTransport(handler))
    sampler._prime()
    assert "no process_cpu_seconds_total" in sampler.errors[0]
    with pytest.raises(ValueError, match="no process_cpu_seconds_total"):
        sampler._read()


def test_the_deployments_cpu_share_comes_from_the_counter() -> None:
    readings = iter([10.0, 10.5])

    def handler(request: httpx.Request) -> httpx.Response:
        cpu = next(readings)
        body = f"process_cpu_seconds_total {cpu}\nprocess_resident_memory_bytes {200 * 2**20}\n"
        return httpx.Response(200, text=body)

    sampler = resources.MetricsSampler("http://deploy", transport=httpx.MockTransport(handler))
    sampler._prime()
    sampler._last = (100.0, 10.0)  # scraped at 100 s on the sampler's clock ...
    clock = SimpleNamespace(monotonic=lambda: 101.0)  # ... and read again a second later
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(resources, "time", clock)
        cpu, rss = sampler._read()  # type: ignore[misc]
    assert cpu == pytest.approx(50)  # half a CPU second in one second
    assert rss == 200.0


# -- the slowdown ------------------------------------------------------------------------------


def test_the_slowdown_delays_only_its_route(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    pauses: list[float] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(f"{scope.get('method', '-')} {scope.get('path', '-')}")

    async def recorded_sleep(delay: float) -> None:
        pauses.append(delay)

    monkeypatch.setattr(slowdown, "asyncio", SimpleNamespace(sleep=recorded_sleep))
    slow = slowdown.SlowRoute(app, "post", r"/api/v1/teams/[^/]+/executions", 0.2)

    def paused(scope: dict[str, Any]) -> list[float]:
        """The pauses taken before this request was passed on."""
        pauses.clear()
        asyncio.run(slow(scope, None, None))
        return list(pauses)

    assert paused({"type": "http", "method": "POST", "path": "/api/v1/teams/t1/executions"}) == [
        0.2
    ]
    assert paused({"type": "http", "method": "GET", "path": "/api/v1/teams/t1/executions"}) == []
    assert paused({"type": "http", "method": "POST", "path": "/api/v1/teams/t1/executionsX"}) == []
    assert paused({"type": "lifespan"}) == []
    assert len(seen) == 4  # everything is passed on


def test_the_slowdown_needs_its_route(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(slowdown.ROUTE_ENV, raising=False)
    with pytest.raises(RuntimeError, match="RENUM_QA_SLOW_ROUTE must be 'METHOD PATH-REGEX'"):
        slowdown.create_app()


def test_remote_workers_make_the_master_listen_on_every_interface(tmp_path: Path) -> None:
    options = runner.parse_args(
        ["--workers", "1", "--remote-workers", "3", "--master-port", "6000"]
    )
    assert (options.workers, options.remote_workers, options.master_port) == (1, 3, 6000)
    main, workers = runner.locust_commands(options, "https://staging", tmp_path, 6000)
    assert main[main.index("--expect-workers") + 1] == "4"
    assert main[main.index("--master-bind-host") + 1] == "0.0.0.0"  # noqa: S104
    assert main[main.index("--expect-workers-max-wait") + 1] == "600"
    assert len(workers) == 1  # the others are started on their own machines
    assert runner.parse_args(["--workers", "2"]).master_port is None  # a free local port


def test_the_run_says_how_locust_runs() -> None:
    assert runner.locust_mode(runner.Options()) == "Locust standalone"
    assert runner.locust_mode(runner.Options(workers=2, remote_workers=1)) == (
        "Locust master with 2 local and 1 remote workers"
    )


def test_the_report_lists_the_most_frequent_failures(tmp_path: Path) -> None:
    path = tmp_path / "locust_failures.csv"
    path.write_text(
        "Method,Name,Error,Occurrences\n"
        "GET,/health/dependencies,HTTPError('404 Client Error'),3\n"
        "EXECUTION,end to end (wait),RuntimeError('execution failed | budget'),7\n"
    )
    rows = results.load_failures(path)
    assert [r["Occurrences"] for r in rows] == ["7", "3"]
    assert results.load_failures(tmp_path / "absent.csv") == []
    checks = evaluate(parse_config({"sla": {"overall": {"max_p95_ms": 10}}}, "smoke"), summary())
    report = runner.render(summary(), checks, None, rows)
    assert "## Most frequent failures" in report
    row = "| EXECUTION end to end (wait) | RuntimeError('execution failed / budget') | 7 |"
    assert row in report
    assert "## Most frequent failures" not in runner.render(summary(), checks, None, [])
