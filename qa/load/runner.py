"""Run a Locust load test against the backend and give a verdict.

``python -m qa.load [--profile release] [--target URL] [--users N] [--run-time 5m]
[--workers N] [--compare BASELINE] [--save-baseline [PATH]]`` (what ``nox -s load`` runs):

1. start the backend with the launcher on the embedded default (or use ``--target URL`` with
   the admin's credentials from ``RENUM_QA_ADMIN_EMAIL`` / ``RENUM_QA_ADMIN_PASSWORD``), the
   fake OpenAI-compatible server on loopback, and throw-away accounts for the virtual users;
2. run Locust headless as subprocesses (never imported here: it needs gevent), standalone or
   as a master with ``--workers`` local worker processes, with the profile's load shape;
3. sample the backend's CPU and memory meanwhile (psutil, or ``/metrics`` of a deployment);
4. summarise Locust's statistics per route group, check ``load/thresholds.toml``, compare
   with a baseline, write everything under ``reports/load/`` and print the verdict.

Exit code 0: every threshold met and no regression; 1: a threshold failed or went missing, or
the comparison found a regression; 2: the test could not run (the message says why).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from qa import launcher
from qa.client import API, ApiClient
from qa.factories import DEFAULT_PASSWORD, expect, unique_email, unique_name
from qa.fake_openai import shared_fake
from qa.load import baseline as baselines
from qa.load import resources, results
from qa.load.profiles import PROFILES, Profile, get_profile, parse_timespan
from qa.load.thresholds import Check, evaluate, load_config, passed, verdict_table

ROOT = launcher.REPO_ROOT
LOAD_DIR = ROOT / "load"
THRESHOLDS = LOAD_DIR / "thresholds.toml"
BASELINES = LOAD_DIR / "baselines"
REPORTS = ROOT / "reports" / "load"
USERS_PER_ACCOUNT = 4
SHUTDOWN_GRACE_SECONDS = 60.0
WORKERS_MAX_WAIT_SECONDS = 600.0
# The launched backend measures throughput, not the per-account limit the integration tests
# cover; access tokens outlive a soak run.
LAUNCH_ENV = {
    "RENUM_EXECUTIONS__MAX_CONCURRENT_PER_ACCOUNT": "50",
    "RENUM_AUTH__ACCESS_TOKEN_MINUTES": "240",
    "RENUM_LOG_LEVEL": "WARNING",
    # The default cost of password hashes (the launcher makes them cheap for the suites):
    # logins under load cost what they cost in production.
    **launcher.default_hashing_env(),
}
Launch = Callable[..., launcher.LaunchedBackend]


class LoadError(RuntimeError):
    """The load test could not run; the message says why."""


@dataclass
class Options:
    profile: str = "release"
    target: str | None = None
    users: int | None = None
    run_time: int | None = None
    workers: int = 0
    remote_workers: int = 0
    master_port: int | None = None
    compare: Path | None = None
    save_baseline: Path | None = None
    thresholds: Path = THRESHOLDS
    reports: Path = REPORTS
    db: str = "sqlite"
    backend_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    summary: dict[str, Any]
    checks: list[Check]
    deltas: list[baselines.Delta]
    samples: list[resources.Sample]
    report: str
    saved: Path | None = None

    @property
    def ok(self) -> bool:
        return passed(self.checks) and not baselines.regressed(self.deltas)


# -- command line -------------------------------------------------------------------------------


def baseline_path(value: str) -> Path:
    """A baseline file, or a profile's name for its committed baseline (``--compare release``)."""
    path = Path(value)
    if not path.exists() and value in PROFILES:
        return BASELINES / f"{value}.json"
    return path


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m qa.load",
        description="Locust load test of the Renum backend with SLA thresholds and baselines.",
    )
    parser.add_argument("--profile", default="release", choices=sorted(PROFILES))
    parser.add_argument("--target", metavar="URL", help="test a deployment instead")
    parser.add_argument("--users", type=int, help="peak users (the profile is scaled)")
    parser.add_argument("--run-time", metavar="SPAN", help="total duration, e.g. 90s or 5m")
    parser.add_argument("--workers", type=int, default=0, help="Locust worker processes")
    parser.add_argument(
        "--remote-workers",
        type=int,
        default=0,
        metavar="N",
        help="also wait for N workers from other machines (the master listens on all interfaces)",
    )
    parser.add_argument("--master-port", type=int, default=5557, help="with --remote-workers")
    parser.add_argument("--compare", metavar="BASELINE", help="a baseline file or profile name")
    parser.add_argument(
        "--save-baseline",
        nargs="?",
        const="",
        metavar="PATH",
        help="record this run as a baseline (default load/baselines/<profile>.json)",
    )
    parser.add_argument("--thresholds", default=str(THRESHOLDS), metavar="TOML")
    parser.add_argument("--reports", default=str(REPORTS), metavar="DIR")
    parser.add_argument("--db", default="sqlite", choices=launcher.FLAVOURS)
    args = parser.parse_args(argv)
    if args.users is not None and args.users < 1:
        parser.error("--users must be at least 1")
    if args.workers < 0 or args.remote_workers < 0:
        parser.error("--workers and --remote-workers must be 0 or more")
    try:
        run_time = parse_timespan(args.run_time) if args.run_time else None
    except ValueError as exc:
        parser.error(str(exc))
    if run_time == 0:
        parser.error("--run-time must be positive")
    save = None
    if args.save_baseline is not None:
        save = Path(args.save_baseline or BASELINES / f"{args.profile}.json")
    return Options(
        profile=args.profile,
        target=args.target,
        users=args.users,
        run_time=run_time,
        workers=args.workers,
        remote_workers=args.remote_workers,
        master_port=args.master_port if args.remote_workers else None,
        compare=baseline_path(args.compare) if args.compare else None,
        save_baseline=save,
        thresholds=Path(args.thresholds),
        reports=Path(args.reports),
        db=args.db,
    )


