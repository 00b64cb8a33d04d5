"""Per-environment configuration: profiles as data, the precedence of the sources (values in
code, environment variables, .env, the config file, the profile, the defaults) and where each
value came from; every unsafe production setting refused at once, development warned; the
`renum config check` and `renum config show` commands, with every secret masked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import Environment, LogFormat, Settings
from app.core.config_rules import RULES, Severity, check_settings, refuse_unsafe
from app.core.config_sources import ConfigFileError, setting_sources
from app.core.config_view import MASK, effective_configuration, mask_url
from app.core.profiles import PROFILES, profile_value

runner = CliRunner()
SAFE_SECRET = "s" * 40
KEYS = "k1:" + "A" * 43 + "="
# Canary values for every secret setting: none may appear in any output.
CANARIES = {
    "RENUM_SECRET_KEY": "canary-secret-key-0123456789-abcdefghijklmnop",
    "RENUM_ENCRYPTION_KEYS": "k1:Y2FuYXJ5LWVuY3J5cHRpb24ta2V5LTAxMjM0NTY3ODk=",
    "RENUM_PROVIDERS__OPENAI_API_KEY": "sk-canary-openai-key-0123456789",
    "RENUM_HEALTH__PROBE_TOKEN": "canary-probe-token-0123456789",
    "RENUM_BOOTSTRAP_ADMIN_PASSWORD": "canary-admin-password-0123",
    "RENUM_DATABASE__URL": "postgresql+asyncpg://renum:canary-db-password@127.0.0.1/renum",
    "RENUM_REDIS_URL": "redis://:canary-redis-password@127.0.0.1:6379/0",
}
CANARY_TEXTS = ["canary-secret-key", "Y2FuYXJ5", "sk-canary", "canary-probe", "canary-admin"]
CANARY_TEXTS += ["canary-db-password", "canary-redis-password"]


# -- profiles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("environment", list(PROFILES))
def test_each_profile_gives_its_defaults(environment: str) -> None:
    settings = Settings(environment=environment, secret_key=SAFE_SECRET)
    assert settings.log_format.value == profile_value(environment, "log_format")
    assert settings.metrics.public is profile_value(environment, "metrics.public")
    assert settings.docs.enabled is profile_value(environment, "docs.enabled")
    assert settings.database.pool_size == profile_value(environment, "database.pool_size")


def test_every_environment_has_a_profile_and_profiles_name_real_settings() -> None:
    assert set(PROFILES) == {e.value for e in Environment}
    fields = Settings.model_fields
    for profile in PROFILES.values():
        for key, value in profile.items():
            assert key in fields, key
            if isinstance(value, dict):
                section = fields[key].annotation
                assert isinstance(section, type)
                assert set(value) <= set(section.model_fields), key


def test_production_profile_is_hardened() -> None:
    settings = Settings(environment="production", secret_key=SAFE_SECRET)
    assert settings.json_logs
    assert settings.docs.enabled is False
    assert settings.metrics.is_public(settings.environment) is False
    assert settings.database.pool_size > Settings().database.pool_size


# -- sources and their precedence ------------------------------------------------------------


def test_sources_in_order_and_where_each_value_came_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "renum.toml"
    config.write_text(
        'environment = "staging"\nlog_level = "WARNING"\napp_name = "from file"\n'
        "[database]\npool_size = 11\necho = false\n[teams]\nmax_members = 7\n"
    )
    (tmp_path / ".env").write_text("RENUM_LOG_LEVEL=ERROR\nRENUM_APP_NAME=from dotenv\n")
    monkeypatch.setenv("RENUM_CONFIG_FILE", str(config))
    monkeypatch.setenv("RENUM_APP_NAME", "from environment")
    monkeypatch.setenv("RENUM_SECRET_KEY", SAFE_SECRET)

    settings = Settings(teams={"max_members": 3})
    assert settings.environment is Environment.staging  # the file chose the profile
    assert settings.app_name == "from environment"
    assert settings.log_level == "ERROR"  # .env beats the file
    assert settings.database.pool_size == 11  # the file beats the staging profile (10)
    assert settings.teams.max_members == 3  # values in code beat everything
    assert settings.log_format is LogFormat.json  # the staging profile
    assert settings.auth.access_token_minutes == 15  # the model's default

    sources = setting_sources(Settings, teams={"max_members": 3})
    assert sources["app_name"] == "environment"
    assert sources["log_level"] == "dotenv"
    assert sources["environment"] == "config_file"
    assert sources["database.pool_size"] == "config_file"
    assert sources["teams.max_members"] == "init"
    assert sources["log_format"] == "profile"
    assert "auth.access_token_minutes" not in sources  # a default


def test_a_yaml_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "renum.yaml"
    config.write_text("log_level: WARNING\ndatabase:\n  pool_size: 9\n")
    monkeypatch.setenv("RENUM_CONFIG_FILE", str(config))
    settings = Settings()
    assert (settings.log_level, settings.database.pool_size) == ("WARNING", 9)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.toml", None, "which is not a readable file"),
        ("renum.ini", "x = 1", "must name a .toml, .yaml or .yml file"),
        ("broken.toml", "log_level = ", "cannot be parsed"),
    ],
)
def test_a_bad_config_file_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("RENUM_CONFIG_FILE", str(path))
    with pytest.raises(ConfigFileError, match=message):
        Settings()
    result = runner.invoke(cli, ["config", "check"])
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.output


# -- rules -----------------------------------------------------------------------------------


def unsafe_production() -> Settings:
    return Settings(
        environment="production",
        cors_origins="*",
        log_level="DEBUG",
        database={"echo": True},
        providers={"openai_base_url": "http://models.example/v1"},
        metrics={"public": True},
        workers=4,
        auth={"password_hash": {"memory_kib": 1024, "time_cost": 1}},
    )


def test_every_production_refusal_is_reported_in_one_run() -> None:
    problems = check_settings(unsafe_production())
    errors = {p.rule for p in problems if p.severity is Severity.error}
    warnings = {p.rule for p in problems if p.severity is Severity.warning}
    assert errors == {
        "secret-key-default",
        "encryption-keys-missing",
        "cors-open",
        "provider-plain-http",
        "sql-echo",
        "sqlite-workers",
        "password-hash-weak",
    }
    assert warnings == {"debug-logs", "metrics-public", "probe-token-missing"}
    assert {p.rule for p in problems} == {rule.id for rule in RULES}  # every rule can fire
    for problem in problems:
        assert problem.setting.startswith("RENUM_")
        assert problem.message
        assert problem.fix


def test_staging_refuses_like_production_and_development_only_warns() -> None:
    staging = unsafe_production().model_copy(update={"environment": Environment.staging})
    assert any(p.severity is Severity.error for p in check_settings(staging))
    development = Settings(cors_origins="*", database={"echo": True}, workers=2)
    problems = check_settings(development)
    assert {p.rule for p in problems} == {"secret-key-default", "cors-open", "sqlite-workers"}
    assert all(p.severity is Severity.warning for p in problems)
    assert check_settings(Settings(environment="test")) == []


def test_a_safe_production_configuration_starts_with_warnings_at_most() -> None:
    settings = Settings(
        environment="production",
        secret_key=SAFE_SECRET,
        encryption_keys=KEYS,
        health={"probe_token": "p" * 20},
    )
    assert refuse_unsafe(settings) == []


def test_password_hashes_below_owasp_s_minimum_are_refused_where_it_matters() -> None:
    (problem,) = [p for p in check_settings(unsafe_production()) if p.rule == "password-hash-weak"]
    assert problem.setting == "RENUM_AUTH__PASSWORD_HASH"
    assert "1024 KiB and 1 passes" in problem.message
    minimum = {"password_hash": {"memory_kib": 19_456, "time_cost": 2, "parallelism": 1}}
    safe = Settings(environment="production", auth=minimum)
    assert "password-hash-weak" not in {p.rule for p in check_settings(safe)}
    # The test environment (the harness's launched backends) may make them cheap.
    cheap = {"password_hash": {"memory_kib": 1024, "time_cost": 1, "parallelism": 1}}
    assert check_settings(Settings(environment="test", auth=cheap)) == []


def test_several_workers_need_postgresql() -> None:
    postgres = {"url": "postgresql+asyncpg://renum@127.0.0.1/renum"}
    on_postgres = Settings(environment="production", workers=4, database=postgres)
    assert "sqlite-workers" not in {p.rule for p in check_settings(on_postgres)}
    one = Settings(environment="production", workers=1)
    assert "sqlite-workers" not in {p.rule for p in check_settings(one)}
    (problem,) = [p for p in check_settings(unsafe_production()) if p.rule == "sqlite-workers"]
    assert problem.setting == "RENUM_WORKERS"
    assert "SQLite with 4 worker processes" in problem.message


def test_loopback_provider_urls_may_be_plain_http() -> None:
    for url in ("http://127.0.0.1:8080/v1", "http://localhost/v1", "http://[::1]:9/v1"):
        settings = Settings(environment="production", providers={"openai_base_url": url})
        assert "provider-plain-http" not in {p.rule for p in check_settings(settings)}


def test_each_problem_says_where_the_value_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENUM_CORS_ORIGINS", "*")
    settings = Settings(environment="production")
    problems = {p.rule: p for p in check_settings(settings, setting_sources(Settings))}
    assert problems["cors-open"].source == "environment"
    assert problems["secret-key-default"].source == "default"
    assert problems["cors-open"].line().startswith("error: RENUM_CORS_ORIGINS (from environment)")


# -- the commands ----------------------------------------------------------------------------


def test_config_check_exit_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENUM_ENVIRONMENT", "test")
    assert runner.invoke(cli, ["config", "check"]).exit_code == 0
    monkeypatch.setenv("RENUM_ENVIRONMENT", "development")
    warned = runner.invoke(cli, ["config", "check"])
    assert warned.exit_code == 1
    assert "warning: RENUM_SECRET_KEY (from default)" in warned.output
    refused = runner.invoke(cli, ["config", "check", "--environment", "production", "--json"])
    assert refused.exit_code == 2
    body = json.loads(refused.output)
    assert body["environment"] == "production"
    assert body["status"] == "fail"
    assert {p["rule"] for p in body["problems"]} >= {
        "secret-key-default",
        "encryption-keys-missing",
    }


def test_config_show_lists_every_setting_with_its_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENUM_TEAMS__MAX_MEMBERS", "4")
    result = runner.invoke(cli, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["setting"]: row for row in json.loads(result.output)}
    assert rows["teams.max_members"] == {
        "setting": "teams.max_members",
        "variable": "RENUM_TEAMS__MAX_MEMBERS",
        "value": 4,
        "source": "environment",
        "secret": False,
    }
    assert rows["log_format"]["source"] == "profile"
    assert rows["auth.audience"]["source"] == "default"
    assert rows["secret_key"]["value"] == MASK
    table = runner.invoke(cli, ["config", "show"], terminal_width=200)
    assert "RENUM_TEAMS__MAX_MEMBERS" in table.output


def test_no_secret_reaches_any_output_of_the_config_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RENUM_CORS_ORIGINS", "*")
    outputs = []
    for command in (
        ["config", "show"],
        ["config", "show", "--json"],
        ["config", "check"],
        ["config", "check", "--json"],
        ["config", "check", "--environment", "production"],
    ):
        result = runner.invoke(cli, command, terminal_width=300)
        outputs.append(result.output)
    views = effective_configuration(Settings(), setting_sources(Settings))
    outputs.append(json.dumps([view.as_dict() for view in views]))
    text = "\n".join(outputs)
    for canary in CANARY_TEXTS:
        assert canary not in text, canary
    secret_rows = {view.setting for view in views if view.secret}
    assert {"secret_key", "providers.openai_api_key", "database.url", "redis_url"} <= secret_rows


def test_url_masking() -> None:
    assert (
        mask_url("postgresql+asyncpg://u:pw@db:5432/x")
        == f"postgresql+asyncpg://u:{MASK}@db:5432/x"
    )
    assert mask_url("redis://:pw@cache/0") == f"redis://:{MASK}@cache/0"
    assert mask_url("https://api.example/v1") == "https://api.example/v1"
