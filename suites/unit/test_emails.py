"""Email addresses: one check for the API and the CLI, with the special-use domains the
settings accept (development and test accept `local`, the default first admin's domain)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import email_validator
import pytest
from pydantic import TypeAdapter, ValidationError
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import Environment, Settings
from app.core.emails import SPECIAL_USE_DOMAINS, accept_special_use_domains, normalized_email
from app.schemas.common import Email
from app.services.bootstrap import DEFAULT_ADMIN_EMAIL

EMAIL = TypeAdapter(Email)


@pytest.fixture(autouse=True)
def restore_the_accepted_domains() -> Iterator[None]:
    yield
    accept_special_use_domains(Settings().auth.special_use_email_domains)


def test_the_default_first_admin_s_address_is_accepted_where_it_is_the_default() -> None:
    for environment in (Environment.development, Environment.test):
        domains = Settings(environment=environment).auth.special_use_email_domains
        accept_special_use_domains(domains)
        assert normalized_email(DEFAULT_ADMIN_EMAIL) == DEFAULT_ADMIN_EMAIL
        assert EMAIL.validate_python(DEFAULT_ADMIN_EMAIL) == DEFAULT_ADMIN_EMAIL


def test_a_special_use_domain_is_refused_unless_accepted() -> None:
    accept_special_use_domains(["test"])  # the model's default (staging, production)
    assert normalized_email("ops@host.test") == "ops@host.test"
    for address in ("admin@renum.local", "x@site.onion", "a@b.localhost"):
        with pytest.raises(email_validator.EmailNotValidError, match="special-use"):
            normalized_email(address)
        with pytest.raises(ValidationError, match="special-use"):
            EMAIL.validate_python(address)
    accept_special_use_domains([])
    with pytest.raises(email_validator.EmailNotValidError):
        normalized_email("ops@host.test")
    accept_special_use_domains(SPECIAL_USE_DOMAINS)
    assert normalized_email("a@b.localhost") == "a@b.localhost"


def test_only_special_use_names_may_be_accepted() -> None:
    with pytest.raises(ValidationError, match="not special-use domains: com"):
        Settings(auth={"special_use_email_domains": ["local", "com"]})


def test_the_cli_accepts_what_the_settings_accept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RENUM_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path / 'renum.db'}")
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    args = ["users", "create-admin", "--email", "Second@Renum.Local", "--password", "long-enough"]
    monkeypatch.setenv("RENUM_AUTH__SPECIAL_USE_EMAIL_DOMAINS", "[]")
    refused = runner.invoke(cli, args)
    assert refused.exit_code == 2
    assert "special-use" in " ".join(refused.stderr.split())
    monkeypatch.delenv("RENUM_AUTH__SPECIAL_USE_EMAIL_DOMAINS")  # development: local accepted
    created = runner.invoke(cli, args)
    assert created.exit_code == 0, created.output
    assert "Admin Second@renum.local created." in " ".join(created.stdout.split())