# -- the pieces -----------------------------------------------------------------------------------


def make_accounts(admin: ApiClient, count: int) -> list[dict[str, str]]:
    """Throw-away accounts; the virtual users log in as their owners."""
    made = []
    for _ in range(count):
        email = unique_email("load")
        body = {
            "name": unique_name("Load"),
            "owner_email": email,
            "owner_password": DEFAULT_PASSWORD,
        }
        expect(admin.post(f"{API}/accounts", json=body), 201)
        made.append({"email": email, "password": DEFAULT_PASSWORD})
    return made


def thresholds_of(options: Options, profile: Profile) -> Path:
    """The thresholds file given with ``--thresholds``, else the profile's own, else the
    default one."""
    if options.thresholds != THRESHOLDS or profile.thresholds is None:
        return options.thresholds
    return LOAD_DIR / profile.thresholds


def locust_mode(options: Options) -> str:
    if not options.workers and not options.remote_workers:
        return "Locust standalone"
    return f"Locust master with {options.workers} local and {options.remote_workers} remote workers"


def locust_env(extra: dict[str, str]) -> dict[str, str]:
    """Locust's environment: not measured by coverage (a traced load generator is a slow one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    env.update(extra)
    return env


def locust_commands(
    options: Options, host: str, reports: Path, master_port: int
) -> tuple[list[str], list[list[str]]]:
    """The command of the master (or the only process) and of each worker."""
    files = f"{LOAD_DIR / 'locustfile.py'},{LOAD_DIR / 'profiles' / f'{options.profile}.py'}"
    users = get_profile(options.profile).user_classes  # none named: every user of the files
    base = [sys.executable, "-m", "locust", "-f", files, *users]
    main = [
        *base,
        "--headless",
        "--host",
        host,
        "--csv",
        str(reports / "locust"),
        "--csv-full-history",
        "--html",
        str(reports / "locust.html"),
        "--json-file",
        str(reports / "locust"),
        "--only-summary",
        "--exit-code-on-error",
        "0",
        "--stop-timeout",
        "15",
        "--loglevel",
        "WARNING",
    ]
    if not options.workers and not options.remote_workers:
        return main, []
    main += [
        "--master",
        "--expect-workers",
        str(options.workers + options.remote_workers),
        "--master-bind-host",
        "0.0.0.0" if options.remote_workers else "127.0.0.1",  # noqa: S104 - remote workers
        "--master-bind-port",
        str(master_port),
        "--expect-workers-max-wait",
        str(int(WORKERS_MAX_WAIT_SECONDS)),
    ]
    worker = [*base, "--worker", "--master-host", "127.0.0.1", "--master-port", str(master_port)]
    return main, [list(worker) for _ in range(options.workers)]


@contextlib.contextmanager
def started(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_locust(
    options: Options, host: str, env: dict[str, str], reports: Path, seconds: float
) -> None:
    """Run Locust to the end of its profile; raise LoadError when it fails to."""
    log = reports / "locust.log"
    port = options.master_port or launcher.free_port()
    main, workers = locust_commands(options, host, reports, port)
    if options.remote_workers:
        print(
            f"waiting for {options.remote_workers} remote worker(s): on each machine run\n"
            f"  locust -f load/locustfile.py --worker --master-host THIS-HOST --master-port {port}",
            flush=True,
        )
    with contextlib.ExitStack() as stack:
        master = stack.enter_context(started(main, env, log))
        for command in workers:
            stack.enter_context(started(command, env, log))
        limit = seconds + SHUTDOWN_GRACE_SECONDS
        if options.remote_workers:
            limit += WORKERS_MAX_WAIT_SECONDS
        try:
            code = master.wait(limit)
        except subprocess.TimeoutExpired:
            raise LoadError(f"Locust did not finish within {limit:.0f}s; see {log}") from None
    if code != 0 or not (reports / "locust.json").exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise LoadError(f"Locust exited with code {code}; {log}:\n{tail}")


def git_commit() -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    done = subprocess.run(
        [git, "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or None


def write_reports(outcome: Outcome, reports: Path, baseline_name: str | None) -> None:
    (reports / "summary.json").write_text(json.dumps(outcome.summary, indent=2) + "\n")
    resources.write_series(outcome.samples, reports / "resources.csv")
    (reports / "verdict.md").write_text(outcome.report + "\n")
    if baseline_name is not None:
        table = baselines.comparison_table(outcome.deltas, baseline_name)
        (reports / "comparison.md").write_text(table + "\n")


def render(
    summary: dict[str, Any],
    checks: list[Check],
    comparison: str | None,
    failures: list[dict[str, str]] | None = None,
) -> str:
    overall = summary["overall"]
    usage = summary["resources"]
    lines = [
        f"# Load test: profile {summary['profile']}, peak {summary['peak_users']} users, "
        f"{summary['duration_s']:.0f} s against {summary['backend']}",
        "",
        f"{overall['requests']} requests, {overall['rps']:.1f}/s, failure ratio "
        f"{overall['failure_ratio']:.4f}; p50 {overall['p50_ms']:.0f} ms, p95 "
        f"{overall['p95_ms']:.0f} ms, p99 {overall['p99_ms']:.0f} ms",
    ]
    if usage.get("samples"):
        lines.append(
            f"backend CPU mean {usage['cpu_percent_mean']:.0f}% (peak "
            f"{usage['cpu_percent_peak']:.0f}%), RSS peak {usage['rss_mb_peak']:.0f} MB "
            f"({usage['source']}, {usage['samples']} samples)"
        )
    lines += ["", "| group | requests | rps | failures | p50 ms | p95 ms | p99 ms |"]
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for name, g in summary["groups"].items():
        lines.append(
            f"| {name} | {g['requests']} | {g['rps']:.2f} | {g['failure_ratio']:.2%} | "
            f"{g['p50_ms']:.0f} | {g['p95_ms']:.0f} | {g['p99_ms']:.0f} |"
        )
    if failures:
        lines += ["", "## Most frequent failures", "", "| request | error | times |"]
        lines.append("| --- | --- | --- |")
        for row in failures:
            error = row.get("Error", "").replace("|", "/")[:160]
            lines.append(
                f"| {row.get('Method')} {row.get('Name')} | {error} | {row.get('Occurrences')} |"
            )
    lines += ["", "## Thresholds", "", verdict_table(checks)]
    if comparison is not None:
        lines += ["", "## Baseline", "", comparison]
    verdict = "PASS" if passed(checks) and "REGRESSION" not in (comparison or "") else "FAIL"
    if comparison is not None and "MISSING" in comparison:
        verdict = "FAIL"
    lines += ["", f"Verdict: {verdict}"]
    return "\n".join(lines)


# -- the run ---------------------------------------------------------------------------------------


def run(options: Options, launch: Launch = launcher.LaunchedBackend.start) -> Outcome:
    profile = get_profile(options.profile).scaled(options.users, options.run_time)
    config = load_config(thresholds_of(options, profile), options.profile)
    reference = baselines.load(options.compare) if options.compare else None
    reports = options.reports
    with contextlib.ExitStack() as stack:
        secrets_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="renum-load-")))
        if options.target:
            backend: launcher.Backend = launcher.remote_backend(options.target)
            model_url = os.environ.get("RENUM_LOAD_MODEL_BASE_URL", "")
            sampler: resources.Sampler = resources.MetricsSampler(backend.base_url)
            described = backend.base_url
        else:
            # Many users from one address: the throttling's thresholds raised (the launcher's).
            env = {**launcher.BURSTS_ENV, **LAUNCH_ENV, **options.backend_env}
            launched = launch(options.db, extra_env=env)
            stack.callback(launched.stop)
            assert launched.process is not None
            backend = launched
            model_url = shared_fake().base_url  # the launched backend's platform URL
            sampler = resources.ProcessSampler(launched.process.pid)
            described = f"a launched backend ({options.db})"
        admin = stack.enter_context(ApiClient(backend.base_url))
        admin.login(backend.admin_email, backend.admin_password)
        pool = make_accounts(admin, math.ceil(profile.peak_users / USERS_PER_ACCOUNT))
        accounts_file = secrets_dir / "accounts.json"
        accounts_file.write_text(json.dumps(pool))
        accounts_file.chmod(0o600)
        env = locust_env(
            {"RENUM_LOAD_ACCOUNTS_FILE": str(accounts_file), "RENUM_LOAD_MODEL_BASE_URL": model_url}
        )
        if options.users is not None:
            env["RENUM_LOAD_USERS"] = str(options.users)
        if options.run_time is not None:
            env["RENUM_LOAD_RUN_TIME"] = str(options.run_time)
        print(
            f"load test: profile {profile.name}, peak {profile.peak_users} users, "
            f"{profile.duration:.0f} s, {locust_mode(options)}, against {described}",
            flush=True,
        )
        reports.mkdir(parents=True, exist_ok=True)
        for stale in reports.glob("locust*"):  # a failed run must not show the last one's
            stale.unlink()
        sampler.start()
        started_at = time.monotonic()
        try:
            run_locust(options, backend.base_url, env, reports, profile.duration)
        finally:
            samples = sampler.stop()
        elapsed = time.monotonic() - started_at
    entries = results.load_locust_json(reports / "locust.json")
    summary: dict[str, Any] = {
        "profile": profile.name,
        "peak_users": profile.peak_users,
        "planned_duration_s": round(profile.duration),
        "backend": "remote" if options.target else f"launched {options.db}",
        "workers": options.workers + options.remote_workers,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        **results.summarise(entries, config.groups),
        "resources": resources.summarise(samples, sampler.source),
        "wall_s": round(elapsed, 1),
    }
    checks = evaluate(config, summary)
    deltas = baselines.compare(reference, summary, config.tolerances) if reference else []
    comparison = None
    if reference is not None:
        notes = baselines.notes(reference, summary)
        comparison = baselines.comparison_table(deltas, str(options.compare))
        if notes:
            comparison += "\n\nNot strictly comparable: " + "; ".join(notes)
    failures = results.load_failures(reports / "locust_failures.csv")
    report = render(summary, checks, comparison, failures)
    outcome = Outcome(summary, checks, deltas, samples, report)
    write_reports(outcome, reports, str(options.compare) if reference else None)
    if options.save_baseline is not None and passed(checks):
        # a baseline is a release that met its service levels (it may be slower on purpose)
        outcome.saved = baselines.save(summary, options.save_baseline)
    return outcome


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        outcome = run(options)
    # AssertionError: the harness's API client refusing an answer (a wrong admin password)
    except (LoadError, ValueError, OSError, AssertionError, httpx.HTTPError) as exc:
        print(f"load test could not run: {exc}", file=sys.stderr)
        return 2
    print(outcome.report)
    print(f"\nReports: {options.reports} (locust.html, locust_stats.csv, verdict.md, ...)")
    if outcome.saved is not None:
        print(f"Baseline saved: {outcome.saved}")
    elif options.save_baseline is not None:
        print(f"Baseline not saved: this run failed its thresholds ({options.save_baseline})")
    return 0 if outcome.ok else 1
