"""The `renum` command, run in-process with Typer's CliRunner against a temporary SQLite."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from app import __version__
from app import cli as cli_module
from app.cli import cli
from app.core.config import Settings
from app.core.metrics import MULTIPROCESS_ENV
from app.core.security import verify_password
from app.db import migrate
from app.db.database import SQLAlchemyManager
from app.models import User
from app.repositories.users import UserRepository

runner = CliRunner()


def flat(text: str) -> str:
    """Rich wraps long lines; compare on whitespace-normalised text."""
    return " ".join(text.split())


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    path = tmp_path / "cli" / "renum.db"
    monkeypatch.setenv("RENUM_DATABASE__URL", f"sqlite+aiosqlite:///{path}")
    return path


def test_version() -> None:
    result = runner.invoke(cli, ["version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"renum {__version__}"


def test_no_arguments_shows_help() -> None:
    result = runner.invoke(cli, [])
    assert result.exit_code == 2
    assert "serve" in result.output
    assert "db" in result.output


def test_db_current_upgrade_downgrade_cycle(database: Path) -> None:
    head = migrate.head_revision()

    fresh = runner.invoke(cli, ["db", "current"])
    assert fresh.exit_code == 0, fresh.output
    assert flat(fresh.stdout) == (
        f"current: none head: {head} (migrations pending: run `renum db upgrade`)"
    )
    assert database.exists()  # the folder is created for a new SQLite file

    upgraded = runner.invoke(cli, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert "Database upgraded to head." in upgraded.stdout

    current = runner.invoke(cli, ["db", "current"])
    assert flat(current.stdout) == f"current: {head} head: {head} (up to date)"

    downgraded = runner.invoke(cli, ["db", "downgrade", "base"])
    assert downgraded.exit_code == 0, downgraded.output
    assert "Database downgraded to base." in downgraded.stdout
    assert flat(runner.invoke(cli, ["db", "current"]).stdout).startswith("current: none")

    again = runner.invoke(cli, ["db", "upgrade", head or "head"])
    assert again.exit_code == 0
    assert flat(runner.invoke(cli, ["db", "current"]).stdout).endswith("(up to date)")


def test_db_downgrade_needs_a_revision(database: Path) -> None:
    result = runner.invoke(cli, ["db", "downgrade"])
    assert result.exit_code == 2
    assert "Missing argument" in result.output


def test_create_admin(database: Path) -> None:
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    args = ["users", "create-admin", "--email", "Ops@Example.COM", "--password", "long-enough"]
    created = runner.invoke(cli, args)
    assert created.exit_code == 0, created.output
    assert "Admin Ops@example.com created." in flat(created.stdout)

    duplicate = runner.invoke(cli, args)
    assert duplicate.exit_code == 1
    assert "already exists" in flat(duplicate.stderr)


def test_create_admin_on_an_unmigrated_database_says_what_to_do(database: Path) -> None:
    # An operator's first command on a fresh machine may well be create-admin. The module
    # promises "a readable message and exit non-zero; no traceback for expected failures".
    result = runner.invoke(
        cli, ["users", "create-admin", "--email", "first@example.com", "--password", "long-enough"]
    )
    assert result.exit_code == 1
    assert "renum db upgrade" in flat(result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )


def test_create_admin_password_from_the_environment(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    monkeypatch.setenv("RENUM_ADMIN_PASSWORD", "from-the-environment")
    result = runner.invoke(cli, ["users", "create-admin", "--email", "env@example.com"])
    assert result.exit_code == 0, result.output
    assert "from-the-environment" not in result.output


def test_create_admin_prompts_for_missing_values(database: Path) -> None:
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(
        cli,
        ["users", "create-admin"],
        input="prompted@example.com\nprompted-pass\nprompted-pass\n",
    )
    assert result.exit_code == 0, result.output
    assert "prompted-pass" not in result.output  # hidden input


@pytest.mark.parametrize("email", ["not-an-email", "a@", "@example.com", "two@@example.com"])
def test_create_admin_refuses_a_bad_email(database: Path, email: str) -> None:
    result = runner.invoke(
        cli, ["users", "create-admin", "--email", email, "--password", "long-enough"]
    )
    assert result.exit_code == 2
    assert "Invalid email" in result.stderr


def test_create_admin_refuses_a_short_password(database: Path) -> None:
    result = runner.invoke(
        cli, ["users", "create-admin", "--email", "a@example.com", "--password", "short"]
    )
    assert result.exit_code == 2
    assert "at least 8 characters" in flat(result.stderr)


# Every command that reads the configuration, as the README lists them.
READING = [
    ["serve"],
    ["db", "current"],
    ["db", "upgrade"],
    ["doctor"],
    ["config", "check"],
    ["config", "show"],
    ["users", "create-admin", "--email", "a@example.com", "--password", "long-enough"],
    ["users", "reset-password", "--email", "a@example.com", "--password", "long-enough"],
]


@pytest.mark.parametrize(
    ("variable", "value", "where"),
    [
        ("RENUM_LOG_LEVEL", "chatty", "log_level (RENUM_LOG_LEVEL)"),
        ("RENUM_DATABASE__URL", "mysql://nope", "database.url (RENUM_DATABASE__URL)"),
        ("RENUM_SECRET_KEY", "short", "secret_key (RENUM_SECRET_KEY)"),
    ],
)
@pytest.mark.parametrize("command", READING, ids=lambda c: " ".join(c[:2]))
def test_invalid_settings_exit_2_with_the_variable_name(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, where: str, command: list[str]
) -> None:
    monkeypatch.setenv(variable, value)
    result = runner.invoke(cli, command)
    assert result.exit_code == 2
    assert "Invalid configuration" in result.stderr
    assert where in flat(result.stderr)
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [["version"], ["docs", "generate", "{tmp}"]])
def test_commands_that_read_no_settings_run_with_invalid_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: list[str]
) -> None:
    monkeypatch.setenv("RENUM_LOG_LEVEL", "LOUD")
    result = runner.invoke(cli, [part.format(tmp=tmp_path) for part in command])
    assert result.exit_code == 0, result.output


def test_model_level_setting_error_is_reported_without_a_location(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RENUM_ENVIRONMENT", "production")
    result = runner.invoke(cli, ["db", "current"])
    assert result.exit_code == 2
    assert "will not start in production" in flat(result.stderr)
    assert "RENUM_SECRET_KEY (from default)" in flat(result.stderr)


class ServeRecorder:
    """Records how ``renum serve`` would serve: ``uvicorn.run`` for one process (or with the
    configuration capability off), the reloading supervisor for several workers."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.supervised: list[tuple[uvicorn.Config, Path | None]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))

    def serve_workers(self, config: uvicorn.Config, watch: Path | None) -> None:
        self.supervised.append((config, watch))


