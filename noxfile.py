"""Renum's sessions. Plain `nox` runs what CI needs; see the README for each session.

Every session shares one virtual environment (.nox/shared) holding exactly the versions pinned
in requirements/qa.lock (plus the project, editable), reinstalled only when the lock or
pyproject.toml changes, so a full run does not reinstall the world. Test sessions run under
coverage (the launched server processes too); `coverage` combines them and enforces 90%.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

import nox
from nox.command import CommandFailed

ROOT = Path(__file__).parent
VENV = ROOT / ".nox" / "shared"
REPORTS = ROOT / "reports"
COVERAGE_DIR = REPORTS / "coverage"
PYPROJECT = ROOT / "pyproject.toml"
# The environment the sessions use, resolved by `nox -s lock` (uv) for this Python on linux.
LOCK = ROOT / "requirements" / "qa.lock"
LOCK_PYTHON = "3.11"
LOCK_DIGEST_PREFIX = "# pyproject-dependencies-sha256: "

nox.options.default_venv_backend = "none"
nox.options.error_on_external_run = False
nox.options.sessions = [
    "lint", "unit", "integration", "security", "property", "regression", "contracts",
    "load_smoke", "docs", "browser", "coverage",
]  # fmt: skip


def tool(name: str) -> str:
    """A program installed in the shared environment (nox looks commands up on its own PATH)."""
    return str(VENV / "bin" / name)


def dependency_digest(pyproject: Path = PYPROJECT) -> str:
    """The digest of what the lock is resolved from: pyproject's requires-python, dependencies
    and optional-dependencies (other tables, such as tool settings, do not affect the lock)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    keys = ("requires-python", "dependencies", "optional-dependencies")
    tables = {key: project.get(key) for key in keys}
    return hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()


def recorded_digest(lock: Path = LOCK) -> str | None:
    """The dependency digest `nox -s lock` wrote in the lock's header, if any."""
    for line in lock.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith(LOCK_DIGEST_PREFIX):
            return line.removeprefix(LOCK_DIGEST_PREFIX).strip()
    return None


def canonical(name: str) -> str:
    """A distribution's normalised name (PEP 503), as the lock and pip may spell it differently."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(lock: Path = LOCK) -> dict[str, str]:
    """Canonical package name -> pinned version, for every requirement in the lock."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", lock.read_text(), re.M)
    return {canonical(name): version for name, version in pins}


def shared_env(session: nox.Session, *, consistent: bool = True) -> dict[str, str]:
    """Create or refresh the shared environment; return the variables that activate it.

    The lock is installed with pip (always in a venv, nothing to bootstrap) in hash-checking
    mode and without resolving (the lock is complete); packages the lock no longer names are
    removed; then the project goes in editable, without dependencies, and pip checks that
    everything it requires is there. ``consistent=False`` skips that check and leaves the
    environment marked stale (for `nox -s lock`, run because pyproject asks for what the lock
    lacks)."""
    python = VENV / "bin" / "python"
    if not LOCK.exists():
        session.error("requirements/qa.lock is missing: restore it from git (nox -s lock needs it)")
    digest = hashlib.sha256(LOCK.read_bytes() + PYPROJECT.read_bytes()).hexdigest()
    stamp = VENV / ".installed"
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(VENV))
    if not stamp.exists() or stamp.read_text() != digest:
        session.log(
            f"Installing the shared environment {VENV.relative_to(ROOT)} from "
            f"{LOCK.relative_to(ROOT)} ({len(locked_versions())} packages, hash-checked): "
            "on the first run or after the lock or pyproject.toml changed; a minute or two, "
            "quiet while pip works"
        )
        pip = (str(python), "-m", "pip", "--disable-pip-version-check")
        if sys.version_info[:2] != tuple(map(int, LOCK_PYTHON.split("."))):
            session.warn(f"requirements/qa.lock is resolved for Python {LOCK_PYTHON}")
        session.run(*pip, "install", "--quiet", "--require-hashes", "--no-deps", "-r", str(LOCK))
        listed = session.run(*pip, "list", "--format=json", "--exclude-editable", silent=True)
        keep = locked_versions().keys() | {"pip", "setuptools", "wheel"}
        stray = [d["name"] for d in json.loads(str(listed)) if canonical(d["name"]) not in keep]
        if stray:
            session.run(*pip, "uninstall", "--quiet", "--yes", *stray)
        session.run(*pip, "install", "--quiet", "--no-deps", "-e", ".")
        if not consistent:
            stamp.unlink(missing_ok=True)  # the next session installs the new lock
            return _activation()
        session.run(*pip, "check")
        stamp.write_text(digest)
        session.log("The shared environment is ready")
    return _activation()


