"""The pieces of live reload that need no server: the supervisor's decision for several
workers (validate once, then signal every worker, or refuse and signal none), a worker asking
its supervisor to pass a reload on, and the configuration's entry in the dependency report."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest
from starlette.datastructures import State

from app.capabilities.configuration import EnvironmentConfigManager, read_and_validate
from app.capabilities.configuration.checks import ConfigurationCheck
from app.capabilities.configuration.manager import ReloadResult
from app.capabilities.configuration.supervisor import (
    SUPERVISOR_ENV,
    forward_reload,
    notify_supervisor,
    supervised,
)
from app.capabilities.health import CheckContext, Status, registered_checks
from app.core.config import Settings
from app.core.config_view import fingerprint


class Kills:
    """Records the signals ``forward_reload`` sends; ``gone`` pids have exited."""

    def __init__(self, gone: frozenset[int] = frozenset()) -> None:
        self.sent: list[tuple[int, int]] = []
        self.gone = gone

    def __call__(self, pid: int, sig: int) -> None:
        if pid in self.gone:
            raise ProcessLookupError(pid)
        self.sent.append((pid, sig))


# -- the supervisor ----------------------------------------------------------------------------


def test_a_valid_configuration_is_validated_once_and_signalled_to_every_worker() -> None:
    calls = []

    def validate() -> tuple[Settings | None, list[str]]:
        calls.append(1)
        return Settings(), []

    kills = Kills(gone=frozenset({303}))
    assert forward_reload(validate, [101, 202, 303], kills) == [101, 202]
    assert kills.sent == [(101, signal.SIGHUP), (202, signal.SIGHUP)]
    assert len(calls) == 1


def test_a_refused_configuration_reaches_no_worker() -> None:
    kills = Kills()
    refused = forward_reload(lambda: (None, ["log_level: unknown level"]), [101, 202], kills)
    assert refused is None
    assert kills.sent == []


def test_the_supervisor_validates_what_a_start_would(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "renum.toml"
    monkeypatch.setenv("RENUM_CONFIG_FILE", str(config))
    config.write_text('log_level = "LOUD"\n')
    settings, problems = read_and_validate()
    assert settings is None
    assert any(p.startswith("log_level") for p in problems)

    config.write_text('environment = "production"\n')  # valid types, unsafe for production
    settings, problems = read_and_validate()
    assert settings is None
    assert any("RENUM_SECRET_KEY (from default)" in p for p in problems)

    config.write_text("[teams]\nmax_members = 3\n")
    settings, problems = read_and_validate()
    assert settings is not None
    assert settings.teams.max_members == 3
    assert problems == []


def test_a_worker_asks_its_supervisor_to_pass_a_reload_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kills = Kills()
    monkeypatch.setattr(os, "kill", kills)
    assert not supervised()
    assert notify_supervisor() is False  # a single process has no one to tell
    monkeypatch.setenv(SUPERVISOR_ENV, "4242")
    assert supervised()
    assert notify_supervisor() is True
    assert kills.sent == [(4242, signal.SIGHUP)]
    monkeypatch.setattr(os, "kill", Kills(gone=frozenset({4242})))
    assert notify_supervisor() is False  # the supervisor is gone: nothing to do


# -- the dependency report's entry -------------------------------------------------------------


def run_check(settings: Settings, state: State | None) -> tuple[Status, str, object]:
    context = CheckContext(settings=settings, database=None, state=state)  # type: ignore[arg-type]  # the check never touches the database
    (outcome,) = asyncio.run(ConfigurationCheck().run(context))
    return outcome.status, outcome.message, outcome.observed_value


def test_the_configuration_check_is_registered() -> None:
    assert "configuration" in {spec.name for spec in registered_checks()}


def test_the_check_shows_the_fingerprint_without_live_reload() -> None:
    settings = Settings()
    status, message, value = run_check(settings, None)
    assert status is Status.passed
    assert "live reload is off" in message
    assert value == fingerprint(settings)


def test_the_check_warns_while_the_last_reload_stands_refused() -> None:
    settings = Settings()
    manager = EnvironmentConfigManager(settings, lambda _: None)
    state = State({"config_manager": manager})
    status, message, value = run_check(settings, state)
    assert (status, value) == (Status.passed, manager.fingerprint)
    assert "no reload yet" in message

    at = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)
    manager.last = ReloadResult("refused", "SIGHUP", at, manager.fingerprint, [], [], ["bad"])
    status, message, value = run_check(settings, state)
    assert status is Status.warn
    assert "SIGHUP at 2026-12-04 08:00:00Z was refused" in message
    assert message.endswith(": bad")
    assert value == manager.fingerprint

    manager.last = ReloadResult("applied", "api", at, manager.fingerprint, ["log_level"])
    status, message, _ = run_check(settings, state)
    assert status is Status.passed
    assert "last reload applied" in message
