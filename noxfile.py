"""Renum's sessions. Plain `nox` runs what CI needs; see the README for each session.

Every session shares one virtual environment (.nox/shared), reinstalled only when
pyproject.toml changes, so a full run does not reinstall the world. Test sessions run under
coverage (the launched server processes too); `coverage` combines them and enforces 90%.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
VENV = ROOT / ".nox" / "shared"
REPORTS = ROOT / "reports"
COVERAGE_DIR = REPORTS / "coverage"

nox.options.default_venv_backend = "none"
nox.options.error_on_external_run = False
nox.options.sessions = [
    "lint", "unit", "integration", "security", "property", "regression", "contracts",
    "load_smoke", "docs", "coverage",
]  # fmt: skip


def tool(name: str) -> str:
    """A program installed in the shared environment (nox looks commands up on its own PATH)."""
    return str(VENV / "bin" / name)


def shared_env(session: nox.Session) -> dict[str, str]:
    """Create or refresh the shared environment; return the variables that activate it."""
    python = VENV / "bin" / "python"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = VENV / ".installed"
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(VENV))
    if not stamp.exists() or stamp.read_text() != digest:
        session.run(str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip")
        session.run(str(python), "-m", "pip", "install", "--quiet", "-e", ".[qa]")
        stamp.write_text(digest)
    return {
        "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(VENV),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def run_pytest(session: nox.Session, name: str, *args: str) -> None:
    """Run pytest under coverage, writing this session's data and JUnit report."""
    env = shared_env(session)
    COVERAGE_DIR.mkdir(parents=True, exist_ok=True)
    for stale in COVERAGE_DIR.glob(f".coverage.{name}*"):
        stale.unlink()
    env["COVERAGE_FILE"] = str(COVERAGE_DIR / f".coverage.{name}")
    session.run(
        tool("python"), "-m", "coverage", "run", "-m", "pytest", *args,
        f"--junitxml={REPORTS / 'junit' / f'{name}.xml'}", *session.posargs,
        env=env,
    )  # fmt: skip


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff: lint rules and formatting."""
    env = shared_env(session)
    session.run(tool("ruff"), "check", ".", env=env)
    session.run(tool("ruff"), "format", "--check", ".", env=env)


@nox.session
def unit(session: nox.Session) -> None:
    """Fast tests of single modules, no server."""
    run_pytest(session, "unit", "suites/unit")


@nox.session
def integration(session: nox.Session) -> None:
    """The real backend over HTTP, on SQLite and on PostgreSQL."""
    run_pytest(session, "integration", "suites/integration", "--db=sqlite,postgresql")


@nox.session
def security(session: nox.Session) -> None:
    """The attacker's view, on SQLite and PostgreSQL: the egress guard and the platform key,
    hostile templates, hostile inputs to every operation, contention, sessions, shutdown and
    logs (`suites/security`), against a backend launched with no egress allowlist.
    `-- --deep` explores longer."""
    run_pytest(session, "security", "suites/security", "--db=sqlite,postgresql")


@nox.session
def property(session: nox.Session) -> None:
    """Hypothesis properties of the domain and the API (`-- --profile=deep` explores longer)."""
    profile = next(
        (a.split("=", 1)[1] for a in session.posargs if a.startswith("--profile=")), "ci"
    )
    session.posargs[:] = [a for a in session.posargs if not a.startswith("--profile=")]
    run_pytest(session, "property", "suites/property", f"--hypothesis-profile={profile}")


@nox.session
def regression(session: nox.Session) -> None:
    """pytest-regressions snapshots (`-- --force-regen` to accept intended changes)."""
    run_pytest(session, "regression", "suites/regression")


PERFORMANCE_THRESHOLD = "median:25%"


@nox.session
def performance(session: nox.Session) -> None:
    """Engine benchmarks; saved per run and compared with the previous saved run, failing when
    a median regresses by more than 25% (`-- --benchmark-compare-fail=median:10%` to tighten)."""
    env = shared_env(session)
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
    session.run(tool("python"), "-m", "app.core.doc_generator", "docs/reference", env=env)
    if session.posargs[:1] == ["serve"]:
        session.run(
            tool("mkdocs"), "serve", "--dev-addr", "127.0.0.1:8001", *session.posargs[1:],
            env={**env, "NO_MKDOCS_2_WARNING": "1"},
        )  # fmt: skip
        return
    run_pytest(session, "docs", "suites/docs")


@nox.session
def serve(session: nox.Session) -> None:
    """Run the backend on the embedded default (SQLite) for exploration: `-- --port 9000`."""
    env = shared_env(session)
    session.run(tool("renum"), "serve", *session.posargs, env=env)