def _activation() -> dict[str, str]:
    """The variables that make the shared environment the one commands run in. Bytecode is
    cached beside it, outside the source tree: each of the hundreds of processes a run starts
    (servers, commands, workers) would otherwise compile the project's modules again."""
    return {
        "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(VENV),
        "PYTHONDONTWRITEBYTECODE": "",  # empty: not set, whatever the caller's environment says
        "PYTHONPYCACHEPREFIX": str(VENV.parent / "pycache"),
    }


def debian_tool(session: nox.Session, command: str, package: str) -> None:
    """Install the Debian package that provides ``command`` when the machine lacks it (the
    sessions run as root in CI; elsewhere they say what to install)."""
    if shutil.which(command):
        return
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    if os.geteuid() != 0:
        session.error(f"{command} is missing: install it with `sudo {' '.join(install)}`")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        session.run(*install, external=True, env=env)
    except CommandFailed:  # a stale package index: refresh it once
        session.run("apt-get", "update", external=True, env=env)
        session.run(*install, external=True, env=env)


def run_pytest(session: nox.Session, name: str, *args: str, workers: int = 0) -> None:
    """Run pytest under coverage, writing this session's data and JUnit report; with
    ``workers``, in that many pytest-xdist processes (each measured: ``patch = subprocess``)."""
    env = shared_env(session)
    COVERAGE_DIR.mkdir(parents=True, exist_ok=True)
    for stale in COVERAGE_DIR.glob(f".coverage.{name}*"):
        stale.unlink()
    env["COVERAGE_FILE"] = str(COVERAGE_DIR / f".coverage.{name}")
    parallel = ("-n", str(workers)) if workers else ()
    if "--deep" in session.posargs:  # a deep exploration takes as long as it takes
        args = (*args, "--timeout=0", "-o", "faulthandler_timeout=0")
    session.run(
        tool("python"), "-m", "coverage", "run", "-m", "pytest", *args, *parallel,
        f"--junitxml={REPORTS / 'junit' / f'{name}.xml'}", *session.posargs,
        env=env,
    )  # fmt: skip


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff (lint rules, formatting), mypy --strict on app, qa and noxfile.py ([tool.mypy]) and
    the architecture contracts (lint-imports, [tool.importlinter]). Every check runs; the
    session fails at the end naming those that failed."""
    env = shared_env(session)
    lint_imports_cache = str(VENV.parent / "import_linter_cache")
    checks = {
        "ruff check": [tool("ruff"), "check", "."],
        "ruff format": [tool("ruff"), "format", "--check", "."],
        "mypy": [tool("mypy")],
        "lint-imports": [tool("lint-imports"), "--no-logo", "--cache-dir", lint_imports_cache],
    }
    failed = []
    for name, command in checks.items():
        try:
            session.run(*command, env=env)
        except CommandFailed:
            failed.append(name)
    if failed:
        session.error(f"failed: {', '.join(failed)}")


@nox.session
def unit(session: nox.Session) -> None:
    """Fast tests of single modules, no server (two pytest-xdist workers, one per core;
    `systemd-analyze` checks the reference deployment's units, `promtool` from Debian's
    `prometheus` the exported alert rules)."""
    debian_tool(session, "systemd-analyze", "systemd")
    debian_tool(session, "promtool", "prometheus")
    run_pytest(
        session, "unit", "suites/unit", "--timeout=120", "-o", "faulthandler_timeout=110", workers=2
    )


@nox.session
def integration(session: nox.Session) -> None:
    """The real backend over HTTP, on SQLite and on PostgreSQL (`promtool`, from Debian's
    `prometheus`, checks the served metrics; `pgbackrest` backs up private clusters)."""
    debian_tool(session, "promtool", "prometheus")
    debian_tool(session, "pgbackrest", "pgbackrest")
    # Three workers on two cores: the tests mostly wait on the servers they launched. The long
    # scenarios marked `drill` run in the drills session.
    run_pytest(
        session,
        "integration",
        "suites/integration",
        "--db=sqlite,postgresql",
        "-m",
        "not drill",
        workers=3,
    )


@nox.session
def security(session: nox.Session) -> None:
    """The attacker's view, on SQLite and PostgreSQL: the egress guard and the platform key,
    hostile templates, hostile inputs to every operation, contention, sessions, shutdown and
    logs (`suites/security`), against a backend launched with no egress allowlist.
    `-- --deep` explores longer."""
    run_pytest(session, "security", "suites/security", "--db=sqlite,postgresql", workers=2)


@nox.session
def property(session: nox.Session) -> None:
    """Hypothesis properties of the domain and the API (`-- --profile=deep` explores longer)."""
    profile = next(
        (a.split("=", 1)[1] for a in session.posargs if a.startswith("--profile=")), "ci"
    )
    session.posargs[:] = [a for a in session.posargs if not a.startswith("--profile=")]
    limits = ("--timeout=0", "-o", "faulthandler_timeout=0") if profile == "deep" else ()
    run_pytest(
        session,
        "property",
        "suites/property",
        f"--hypothesis-profile={profile}",
        *limits,
        workers=2,
    )


@nox.session
def regression(session: nox.Session) -> None:
    """pytest-regressions snapshots (`-- --force-regen` to accept intended changes)."""
    run_pytest(session, "regression", "suites/regression")


PERFORMANCE_THRESHOLD = "median:25%"


@nox.session
def performance(session: nox.Session) -> None:
    """Engine benchmarks; saved per run and compared with the previous saved run, failing when
    a median regresses by more than 25% (`-- --benchmark-compare-fail=median:10%` to tighten).
    The overhead budget loads real servers with wrk (Debian's package)."""
    env = shared_env(session)
    debian_tool(session, "wrk", "wrk")
    (REPORTS / "benchmarks").mkdir(parents=True, exist_ok=True)
    storage = ROOT / ".benchmarks"
    compare = (
        ["--benchmark-compare", f"--benchmark-compare-fail={PERFORMANCE_THRESHOLD}"]
        if any(storage.glob("*/*.json"))
        else []
    )
    session.run(
        tool("python"), "-m", "pytest", "suites/performance",
        f"--benchmark-storage=file://{storage}", "--benchmark-autosave", *compare,
        f"--benchmark-json={REPORTS / 'benchmarks' / 'engine.json'}",
        "--benchmark-columns=median,iqr,mean,rounds",
        f"--junitxml={REPORTS / 'junit' / 'performance.xml'}", *session.posargs,
        env=env,
    )  # fmt: skip


@nox.session
def contracts(session: nox.Session) -> None:
    """Schemathesis against the live backend on SQLite and then PostgreSQL, as an admin and as a
    member (NUL characters and, through a hook, non-finite numbers included), and the guard
    against breaking API changes. `-- --deep` explores long with a fresh seed (release candidates);
    `-- --accept` records the served schema in contracts/openapi.json when nothing in it breaks
    a client (`--accept --accept-breaking` for an intended break); `-- --target URL` tests a
    deployment as the admin in RENUM_QA_ADMIN_EMAIL / RENUM_QA_ADMIN_PASSWORD. Findings, with
    cURL reproductions and the seed, land in reports/contracts/."""
    run_pytest(session, "contracts", "contracts", "--db=sqlite,postgresql")


@nox.session
def load(session: nox.Session) -> None:
    """The release load test: Locust's `release` profile against a backend launched on the
    embedded default, checked against load/thresholds.toml. `-- --profile NAME`, `--users N`,
    `--run-time 5m`, `--workers N` (Locust master and N workers), `--compare BASELINE` (a file,
    or `release` for the committed one), `--save-baseline [PATH]`, `--target URL` (admin in
    RENUM_QA_ADMIN_EMAIL / RENUM_QA_ADMIN_PASSWORD). Reports in reports/load/. The server is
    not measured by coverage here: the figures are the build's own, not a traced one's."""
    env = shared_env(session)
    session.run(
        tool("python"), "-m", "qa.load", "--profile", "release",
        "--reports", str(REPORTS / "load"), *session.posargs,
        env=env,
    )  # fmt: skip


@nox.session
def load_smoke(session: nox.Session) -> None:
    """The `smoke` load profile (about a minute) with its thresholds, for the default run; the
    harness and the launched server are measured by coverage like the other sessions."""
    env = shared_env(session)
    COVERAGE_DIR.mkdir(parents=True, exist_ok=True)
    for stale in COVERAGE_DIR.glob(".coverage.load_smoke*"):
        stale.unlink()
    env["COVERAGE_FILE"] = str(COVERAGE_DIR / ".coverage.load_smoke")
    session.run(
        tool("python"), "-m", "coverage", "run", "-m", "qa.load", "--profile", "smoke",
        "--reports", str(REPORTS / "load" / "smoke"), *session.posargs,
        env=env,
    )  # fmt: skip


@nox.session
def coverage(session: nox.Session) -> None:
    """Combine every session's coverage (server processes included) and enforce 90%."""
    env = shared_env(session)
    session.run(
        tool("python"), "-m", "qa.gates", "coverage",
        "--data-dir", str(COVERAGE_DIR),
        "--html", str(COVERAGE_DIR / "html"),
        "--xml", str(REPORTS / "coverage.xml"),
        env=env,
    )  # fmt: skip


@nox.session
def docs(session: nox.Session) -> None:
    """The docs site: regenerate docs/reference from the backend's schema, settings and health
    registry; check integrity (every operation and setting documented, committed pages
    current); build with `mkdocs build --strict` into site/; run every example against a
    launched backend. `-- serve` serves the site at http://127.0.0.1:8001 instead."""
    env = shared_env(session)
    session.run(tool("renum"), "docs", "generate", "docs/reference", env=env)
    if session.posargs[:1] == ["serve"]:
        session.run(
            tool("mkdocs"), "serve", "--dev-addr", "127.0.0.1:8001", *session.posargs[1:],
            env={**env, "NO_MKDOCS_2_WARNING": "1"},
        )  # fmt: skip
        return
    run_pytest(session, "docs", "suites/docs")


@nox.session
def browser(session: nox.Session) -> None:
    """The pages in a real browser (`suites/browser`): Debian's `chromium`, installed when
    missing, driven headless by Playwright's Python package (never `playwright install`: no
    browser is downloaded) against a launched backend. Screenshots land in reports/browser/."""
    debian_tool(session, "chromium", "chromium")
    run_pytest(session, "browser", "suites/browser")


@nox.session
def drills(session: nox.Session) -> None:
    """The long drills: suites/drills and the integration tests marked `drill`, on SQLite and
    PostgreSQL (not in the default run; CI runs them after it), with a JUnit report. Not
    measured by coverage: drills add confidence, not coverage, so they neither feed the 90%
    gate nor need to have run for it. The backup drills need `pgbackrest`, the failover drill
    Patroni and etcd (Debian's `patroni` and `etcd-server`)."""
    for command, package in (
        ("pgbackrest", "pgbackrest"),
        ("patroni", "patroni"),
        ("etcd", "etcd-server"),
    ):
        debian_tool(session, command, package)
    env: dict[str, str | None] = {**shared_env(session)}
    # Unset any inherited coverage settings so no process of the drills writes coverage data.
    env.update(dict.fromkeys((k for k in os.environ if k.startswith("COVERAGE_")), None))
    session.run(
        tool("python"), "-m", "pytest", "suites/drills", "suites/integration",
        "--db=sqlite,postgresql", "-m", "drill",
        f"--junitxml={REPORTS / 'junit' / 'drills.xml'}", *session.posargs,
        env=env,
    )  # fmt: skip


@nox.session
def lock(session: nox.Session) -> None:
    """Re-resolve requirements/qa.lock (the project with its `qa` extra, Python 3.11, linux,
    hashes) with uv after pyproject's dependencies change, keeping the current pins where they
    still fit. `-- --upgrade` moves everything to the newest allowed versions,
    `-- --upgrade-package NAME` one package."""
    env = shared_env(session, consistent=False)  # pyproject may ask for what the lock lacks
    LOCK.parent.mkdir(exist_ok=True)
    session.run(
        tool("uv"), "pip", "compile", str(PYPROJECT.relative_to(ROOT)), "--extra", "qa",
        "--python-version", LOCK_PYTHON, "--python-platform", "linux", "--generate-hashes",
        "--custom-compile-command", "nox -s lock", "--quiet",
        "-o", str(LOCK.relative_to(ROOT)), *session.posargs,
        env=env,
    )  # fmt: skip
    lines = LOCK.read_text().splitlines(keepends=True)
    header = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    lines.insert(header, f"{LOCK_DIGEST_PREFIX}{dependency_digest()}\n")
    LOCK.write_text("".join(lines))


@nox.session
def serve(session: nox.Session) -> None:
    """Run the backend on the embedded default (SQLite) for exploration: `-- --port 9000`."""
    env = shared_env(session)
    session.run(tool("renum"), "serve", *session.posargs, env=env)
