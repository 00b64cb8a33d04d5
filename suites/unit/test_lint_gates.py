"""The lint gates bite: ruff, mypy and the import contracts each fail on a crafted violation,
naming it, and pass on its clean counterpart; and the lock is regenerated with pyproject.

The tools run as the lint session runs them (the shared environment's executables, the
project's own configuration in pyproject.toml), in subprocesses without coverage.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
BIN = Path(sys.executable).parent


def run(*command: str | Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a tool of the shared environment, its output captured, outside coverage."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    return subprocess.run(  # noqa: S603  (the shared environment's own tools)
        [str(part) for part in command],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@functools.cache
def load_noxfile() -> ModuleType:
    """The noxfile as a module (once: importing it registers its sessions with nox)."""
    spec = importlib.util.spec_from_file_location("renum_noxfile", ROOT / "noxfile.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- ruff ----------------------------------------------------------------------------------

RUFF_BAD = 'import os\nimport subprocess\n\nsubprocess.run("ls", shell=True)\n'
RUFF_CLEAN = 'import shlex\n\nprint(shlex.split("ls -l"))\n'


def test_ruff_check_fails_on_a_violation_and_passes_on_clean_code(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(RUFF_BAD)
    (tmp_path / "clean.py").write_text(RUFF_CLEAN)
    config = ("--config", PYPROJECT, "--no-cache")

    bad = run(BIN / "ruff", "check", *config, "bad.py", cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "F401" in bad.stdout
    assert "`os` imported but unused" in bad.stdout
    assert "S602" in bad.stdout

    clean = run(BIN / "ruff", "check", *config, "clean.py", cwd=tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr


def test_ruff_format_check_fails_on_unformatted_code(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("x = {  'a':1 }\n")
    (tmp_path / "clean.py").write_text('x = {"a": 1}\n')
    config = ("--config", PYPROJECT, "--no-cache")

    bad = run(BIN / "ruff", "format", "--check", *config, "bad.py", cwd=tmp_path)
    assert bad.returncode == 1
    assert "1 file would be reformatted" in bad.stdout
    assert "--> bad.py:1" in bad.stdout

    clean = run(BIN / "ruff", "format", "--check", *config, "clean.py", cwd=tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr


# --- mypy ----------------------------------------------------------------------------------

MYPY_BAD = """\
def double(x):
    return x * 2


count: int = "three"  # type: ignore
"""
MYPY_CLEAN = """\
def double(x: int) -> int:
    return x * 2


count: int = "three"  # type: ignore[assignment]  # a deliberate ignore, with its code
"""


def test_mypy_strict_fails_on_a_violation_and_passes_on_clean_code(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(MYPY_BAD)
    (tmp_path / "clean.py").write_text(MYPY_CLEAN)
    config = ("--config-file", PYPROJECT, "--cache-dir", tmp_path / ".mypy_cache")

    bad = run(BIN / "mypy", *config, "bad.py", cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "bad.py:1: error: Function is missing a type annotation  [no-untyped-def]" in bad.stdout
    assert '"type: ignore" comment without error code' in bad.stdout

    clean = run(BIN / "mypy", *config, "clean.py", cwd=tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr


# --- import-linter: the project's contracts on a copy of app/ ------------------------------

# Each crafted import breaks one contract: (its id in pyproject, file, import, the violation as
# lint-imports reports it).
VIOLATIONS = [
    ("layers", "core/errors.py", "import app.services.users", "app.core.errors -> app.services"),
    (
        "capability-internals",
        "capabilities/docs/crafted_internal.py",
        "import app.capabilities.health.checks",
        "app.capabilities.docs.crafted_internal -> app.capabilities.health.checks",
    ),
    (
        "routers",
        "api/crafted_router_user.py",
        "import app.api.routes.users",
        "app.api.crafted_router_user -> app.api.routes.users",
    ),
    (
        "core-reexports",
        "services/crafted_reexport_user.py",
        "import app.core.doc_generator",
        "app.services.crafted_reexport_user -> app.core.doc_generator",
    ),
    (
        "drivers",
        "repositories/crafted_driver_user.py",
        "import asyncpg",
        "app.repositories.crafted_driver_user -> asyncpg",
    ),
]


def copy_app(destination: Path) -> Path:
    """The Python files of app/ (all import-linter reads) under destination/app."""

    def not_python(folder: str, names: list[str]) -> set[str]:
        return {
            name
            for name in names
            if name == "__pycache__"
            or (not name.endswith(".py") and not (Path(folder) / name).is_dir())
        }

    shutil.copytree(ROOT / "app", destination / "app", ignore=not_python)
    return destination / "app"


def lint_imports(package_parent: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    """The project's contracts (or those named) on the ``app`` package under package_parent."""
    selected = [arg for contract in contracts for arg in ("--contract", contract)]
    return run(
        BIN / "lint-imports", PYPROJECT, "--no-cache", "--no-logo", *selected,
        cwd=package_parent, PYTHONPATH=str(package_parent), COLUMNS="200",
    )  # fmt: skip


