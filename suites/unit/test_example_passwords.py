"""The passwords the API's examples print are refused where the settings say so (every
environment but development and test): by the request models that set a password, and by the
CLI that creates admins or resets passwords."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import Environment, Settings
from app.core.example_passwords import (
    EXAMPLE_NEW_PASSWORD,
    EXAMPLE_PASSWORD,
    refuse_example_passwords,
)
from app.main import create_app
from app.schemas.accounts import AccountCreate
from app.schemas.users import PasswordChange, UserCreate
from suites.unit.conftest import MakeSettings

runner = CliRunner()


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    path = tmp_path / "cli" / "renum.db"
    monkeypatch.setenv("RENUM_DATABASE__URL", f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
def refusing() -> None:
    refuse_example_passwords(True)  # conftest's example_passwords_accepted undoes it


def _user(password: str) -> UserCreate:
    return UserCreate.model_validate(
        {"email": "ada@acme.example", "full_name": "Ada", "password": password, "role": "member"}
    )


@pytest.mark.parametrize(
    ("environment", "refused"),
    [
        (Environment.development, False),
        (Environment.test, False),
        (Environment.staging, True),
        (Environment.production, True),
    ],
)
def test_only_development_and_test_accept_them_by_default(
    environment: Environment, refused: bool
) -> None:
    assert Settings(environment=environment).auth.refuse_example_passwords is refused


@pytest.mark.usefixtures("refusing")
def test_every_model_that_sets_a_password_refuses_them() -> None:
    for build in (
        lambda: _user(EXAMPLE_PASSWORD),
        lambda: AccountCreate.model_validate(
            {"name": "Acme", "owner_email": "o@acme.example", "owner_password": EXAMPLE_PASSWORD}
        ),
        lambda: PasswordChange.model_validate(
            {"current_password": EXAMPLE_PASSWORD, "new_password": EXAMPLE_NEW_PASSWORD}
        ),
    ):
        with pytest.raises(ValidationError) as refused:
            build()
        [error] = refused.value.errors()
        assert error["type"] == "example_password"
        assert (
            error["msg"]
            == "this password is printed in the API's published examples; choose another"
        )
    assert _user("a-passphrase-of-my-own").password == "a-passphrase-of-my-own"


def test_accepted_where_the_settings_allow_them() -> None:
    refuse_example_passwords(False)
    assert _user(EXAMPLE_PASSWORD).password == EXAMPLE_PASSWORD


def test_the_app_applies_the_setting(make_settings: MakeSettings) -> None:
    create_app(make_settings(auth={"refuse_example_passwords": True}))
    with pytest.raises(ValidationError):
        _user(EXAMPLE_PASSWORD)
    create_app(make_settings())  # the test profile accepts them
    assert _user(EXAMPLE_PASSWORD).password == EXAMPLE_PASSWORD


def test_the_cli_refuses_them_too(database: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    monkeypatch.setenv("RENUM_AUTH__REFUSE_EXAMPLE_PASSWORDS", "true")
    args = ["users", "create-admin", "--email", "ops@example.com", "--password"]
    result = runner.invoke(cli, [*args, EXAMPLE_PASSWORD])
    assert result.exit_code == 2
    assert "printed in the API's published examples" in " ".join(result.stderr.split())
    assert runner.invoke(cli, [*args, "a-passphrase-of-my-own"]).exit_code == 0