@pytest.fixture
def recorded_run(monkeypatch: pytest.MonkeyPatch) -> ServeRecorder:
    import app.capabilities.configuration as configuration

    recorder = ServeRecorder()
    # `serve --workers N` names a folder for the workers' metrics in the environment; set
    # empty (unset for the command) through monkeypatch, the variable is removed afterwards.
    monkeypatch.setenv(MULTIPROCESS_ENV, "")
    monkeypatch.setattr(uvicorn, "run", recorder)
    monkeypatch.setattr(configuration, "serve_workers", recorder.serve_workers)
    return recorder


def test_serve_runs_uvicorn_with_the_app_factory(recorded_run: ServeRecorder) -> None:
    result = runner.invoke(cli, ["serve"])
    assert result.exit_code == 0, result.output
    ((args, kwargs),) = recorded_run.calls
    assert args == ("app.main:create_app",)
    assert kwargs == {
        "factory": True,
        "host": "127.0.0.1",
        "port": 8000,
        "reload": False,
        "workers": 1,
        "log_config": None,
        "timeout_graceful_shutdown": 5,
        "proxy_headers": False,  # X-Forwarded-For is the app's to read, from trusted proxies
    }
    assert "API docs at http://127.0.0.1:8000/docs" in flat(result.stdout)
    assert "(development)" in result.stdout
    assert recorded_run.supervised == []


@pytest.mark.parametrize(("setting", "seconds"), [("0.2", 1), ("2.5", 3), ("30", 30)])
def test_serve_bounds_uvicorn_shutdown_by_the_setting(
    recorded_run: ServeRecorder, monkeypatch: pytest.MonkeyPatch, setting: str, seconds: int
) -> None:
    monkeypatch.setenv("RENUM_SHUTDOWN_TIMEOUT_SECONDS", setting)
    result = runner.invoke(cli, ["serve"])
    assert result.exit_code == 0, result.output
    assert recorded_run.calls[0][1]["timeout_graceful_shutdown"] == seconds