@pytest.fixture(scope="module")
def app_copies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A clean copy of app/ and one with every crafted violation added."""
    clean = tmp_path_factory.mktemp("clean")
    copy_app(clean)
    bad = tmp_path_factory.mktemp("bad")
    app = copy_app(bad)
    for _contract, path, statement, _reported in VIOLATIONS:
        target = app / path
        existing = target.read_text() if target.exists() else ""
        target.write_text(f"{existing}\n{statement}  # crafted violation\n")
    return clean, bad


def test_the_contracts_cover_the_architecture() -> None:
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    assert {c["id"] for c in contracts} == {c for c, _path, _statement, _reported in VIOLATIONS}


def test_the_import_contracts_pass_on_the_app_as_it_is(app_copies: tuple[Path, Path]) -> None:
    clean, _bad = app_copies
    result = lint_imports(clean)
    assert result.returncode == 0, (
        "app/ itself breaks an import contract (run `nox -s lint`):\n" + result.stdout
    )
    for _contract, _path, _statement, reported in VIOLATIONS:
        assert reported not in result.stdout


@pytest.mark.parametrize(
    ("contract", "reported"),
    [(contract, reported) for contract, _path, _statement, reported in VIOLATIONS],
    ids=[contract for contract, _path, _statement, _reported in VIOLATIONS],
)
def test_each_import_contract_bites(
    app_copies: tuple[Path, Path], contract: str, reported: str
) -> None:
    _clean, bad = app_copies
    result = lint_imports(bad, contract)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Contracts: 0 kept, 1 broken." in result.stdout
    assert reported in result.stdout


# --- Alembic's environment takes the models' metadata from above -------------------------


@pytest.mark.anyio
async def test_alembic_autogenerate_gets_the_metadata_from_the_caller(tmp_path: Path) -> None:
    """env.py (db layer) imports no model: `alembic check` compares the database with the
    metadata its caller hands over in config.attributes, and cannot compare without it."""
    from alembic import command
    from alembic.util.exc import CommandError
    from sqlalchemy import Connection

    import app.models  # noqa: F401  (registers every table on Base.metadata)
    from app.core.config import DatabaseSettings
    from app.db import migrate
    from app.db.base import Base
    from app.db.database import SQLAlchemyManager

    def check_against(metadata: object) -> Callable[[Connection], None]:
        def check(connection: Connection) -> None:
            config = migrate.alembic_config(connection)
            config.attributes["target_metadata"] = metadata
            command.check(config)

        return check

    database = SQLAlchemyManager(
        DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'check.db'}")
    )
    try:
        await migrate.upgrade(database.engine)
        async with database.engine.connect() as conn:
            await conn.run_sync(check_against(Base.metadata))  # the models match head
            with pytest.raises(CommandError, match="does not provide a MetaData"):
                await conn.run_sync(check_against(None))
    finally:
        await database.dispose()


# --- the lock ------------------------------------------------------------------------------


def test_the_lock_was_regenerated_after_pyproject_dependencies_changed() -> None:
    noxfile = load_noxfile()
    assert noxfile.recorded_digest() == noxfile.dependency_digest(), (
        "pyproject.toml's dependencies changed since requirements/qa.lock was resolved: "
        "run `nox -s lock` (see README, Upgrading dependencies)"
    )


def test_every_pyproject_requirement_is_satisfied_by_the_lock() -> None:
    noxfile = load_noxfile()
    locked = noxfile.locked_versions()
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["qa"]]
    wanted += project["optional-dependencies"]["redis"]
    for line in wanted:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == canonicalize_name(project["name"]):
            continue
        assert name in locked, f"{requirement} is not in requirements/qa.lock: run `nox -s lock`"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"requirements/qa.lock pins {name}=={locked[name]}, outside {requirement}"
        )


def test_the_digest_changes_with_the_dependency_tables_only(tmp_path: Path) -> None:
    noxfile = load_noxfile()
    original = PYPROJECT.read_text()
    edited = tmp_path / "pyproject.toml"

    edited.write_text(original + '\n[tool.crafted]\nsetting = "no effect on the lock"\n')
    assert noxfile.dependency_digest(edited) == noxfile.dependency_digest(PYPROJECT)

    edited.write_text(original.replace("dependencies = [\n", 'dependencies = [\n    "six",\n', 1))
    assert noxfile.dependency_digest(edited) != noxfile.dependency_digest(PYPROJECT)


def test_the_project_metadata_uses_no_form_setuptools_deprecates() -> None:
    """A license as a TOML table made every build of the project print setuptools' deprecation
    warning (and stop building after 2027-02-18): the license is an SPDX expression, which
    setuptools reads from version 77 on."""
    pyproject = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    assert isinstance(pyproject["project"]["license"], str)
    assert "setuptools>=77" in pyproject["build-system"]["requires"]


class RecordingSession:
    """Stands for a nox session: records what it is told to log and to run, runs nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def log(self, message: str) -> None:
        self.calls.append(("log", message))

    def warn(self, message: str) -> None:
        self.calls.append(("warn", message))

    def run(self, *args: str, **kwargs: object) -> str:
        self.calls.append(("run", " ".join(map(str, args))))
        return "[]"


def test_installing_the_shared_environment_says_what_it_is_doing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first `nox -s serve` spent a minute or two installing in silence."""
    noxfile = load_noxfile()
    monkeypatch.setattr(noxfile, "VENV", ROOT / ".nox" / f"probe-{os.getpid()}")
    session = RecordingSession()
    try:
        noxfile.VENV.mkdir(parents=True)
        noxfile.shared_env(session)
    finally:
        shutil.rmtree(noxfile.VENV, ignore_errors=True)
    kinds = [kind for kind, _ in session.calls]
    first_install = next(n for n, (_, text) in enumerate(session.calls) if " install " in text)
    assert "log" in kinds[:first_install]
    told = session.calls[kinds.index("log")][1]
    assert "Installing the shared environment" in told
    assert "requirements/qa.lock" in told
    assert session.calls[-1] == ("log", "The shared environment is ready")
