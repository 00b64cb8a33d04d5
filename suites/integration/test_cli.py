"""The ``renum`` command end to end, as an operator runs it: a real subprocess of the installed
console script against a temporary SQLite database."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from integration_support import Cli, cli_env

from qa.client import API, ApiClient
from qa.factories import expect
from qa.plugin import LaunchBackend

ADMIN_PASSWORD = "cli-admin-passphrase"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    env = cli_env(
        RENUM_ENVIRONMENT="test",
        RENUM_SECRET_KEY="cli-test-secret-key-0123456789abcdefghijkl",
        RENUM_DATABASE__URL=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}",
    )
    # Run outside the repository so no .env file is picked up.
    return Cli(env=env, cwd=tmp_path)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.splitlines()[-lines:])


def assert_ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}:\n{tail(output(result))}"
    return output(result)


def assert_clean_failure(result: subprocess.CompletedProcess[str], code: int) -> str:
    text = output(result)
    assert "Traceback" not in text, f"a traceback instead of a message:\n{tail(text)}"
    assert result.returncode == code, f"expected exit {code}, got {result.returncode}:\n{text}"
    return text


def test_version(cli: Cli) -> None:
    from app import __version__

    assert f"renum {__version__}" in assert_ok(cli("version"))


def test_help_lists_the_commands(cli: Cli) -> None:
    text = assert_ok(cli("--help"))
    for command in ("serve", "db", "users", "version"):
        assert command in text


@pytest.mark.drill  # a long scenario: run by `nox -s drills`
def test_database_lifecycle_and_admin_creation(cli: Cli) -> None:
    pending = assert_ok(cli("db", "current"))
    assert "current: none" in pending
    assert "pending" in pending

    assert "upgraded" in assert_ok(cli("db", "upgrade"))
    current = assert_ok(cli("db", "current"))
    assert "up to date" in current
    assert "current: none" not in current

    created = cli(
        "users", "create-admin", "--email", "Ops@Example.com", RENUM_ADMIN_PASSWORD=ADMIN_PASSWORD
    )
    assert "ops@example.com" in assert_ok(created).lower()
    assert ADMIN_PASSWORD not in output(created)

    duplicate = cli(
        "users", "create-admin", "--email", "ops@example.com", RENUM_ADMIN_PASSWORD=ADMIN_PASSWORD
    )
    assert "already exists" in assert_clean_failure(duplicate, 1)

    bad_email = cli(
        "users", "create-admin", "--email", "not-an-email", RENUM_ADMIN_PASSWORD="x" * 12
    )
    assert "email" in assert_clean_failure(bad_email, 2).lower()

    short = cli("users", "create-admin", "--email", "new@example.com", RENUM_ADMIN_PASSWORD="short")
    assert "8 characters" in assert_clean_failure(short, 2)

    assert "downgraded" in assert_ok(cli("db", "downgrade", "base"))
    after = assert_ok(cli("db", "current"))
    assert "current: none" in after
    assert "pending" in after


def test_invalid_settings_exit_2_with_a_readable_message(cli: Cli) -> None:
    text = assert_clean_failure(cli("db", "current", RENUM_SECRET_KEY="short"), 2)
    assert "Invalid configuration" in text
    assert "RENUM_SECRET_KEY" in text
    assert "32 characters" in text
    text = assert_clean_failure(cli("db", "current", RENUM_DATABASE__URL="mysql://db/renum"), 2)
    assert "RENUM_DATABASE__URL" in text


def test_create_admin_before_migrating_fails_cleanly(cli: Cli) -> None:
    """An operator who forgot `renum db upgrade` gets a message, not a stack trace."""
    result = cli(
        "users", "create-admin", "--email", "early@example.com", RENUM_ADMIN_PASSWORD=ADMIN_PASSWORD
    )
    text = assert_clean_failure(result, 1)
    assert "renum db upgrade" in text


@pytest.mark.drill  # a long scenario: run by `nox -s drills`
def test_cli_admin_logs_in_to_a_server_on_that_database(
    cli: Cli, launch_backend: LaunchBackend
) -> None:
    assert_ok(cli("db", "upgrade"))
    assert_ok(
        cli(
            "users",
            "create-admin",
            "--email",
            "cli-admin@example.com",
            RENUM_ADMIN_PASSWORD=ADMIN_PASSWORD,
        )
    )
    server = launch_backend(
        "sqlite", extra_env={"RENUM_DATABASE__URL": cli.env["RENUM_DATABASE__URL"]}
    )
    with ApiClient(server.base_url) as admin:
        admin.login("cli-admin@example.com", ADMIN_PASSWORD)
        me = expect(admin.get(f"{API}/users/me"), 200)
        assert me["role"] == "admin"
        users = expect(admin.get(f"{API}/users"), 200)
    # The database already had a user, so the server bootstrapped nobody.
    assert [user["email"] for user in users["items"]] == ["cli-admin@example.com"]