def test_several_workers_run_under_the_reloading_supervisor(
    recorded_run: ServeRecorder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config_file = tmp_path / "renum.toml"
    config_file.write_text("")
    monkeypatch.setenv("RENUM_CONFIG_FILE", str(config_file))
    result = runner.invoke(
        cli, ["serve", "--host", "192.0.2.10", "--port", "9001", "--workers", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "with 3 workers" in flat(result.stdout)
    assert recorded_run.calls == []
    ((config, watch),) = recorded_run.supervised
    assert (config.app, config.factory) == ("app.main:create_app", True)
    assert (config.host, config.port, config.workers) == ("192.0.2.10", 9001, 3)
    assert watch == config_file  # the supervisor watches the file, not the workers
    shared = Path(os.environ[MULTIPROCESS_ENV])  # a fresh folder for the workers' metrics
    assert shared.is_dir()
    assert not any(shared.iterdir())

    monkeypatch.setenv("RENUM_CONFIGURATION__WATCH_FILE", "false")
    assert runner.invoke(cli, ["serve", "--workers", "2"]).exit_code == 0
    assert recorded_run.supervised[-1][1] is None


def test_workers_default_to_the_setting_and_the_switch_rolls_back_to_uvicorn(
    recorded_run: ServeRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RENUM_WORKERS", "2")
    assert runner.invoke(cli, ["serve"]).exit_code == 0
    assert recorded_run.supervised[-1][0].workers == 2
    # With live reload switched off, uvicorn's own supervisor runs the workers.
    monkeypatch.setenv("RENUM_CONFIGURATION__ENABLED", "false")
    assert runner.invoke(cli, ["serve"]).exit_code == 0
    ((_, kwargs),) = recorded_run.calls
    assert kwargs["workers"] == 2


def test_several_workers_on_sqlite_are_refused_in_production(
    recorded_run: ServeRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RENUM_ENVIRONMENT", "production")
    monkeypatch.setenv("RENUM_SECRET_KEY", "s" * 40)
    monkeypatch.setenv("RENUM_ENCRYPTION_KEYS", "k1:" + "A" * 43 + "=")
    result = runner.invoke(cli, ["serve", "--workers", "2"])
    assert result.exit_code == 2
    assert "RENUM_WORKERS" in flat(result.stderr)
    assert "SQLite with 2 worker processes" in flat(result.stderr)
    assert (recorded_run.calls, recorded_run.supervised) == ([], [])


def test_serve_reload_runs_one_process(recorded_run: ServeRecorder) -> None:
    result = runner.invoke(cli, ["serve", "--reload", "--workers", "4"])
    assert result.exit_code == 0, result.output
    kwargs = recorded_run.calls[0][1]
    assert kwargs["reload"] is True
    assert kwargs["workers"] == 1
    assert recorded_run.supervised == []


@pytest.mark.parametrize("args", [["--port", "0"], ["--port", "70000"], ["--workers", "0"]])
def test_serve_refuses_out_of_range_options(recorded_run: ServeRecorder, args: list[str]) -> None:
    result = runner.invoke(cli, ["serve", *args])
    assert result.exit_code == 2
    assert recorded_run.calls == []


def test_unreachable_database_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing listens on port 1: asyncpg's connection is refused with an OSError.
    monkeypatch.setenv("RENUM_DATABASE__URL", "postgresql+asyncpg://renum@127.0.0.1:1/renum")
    result = runner.invoke(cli, ["db", "current"])
    assert result.exit_code == 1
    assert "Cannot reach the database" in flat(result.stderr)


def test_console_script_entry_point(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli import main

    monkeypatch.setattr("sys.argv", ["renum", "version"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0
    assert f"renum {__version__}" in capsys.readouterr().out


def test_reset_password_gives_a_user_a_new_one_and_ends_their_sessions(database: Path) -> None:
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    create = ["users", "create-admin", "--email", "ops@example.com", "--password", "first-pass"]
    assert runner.invoke(cli, create).exit_code == 0
    before = asyncio.run(_admin("ops@example.com"))

    result = runner.invoke(
        cli,
        ["users", "reset-password", "--email", "Ops@Example.com"],
        input="second-pass\nsecond-pass\n",
    )
    assert result.exit_code == 0, result.output
    assert "Password of Ops@example.com changed" in flat(result.stdout)
    assert "second-pass" not in result.output  # hidden input
    after = asyncio.run(_admin("ops@example.com"))
    assert after.token_generation == before.token_generation + 1  # every token ended
    assert verify_password("second-pass", after.password_hash)
    assert not verify_password("first-pass", after.password_hash)


def test_reset_password_of_nobody_fails_and_changes_nothing(database: Path) -> None:
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(
        cli,
        ["users", "reset-password", "--email", "ghost@example.com", "--password", "long-enough"],
    )
    assert result.exit_code == 1
    assert "No user has the email ghost@example.com" in flat(result.stderr)
    short = runner.invoke(
        cli, ["users", "reset-password", "--email", "ops@example.com", "--password", "short"]
    )
    assert short.exit_code == 2
    assert "at least 8 characters" in flat(short.stderr)


async def _admin(email: str) -> User:
    database = SQLAlchemyManager(Settings().database)
    try:
        async with database.session() as session:
            user = await UserRepository(session).by_email(email)
            assert user is not None
            return user
    finally:
        await database.dispose()


@pytest.mark.parametrize(
    "command", [[], ["db"], ["db", "check"], ["doctor"], ["users", "reset-password"], ["serve"]]
)
def test_help_names_flags_without_type_labels_and_rewraps_paragraphs(command: list[str]) -> None:
    result = runner.invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output  # a flag takes no value
    assert "╭" not in result.output  # plain help, the same in a terminal and through a pipe


def test_output_through_a_pipe_is_not_wrapped_at_80_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    console = cli_module._console()  # pytest's stdout is no terminal
    assert console.width == cli_module.PIPED_WIDTH
    url = "https://docs.example.com/renum/troubleshooting/#providers-and-their-base-urls"
    with console.capture() as captured:
        console.print(f"docs: {url} " * 2)
    assert url in captured.get()
    monkeypatch.setenv("COLUMNS", "100")  # the width the user asked for
    assert cli_module._console().width == 100
