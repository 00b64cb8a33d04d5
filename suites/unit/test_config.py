"""The settings model: defaults, environment variables, parsing and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.config import (
    DEV_SECRET_KEY,
    DatabaseSettings,
    DocsSettings,
    Environment,
    LogFormat,
    Settings,
)
from app.core.config_rules import UnsafeConfiguration, refuse_unsafe

LONG_SECRET = "x" * 32
KEYS = "k1:" + "A" * 43 + "="


def test_defaults_are_the_embedded_development_setup() -> None:
    settings = Settings()
    assert settings.environment is Environment.development
    assert settings.app_name == "Renum"
    assert settings.secret_key.get_secret_value() == DEV_SECRET_KEY
    assert settings.encryption_keys == {}
    assert settings.log_level == "INFO"
    assert settings.log_format is LogFormat.console  # the development profile
    assert settings.cors_origins == []
    assert settings.max_body_bytes == 1_048_576
    assert settings.redis_url is None
    assert settings.database.url == "sqlite+aiosqlite:///./renum.db"
    assert settings.database.is_sqlite
    assert settings.database.auto_migrate is True
    assert settings.database.pool_size == 5
    assert settings.auth.access_token_minutes == 15
    assert settings.auth.refresh_token_days == 14
    assert (settings.auth.audience, settings.auth.issuer) == ("renum-api", "renum")
    assert settings.bootstrap_admin_email is None
    assert settings.bootstrap_admin_password is None


def test_secrets_are_not_shown_in_repr() -> None:
    settings = Settings(bootstrap_admin_password="hunter2-hunter2")
    assert DEV_SECRET_KEY not in repr(settings)
    assert "hunter2-hunter2" not in repr(settings)


def test_environment_variables_use_the_prefix_and_double_underscore_nesting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RENUM_ENVIRONMENT", "staging")
    monkeypatch.setenv("RENUM_SECRET_KEY", LONG_SECRET)
    monkeypatch.setenv("RENUM_APP_NAME", "Renum QA")
    monkeypatch.setenv("RENUM_DATABASE__URL", "postgresql+asyncpg://u@db:5432/renum")
    monkeypatch.setenv("RENUM_DATABASE__POOL_SIZE", "12")
    monkeypatch.setenv("RENUM_AUTH__ACCESS_TOKEN_MINUTES", "5")
    monkeypatch.setenv("RENUM_BOOTSTRAP_ADMIN_EMAIL", "ops@example.com")
    monkeypatch.setenv("RENUM_BOOTSTRAP_ADMIN_PASSWORD", "bootstrap-pass")
    monkeypatch.setenv("RENUM_REDIS_URL", "redis://cache:6379/1")
    monkeypatch.setenv("APP_NAME", "not prefixed, ignored")
    settings = Settings()
    assert settings.environment is Environment.staging
    assert settings.secret_key.get_secret_value() == LONG_SECRET
    assert settings.app_name == "Renum QA"
    assert settings.database.url == "postgresql+asyncpg://u@db:5432/renum"
    assert not settings.database.is_sqlite
    assert settings.database.pool_size == 12
    assert settings.auth.access_token_minutes == 5
    assert settings.bootstrap_admin_email == "ops@example.com"
    assert settings.bootstrap_admin_password is not None
    assert settings.bootstrap_admin_password.get_secret_value() == "bootstrap-pass"
    assert settings.redis_url == "redis://cache:6379/1"


def test_dotenv_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RENUM_APP_NAME=From dotenv\nRENUM_LOG_LEVEL=debug\n")
    settings = Settings()
    assert settings.app_name == "From dotenv"
    assert settings.log_level == "DEBUG"


def test_environment_beats_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("RENUM_APP_NAME=From dotenv\n")
    monkeypatch.setenv("RENUM_APP_NAME", "From env")
    assert Settings().app_name == "From env"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://a.example", ["https://a.example"]),
        (
            " https://a.example , https://b.example:8443,,",
            ["https://a.example", "https://b.example:8443"],
        ),
        ("", []),
        (" , ", []),
    ],
)
def test_cors_origins_are_comma_separated(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]
) -> None:
    monkeypatch.setenv("RENUM_CORS_ORIGINS", raw)
    assert Settings().cors_origins == expected


def test_cors_origins_accept_a_list_in_code() -> None:
    assert Settings(cors_origins=["https://x.example"]).cors_origins == ["https://x.example"]


def test_encryption_keys_parse_id_colon_key_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENUM_ENCRYPTION_KEYS", "k2:bmV3ZXI=, k1:b2xkZXI=:with-colon ,")
    keys = Settings().encryption_keys
    assert list(keys) == ["k2", "k1"]  # order kept: the first is the current key
    assert keys["k2"].get_secret_value() == "bmV3ZXI="
    assert keys["k1"].get_secret_value() == "b2xkZXI=:with-colon"


def test_encryption_keys_accept_a_mapping_in_code() -> None:
    keys = Settings(encryption_keys={"a": "secret"}).encryption_keys
    assert keys["a"].get_secret_value() == "secret"


@pytest.mark.parametrize("raw", ["nokey", ":material", "id:", "good:x,bad"])
def test_malformed_encryption_keys_are_refused(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("RENUM_ENCRYPTION_KEYS", raw)
    with pytest.raises(ValidationError, match="id:base64key"):
        Settings()


@pytest.mark.parametrize("level", ["debug", "Info", "WARNING", "error", "critical"])
def test_log_level_is_normalised_to_upper_case(level: str) -> None:
    assert Settings(log_level=level).log_level == level.upper()


@pytest.mark.parametrize("level", ["verbose", "trace", "", "WARN"])
def test_unknown_log_level_is_refused(level: str) -> None:
    with pytest.raises(ValidationError, match="log_level must be one of"):
        Settings(log_level=level)


@pytest.mark.parametrize(
    "url",
    ["sqlite:///plain.db", "mysql://nope", "postgresql://u@h/db", "postgres+asyncpg://x", "x"],
)
def test_unsupported_database_url_scheme_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="sqlite\\+aiosqlite:// or postgresql\\+asyncpg://"):
        DatabaseSettings(url=url)


def test_database_url_error_names_the_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENUM_DATABASE__URL", "mysql://root@localhost/renum")
    with pytest.raises(ValidationError) as caught:
        Settings()
    (error,) = caught.value.errors()
    assert error["loc"] == ("database", "url")
    assert "'mysql'" in error["msg"]


@pytest.mark.parametrize("pool_size", [0, 101])
def test_pool_size_bounds(pool_size: int) -> None:
    with pytest.raises(ValidationError):
        DatabaseSettings(pool_size=pool_size)


def test_max_body_bytes_has_a_floor() -> None:
    with pytest.raises(ValidationError):
        Settings(max_body_bytes=1023)
    assert Settings(max_body_bytes=1024).max_body_bytes == 1024


def test_secret_key_shorter_than_32_characters_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(secret_key="x" * 31)
    assert Settings(secret_key="x" * 32).secret_key.get_secret_value() == "x" * 32


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_development_secret_is_refused_in_staging_and_production(environment: str) -> None:
    with pytest.raises(UnsafeConfiguration, match="RENUM_SECRET_KEY") as refused:
        refuse_unsafe(Settings(environment=environment))
    assert "the development default signs tokens" in str(refused.value)
    safe = Settings(environment=environment, secret_key=LONG_SECRET, encryption_keys=KEYS)
    assert refuse_unsafe(safe)  # warnings only (no probe token)


@pytest.mark.parametrize("environment", ["development", "test"])
def test_development_secret_is_allowed_in_development_and_test(environment: str) -> None:
    assert Settings(environment=environment).secret_key.get_secret_value() == DEV_SECRET_KEY


def test_unknown_environment_is_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(environment="qa")


@pytest.mark.parametrize(
    ("environment", "log_format", "expected"),
    [
        ("development", "auto", False),
        ("test", "auto", True),
        ("staging", "auto", True),
        ("production", "auto", True),
        ("development", "json", True),
        ("production", "console", False),
        ("test", "console", False),
    ],
)
def test_json_logs_follow_the_format_and_environment(
    environment: str, log_format: str, expected: bool
) -> None:
    settings = Settings(environment=environment, log_format=log_format, secret_key=LONG_SECRET)
    assert settings.json_logs is expected


def test_empty_bootstrap_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENUM_BOOTSTRAP_ADMIN_EMAIL", "")
    monkeypatch.setenv("RENUM_BOOTSTRAP_ADMIN_PASSWORD", "")
    settings = Settings()
    assert settings.bootstrap_admin_email is None
    assert settings.bootstrap_admin_password is None


def test_unknown_settings_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENUM_NOT_A_SETTING", "1")
    assert not hasattr(Settings(), "not_a_setting")


def test_provider_base_url_must_be_http_and_loses_its_trailing_slash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RENUM_PROVIDERS__OPENAI_BASE_URL", "http://127.0.0.1:9999/v1/")
    assert Settings().providers.openai_base_url == "http://127.0.0.1:9999/v1"
    monkeypatch.setenv("RENUM_PROVIDERS__OPENAI_BASE_URL", "ftp://example.com")
    with pytest.raises(ValidationError, match="http:// or https://"):
        Settings()


@pytest.mark.parametrize(
    ("environment", "public", "expected"),
    [
        ("development", None, True),
        ("test", None, True),
        ("staging", None, True),
        ("production", None, False),
        ("production", True, True),
        ("development", False, False),
    ],
)
def test_metrics_are_public_outside_production_unless_set(
    environment: str, public: bool | None, expected: bool
) -> None:
    settings = Settings(environment=environment, secret_key="k" * 40, metrics={"public": public})
    assert settings.metrics.is_public(settings.environment) is expected


@pytest.mark.parametrize(
    ("site", "link", "address"),
    [
        (
            "http://127.0.0.1:8001/",
            "troubleshooting.md#database",
            "http://127.0.0.1:8001/troubleshooting/#database",
        ),
        (
            "https://docs.example.org/renum",
            "reference/health.md",
            "https://docs.example.org/renum/reference/health/",
        ),
        ("https://docs.example.org", "index.md#start", "https://docs.example.org/#start"),
        ("https://docs.example.org", "reference/index.md", "https://docs.example.org/reference/"),
        ("https://docs.example.org", "reindex.md", "https://docs.example.org/reindex/"),
    ],
)
def test_a_docs_page_link_becomes_its_address_on_the_site(
    site: str, link: str, address: str
) -> None:
    assert DocsSettings(site_url=site).page_url(link) == address


def test_the_docs_site_address_must_be_http() -> None:
    with pytest.raises(ValidationError, match="http:// or https://"):
        DocsSettings(site_url="file:///srv/site")
