"""The settings model: the single source of the backend's configuration.

Values come, highest first, from the environment (prefix ``RENUM_``, nested with ``__``), a
``.env`` file, the config file named by ``RENUM_CONFIG_FILE`` and the environment's profile
(``app.core.profiles``), over the defaults here (``app.core.config_sources``). One ``Settings``
object is created at start-up and passed down; nothing reads the environment anywhere else.
"""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal
from email.errors import MessageError
from email.headerregistry import Address
from enum import StrEnum
from ipaddress import ip_address
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from app.core.config_sources import ordered_sources
from app.core.egress import parse_allow_entry

# Marks a setting that a reload applies without a restart (the configuration capability's
# reload; every other changed setting is reported as needing a restart).
LIVE: dict[str, Any] = {"reload": "live"}
DEV_SECRET_KEY = "renum-development-secret-key-change-me-0123456789"  # noqa: S105 - refused in staging and production (app.core.config_rules)


class Environment(StrEnum):
    development = "development"
    test = "test"
    staging = "staging"
    production = "production"


class LogFormat(StrEnum):
    auto = "auto"
    json = "json"
    console = "console"


class DatabaseSettings(BaseModel):
    url: str = Field(
        default="sqlite+aiosqlite:///./renum.db",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///path or postgresql+asyncpg://...",
    )
    echo: bool = Field(default=False, description="Log every SQL statement (development only).")
    pool_size: int = Field(default=5, ge=1, le=100, description="PostgreSQL connection pool size.")
    max_overflow: int = Field(
        default=10,
        ge=0,
        le=200,
        description="PostgreSQL connections opened beyond the pool size under a burst, closed "
        "again when returned.",
    )
    pool_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="How long a request waits for a free pooled connection before it is "
        "answered 503.",
    )
    pool_recycle_seconds: int = Field(
        default=1800,
        ge=-1,
        le=86_400,
        description="Pooled connections older than this are replaced (-1: never), so a "
        "server's or proxy's idle timeout never hands out a dead connection.",
    )
    pool_pre_ping: bool = Field(
        default=True,
        description="Test each pooled connection with a round trip when it is checked out "
        "(replaces connections a database restart killed).",
    )
    statement_timeout_ms: int = Field(
        default=30_000,
        ge=0,
        le=3_600_000,
        description="PostgreSQL cancels any statement running longer (0: no limit).",
    )
    command_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How long the driver waits for the server's answer to a statement before "
        "giving up on the connection (a hung server or network).",
    )
    sqlite_busy_timeout_ms: int = Field(
        default=5000,
        ge=0,
        le=600_000,
        description="How long SQLite waits for another writer's lock before failing.",
    )
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = Field(
        default="NORMAL",
        description="SQLite's synchronous level (NORMAL is durable under WAL except across a "
        "power loss; FULL survives that too).",
    )
    auto_migrate: bool = Field(
        default=True,
        description="Apply pending Alembic migrations at start-up. Off (production's "
        "default), `renum db upgrade` is a release step and a start with pending migrations "
        "stops, naming it.",
    )
    connect_timeout_seconds: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description="How long start-up waits for the database to answer before it starts "
        "degraded and retries in the background.",
    )
    retry_interval_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="After a degraded start, how often the skipped migrations and the first "
        "admin are retried.",
    )

    @field_validator("url")
    @classmethod
    def _supported_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "database URL must use sqlite+aiosqlite:// or postgresql+asyncpg:// "
                f"(got scheme {value.split('://', 1)[0]!r})"
            )
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")


class RetentionSettings(BaseModel):
    """How long each kind of data of ended executions is kept (days; unset: forever). The purge
    removes older rows in bounded batches; the ledger's totals survive it (rows are folded into
    daily totals before they go)."""

    events_days: int | None = Field(
        default=None,
        ge=1,
        le=36_500,
        json_schema_extra=LIVE,
        description="Execution events.",
    )
    steps_days: int | None = Field(
        default=None,
        ge=1,
        le=36_500,
        json_schema_extra=LIVE,
        description="Execution steps (their inputs and outputs).",
    )
    messages_days: int | None = Field(
        default=None,
        ge=1,
        le=36_500,
        json_schema_extra=LIVE,
        description="Messages between agents and people.",
    )
    context_days: int | None = Field(
        default=None,
        ge=1,
        le=36_500,
        json_schema_extra=LIVE,
        description="Versions of the executions' shared context.",
    )
    ledger_days: int | None = Field(
        default=None,
        ge=1,
        le=36_500,
        json_schema_extra=LIVE,
        description="Ledger rows (each model call's tokens and cost); their daily totals stay.",
    )
    rollups_days: int | None = Field(
        default=None,
        ge=1,
        le=36_500,
        json_schema_extra=LIVE,
        description="Daily totals of purged ledger rows, and the usage and execution rollups "
        "of those days.",
    )
    interval_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=86_400,
        json_schema_extra=LIVE,
        description="How often the background purge runs.",
    )
    batch_size: int = Field(
        default=500,
        ge=1,
        le=100_000,
        json_schema_extra=LIVE,
        description="Rows removed per transaction (short transactions never lock a table "
        "for long).",
    )


class LastKnownSettings(BaseModel):
    """Reads answered from their last known state while the database is away."""

    enabled: bool = Field(
        default=True,
        json_schema_extra=LIVE,
        description="While the circuit breaker is open, answer a GET the same caller made "
        "before with its last answer (marked with `Age` and `Cache-Status`).",
    )
    max_entries: int = Field(
        default=500,
        ge=1,
        le=1_000_000,
        json_schema_extra=LIVE,
        description="Answers kept per process (the least recently used go first); with "
        "`max_body_bytes`, the memory they may take: about 31 MiB with the defaults.",
    )
    max_body_bytes: int = Field(
        default=65_536,
        ge=256,
        le=16_777_216,
        json_schema_extra=LIVE,
        description="Larger answers are not kept.",
    )
    max_age_seconds: float = Field(
        default=900.0,
        gt=0,
        le=86_400,
        json_schema_extra=LIVE,
        description="Older answers are not served.",
    )


class DatabaseManagerSettings(BaseModel):
    """The database manager capability: a circuit breaker that answers 503 at once while the
    database is away, pool and slow-query figures for the monitor, the per-request query budget
    and the retention purge. Pool and driver settings are the `database` section's."""

    enabled: bool = Field(
        default=True,
        description="Run the database manager. Off, requests wait for the database as the base "
        "layer does and nothing is purged (the rollback switch).",
    )
    breaker_failures: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Consecutive connection failures that open the circuit breaker.",
    )
    breaker_probe_seconds: float = Field(
        default=2.0,
        gt=0,
        le=300,
        json_schema_extra=LIVE,
        description="While the breaker is open, how often one probe tries the database.",
    )
    retry_after_seconds: int = Field(
        default=5,
        ge=1,
        le=3600,
        json_schema_extra=LIVE,
        description="`Retry-After` of the 503 answered while the database is away.",
    )
    transient_retries: int = Field(
        default=3,
        ge=0,
        le=10,
        description="Times an idempotent operation is retried after a serialization failure, "
        "a deadlock or a dropped connection.",
    )
    slow_query_ms: float = Field(
        default=250.0,
        gt=0,
        json_schema_extra=LIVE,
        description="Statements slower than this are logged (parameters masked) with their "
        "route, and counted on `/metrics`.",
    )
    query_budget: int = Field(
        default=40,
        ge=1,
        le=10_000,
        json_schema_extra=LIVE,
        description="Queries one API request may issue before it is logged as over budget "
        "(counted in development and test only).",
    )
    query_budgets: dict[str, int] = Field(
        default_factory=dict,
        json_schema_extra=LIVE,
        description="Per-route budgets that replace `query_budget`, keyed by "
        "`METHOD /path/template`.",
    )
    retention: RetentionSettings = Field(
        default_factory=lambda: RetentionSettings(),
        description="How long each kind of data is kept, and the purge.",
    )
    last_known: LastKnownSettings = Field(
        default_factory=lambda: LastKnownSettings(),
        description="Reads answered from their last known state during an outage.",
    )


class PasswordHashSettings(BaseModel):
    """Argon2id's cost per password hash (RFC 9106). The defaults are argon2-cffi's (64 MiB,
    3 passes, 4 lanes); staging and production refuse less than OWASP's minimum (19 MiB and
    2 passes). Each hash records its own cost, so a change applies to new passwords only."""

    memory_kib: int = Field(
        default=65_536, ge=8, le=4_194_304, description="Memory per hash, in KiB."
    )
    time_cost: int = Field(default=3, ge=1, le=20, description="Passes over that memory.")
    parallelism: int = Field(default=4, ge=1, le=16, description="Lanes (threads) per hash.")


class AuthSettings(BaseModel):
    access_token_minutes: int = Field(
        default=15, ge=1, le=1440, description="Lifetime of a JWT access token."
    )
    refresh_token_days: int = Field(
        default=14, ge=1, le=365, description="Lifetime of a refresh token."
    )
    audience: str = Field(default="renum-api", description="JWT `aud` claim.")
    issuer: str = Field(default="renum", description="JWT `iss` claim.")
    special_use_email_domains: list[str] = Field(
        default=["test"],
        description="Special-use domains (RFC 6761) accepted in email addresses, by the API "
        'and the CLI alike, as JSON (`["local", "test"]`); any of `arpa`, `invalid`, '
        "`local`, `localhost`, `onion`, `test`. Development and test also accept `local`, the "
        "domain of the default first admin.",
    )
    refuse_example_passwords: bool = Field(
        default=True,
        description="Refuse, by the API and the CLI, a password equal to one the API's "
        "published examples print (anyone can read those). Off in development and test, "
        "whose fresh backends run the examples as shown.",
    )
    password_hash: PasswordHashSettings = Field(
        default_factory=lambda: PasswordHashSettings(),
        description="Argon2id's cost for new password hashes (each hash keeps the cost it "
        "was made with).",
    )

    @field_validator("special_use_email_domains")
    @classmethod
    def _known_special_use(cls, value: list[str]) -> list[str]:
        from app.core.emails import SPECIAL_USE_DOMAINS

        unknown = sorted(set(value) - set(SPECIAL_USE_DOMAINS))
        if unknown:
            raise ValueError(
                f"not special-use domains: {', '.join(unknown)} (known: "
                f"{', '.join(SPECIAL_USE_DOMAINS)}); other domains need no setting"
            )
        return value


class ModelPrice(BaseModel):
    input_per_mtok: Decimal = Field(ge=0, description="USD per million input tokens.")
    output_per_mtok: Decimal = Field(ge=0, description="USD per million output tokens.")


class ProviderSettings(BaseModel):
    openai_base_url: str = Field(
        default="https://api.openai.com/v1",
        description="Default base URL of the OpenAI-compatible Chat Completions API.",
    )
    openai_api_key: SecretStr | None = Field(
        default=None,
        description="The platform's key: sent only to the platform base URL, for agents "
        "there without a provider key of their own.",
    )
    price_overrides: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="Per-model prices replacing the built-in table, as JSON: "
        '`{"model": {"input_per_mtok": "0.15", "output_per_mtok": "0.6"}}`.',
    )

    @field_validator("openai_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


def _keys_by_id(value: object, shape: str) -> object:
    """``id:key,id2:key2`` (an environment variable's text) as a mapping of id to key; a
    mapping passes as it is. ``shape`` is the error an entry of another shape gets."""
    if not isinstance(value, str):
        return value
    keys: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        key_id, sep, material = item.partition(":")
        if not sep or not key_id or not material:
            raise ValueError(shape)
        keys[key_id] = material
    return keys


def _split_commas(value: object) -> object:
    """A comma-separated environment value as a list; lists and JSON pass through."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class EgressSettings(BaseModel):
    """Outbound HTTP made on a tenant's behalf (model calls to a tenant's base URL, model
    listings, and every later feature that calls a URL a tenant gave). Destinations the
    operator configures (the platform base URL, alert channels, ...) are trusted; every other
    destination must resolve to public addresses on an allowed port, or be allowed here."""

    allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Further destinations tenants may reach, comma separated, each a host or "
        "CIDR with a port: `vllm.internal:8000`, `10.0.0.0/8:11434`, `[::1]:8000`.",
    )
    allowed_ports: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [80, 443],
        description="Ports a tenant URL may use, comma separated (entries of `allow` carry "
        "their own port).",
    )

    _split = field_validator("allow", "allowed_ports", mode="before")(_split_commas)

    @field_validator("allow")
    @classmethod
    def _valid_destinations(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_allow_entry(entry)  # a ValueError naming the entry and the accepted forms
        return value

    @field_validator("allowed_ports")
    @classmethod
    def _valid_ports(cls, value: list[int]) -> list[int]:
        for port in value:
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is not a number from 1 to 65535")
        return value


class TemplateSettings(BaseModel):
    """The bounded renderer of tenant templates (builtin `template` agents and workflow
    `input_template`s): rendered in worker processes, killed past the time limit."""

    timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        json_schema_extra=LIVE,
        description="Longest a render may run; past it the worker process is killed and replaced.",
    )
    max_output_chars: int = Field(
        default=1_000_000,
        json_schema_extra=LIVE,
        ge=1_000,
        le=100_000_000,
        description="Longest output of a render, and longest string or list a template may "
        "build on the way.",
    )
    max_iterations: int = Field(
        default=100_000,
        json_schema_extra=LIVE,
        ge=100,
        le=100_000_000,
        description="Iterations one render may run: the items of every loop (range() items "
        "included) and macro calls, summed.",
    )
    workers: int = Field(
        default=2, ge=1, le=64, description="Worker processes that render templates at once."
    )
    memory_mb: int = Field(
        default=256,
        json_schema_extra=LIVE,
        ge=64,
        le=65_536,
        description="Memory a render worker may allocate beyond its start-up size.",
    )


class MetricsSettings(BaseModel):
    """The metrics capability: `GET /metrics` in the Prometheus text format, and who may read it
    (it shows the environment, the version and the Python build, which help an attacker pick
    exploits)."""

    enabled: bool = Field(
        default=True,
        description="Serve `GET /metrics`. Off, the route does not exist (the rollback switch).",
    )
    public: bool | None = Field(
        default=None,
        json_schema_extra=LIVE,
        description="Whether anonymous callers may read /metrics; unset: public outside "
        "production. When not public, platform admins and the probe token may read it.",
    )

    def is_public(self, environment: Environment) -> bool:
        """Whether anonymous callers may read the metrics in ``environment``."""
        if self.public is None:
            return environment is not Environment.production
        return self.public


class ConfigurationSettings(BaseModel):
    """The configuration capability: live reload (SIGHUP, a change of the config file, or
    `POST /api/v1/ops/config/reload`) and the effective configuration at
    `GET /api/v1/ops/config`."""

    enabled: bool = Field(
        default=True,
        description="Reload settings live and serve the ops configuration endpoints. Off, "
        "settings change only with a restart (the rollback switch).",
    )
    watch_file: bool = Field(
        default=True,
        description="Reload when the file named by RENUM_CONFIG_FILE changes.",
    )


def is_email_address(text: str) -> bool:
    """A plain ``local@domain`` address, as an email header holds it."""
    try:
        address = Address(addr_spec=text)
    except (ValueError, IndexError, MessageError):
        return False
    return bool(address.username and address.domain)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# The alert rules a deployment has (``app.capabilities.monitor.alerting.default_rules``); the
# settings may tune or switch off each of them by name.
ALERT_RULES = (
    "route_error_ratio",
    "route_latency_p95",
    "memory_high",
    "dependency_failing",
    "provider_error_ratio",
    "disk_full_forecast",
    "pool_exhaustion_forecast",
)
Severity = Literal["info", "warning", "critical"]
CHANNEL_NAME = r"^[a-z0-9][a-z0-9_-]{0,23}$"


class AlertRuleSettings(BaseModel):
    """Overrides of one alert rule (unset fields keep the rule's defaults)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Evaluate the rule.")
    bound: float | None = Field(
        default=None,
        ge=0,
        le=1e15,
        description="The rule's threshold in its own unit: a ratio (0.05 is 5%) for error "
        "rules, seconds for latency, percent for memory, seconds ahead for forecasts.",
    )
    for_seconds: float | None = Field(
        default=None,
        ge=0,
        le=604_800,
        description="How long a finding must hold before its alert fires.",
    )
    min_requests: float | None = Field(
        default=None,
        ge=0,
        le=1e9,
        description="Route and provider rules: the fewest requests (calls) in the window for "
        "the rule to judge a route (a provider).",
    )
    severity: Severity | None = Field(default=None, description="info, warning or critical.")


class AlertChannelSettings(BaseModel):
    """One place alerts are sent to, configured by the operator (trusted: not the tenant
    egress policy's business)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=CHANNEL_NAME, description="Names the channel in the delivery log.")
    type: Literal["webhook", "slack", "email"] = Field(
        description="`webhook`: Renum's signed JSON; `slack`: a Slack-compatible incoming "
        "webhook payload; `email`: a message through the `smtp` settings."
    )
    url: SecretStr | None = Field(
        default=None,
        max_length=2048,
        description="webhook and slack: where to POST (kept secret: a Slack webhook's path is "
        "its token).",
    )
    secret: SecretStr | None = Field(
        default=None,
        description="webhook: signs each delivery (`Renum-Signature`, as tenant webhooks).",
    )
    to: list[str] = Field(default_factory=list, max_length=50, description="email: the recipients.")
    min_severity: Severity = Field(
        default="warning", description="Alerts below this severity are not sent here."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and urlsplit(value.get_secret_value()).scheme not in (
            "http",
            "https",
        ):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _has_destination(self) -> AlertChannelSettings:
        if self.type == "email":
            if not self.to or not all(map(is_email_address, self.to)):
                raise ValueError("an email channel needs `to`: one or more addresses")
        elif self.url is None:
            raise ValueError(f"a {self.type} channel needs `url`")
        return self


class SmtpSettings(BaseModel):
    """The mail server email channels send through (every field live: the next email uses
    it)."""

    host: str | None = Field(
        default=None, json_schema_extra=LIVE, description="Unset: email channels cannot send."
    )
    port: int = Field(default=587, ge=1, le=65535, json_schema_extra=LIVE)
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        json_schema_extra=LIVE,
        description="`starttls` upgrades the connection (port 587), `tls` starts in TLS (465), "
        "`none` sends in the clear: only to a relay on loopback, without a login.",
    )
    username: str | None = Field(
        default=None, json_schema_extra=LIVE, description="Log in (after TLS) when set."
    )
    password: SecretStr | None = Field(default=None, json_schema_extra=LIVE)
    from_address: str = Field(
        default="renum@localhost", json_schema_extra=LIVE, description="The sender."
    )
    ca_file: str | None = Field(
        default=None,
        json_schema_extra=LIVE,
        description="Trust this CA bundle for the server's certificate.",
    )
    timeout_seconds: float = Field(default=10.0, gt=0, le=120, json_schema_extra=LIVE)

    @model_validator(mode="after")
    def _clear_text_stays_local(self) -> SmtpSettings:
        if self.security == "none":
            if self.username is not None:
                raise ValueError("a login needs TLS: set security to starttls or tls")
            if self.host is not None and not is_loopback_host(self.host):
                raise ValueError("security none is for a relay on loopback only")
        return self


class AlertSettings(BaseModel):
    """Alert rules evaluated over the monitor's figures, and where alerts go."""

    enabled: bool = Field(
        default=True,
        description="Evaluate the rules (one evaluator per deployment: on PostgreSQL the "
        "process holding an advisory lock).",
    )
    evaluation_interval_seconds: float = Field(
        default=15.0, gt=0.05, le=3600, description="How often the rules are evaluated."
    )
    repeat_interval_seconds: float = Field(
        default=4 * 3600.0,
        gt=0,
        le=30 * 86_400,
        json_schema_extra=LIVE,
        description="A firing alert is sent again at most this often.",
    )
    rules: dict[str, AlertRuleSettings] = Field(
        default_factory=dict,
        json_schema_extra=LIVE,
        description="Overrides per rule name: " + ", ".join(ALERT_RULES) + ".",
    )
    channels: list[AlertChannelSettings] = Field(
        default_factory=list,
        max_length=20,
        json_schema_extra=LIVE,
        description="Where firing and resolved alerts are sent besides the log.",
    )
    smtp: SmtpSettings = Field(default_factory=lambda: SmtpSettings(), json_schema_extra=LIVE)
    silence_max_hours: float = Field(
        default=7 * 24.0, gt=0, le=90 * 24, description="The longest a silence may last."
    )

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, value: dict[str, AlertRuleSettings]) -> dict[str, AlertRuleSettings]:
        unknown = sorted(set(value) - set(ALERT_RULES))
        if unknown:
            raise ValueError(f"unknown rules {unknown}; the rules are {list(ALERT_RULES)}")
        return value

    @field_validator("channels")
    @classmethod
    def _unique_names(cls, value: list[AlertChannelSettings]) -> list[AlertChannelSettings]:
        names = [channel.name for channel in value]
        if len(names) != len(set(names)):
            raise ValueError("channel names must be unique")
        return value


class TracingSettings(BaseModel):
    """Traces over OTLP (OpenTelemetry): one span per request, per execution, per step and per
    model call (the GenAI semantic conventions), exported when an endpoint is set."""

    otlp_endpoint: str | None = Field(
        default=None,
        description="The OTLP/HTTP traces endpoint (`http(s)://collector:4318/v1/traces`); unset, "
        "no trace is made (the rollback switch).",
    )
    export_interval_seconds: float = Field(
        default=5.0, gt=0, le=300, description="How often finished spans are sent, in batches."
    )
    service_name: str = Field(
        default="renum", min_length=1, max_length=100, description="The traces' `service.name`."
    )

    @field_validator("otlp_endpoint")
    @classmethod
    def _an_http_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "an OTLP endpoint carries no credentials in its URL (a collector on the same "
                "network, or a sidecar, takes them)"
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "an OTLP endpoint is an http(s) URL, such as http://collector:4318/v1/traces"
            )
        return value


class MonitorSettings(BaseModel):
    """The monitor capability: system figures, endpoint performance and execution metrics,
    sampled in the background and kept in memory for the dashboard, and on `/metrics`."""

    enabled: bool = Field(
        default=True,
        description="Sample the system, time every API request and count the engine's work. "
        "Off, none of it runs (the rollback switch); `/metrics` keeps the process figures.",
    )
    interval_seconds: float = Field(
        default=10.0, gt=0.05, le=3600, description="How often the system is sampled."
    )
    history_hours: float = Field(
        default=24.0,
        gt=0,
        le=168,
        description="How long samples are kept at full resolution (in memory, per process); "
        "older ones are kept as one point per 30 samples, for a week.",
    )
    alerts: AlertSettings = Field(
        default_factory=lambda: AlertSettings(),
        description="Alert rules, their evaluation and the channels alerts are sent to.",
    )
    tracing: TracingSettings = Field(
        default_factory=lambda: TracingSettings(),
        description="Traces of requests, executions, steps and model calls over OTLP.",
    )


class DeliverySettings(BaseModel):
    """The outbound delivery service: signed JSON POSTs queued in the database (tenant webhooks,
    later alert channels and reports), sent by a background dispatcher in every API process,
    retried with backoff and full jitter, then kept in a bounded dead-letter list."""

    enabled: bool = Field(
        default=True,
        description="Run the dispatcher in this process. Off, deliveries still queue in the "
        "database and go out from any process where it is on, or once it is back on.",
    )
    interval_seconds: float = Field(
        default=1.0,
        gt=0.01,
        le=300,
        description="How often the dispatcher looks for due deliveries when idle.",
    )
    concurrency: int = Field(
        default=10, ge=1, le=1000, description="Deliveries one process sends at once."
    )
    timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="Longest one attempt may take (connecting, sending, the response's status).",
    )
    max_attempts: int = Field(
        default=10, ge=1, le=100, description="Attempts before a delivery is dead-lettered."
    )
    backoff_base_seconds: float = Field(
        default=10.0,
        gt=0,
        le=86_400,
        description="Retry n waits a random time up to base * 2^(n-1) (full jitter), capped.",
    )
    backoff_max_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=604_800,
        description="The cap of the backoff before a retry.",
    )
    dead_letter_max: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Dead letters kept per owner (each account, and the platform); past it the "
        "oldest are dropped.",
    )
    retention_days: float = Field(
        default=7.0,
        gt=0,
        le=3650,
        description="How long delivered deliveries stay in the delivery log.",
    )
    webhooks_per_account: int = Field(
        default=20, ge=1, le=1000, description="Webhook endpoints one account may register."
    )


class RollupSettings(BaseModel):
    """The rollups: hourly and daily sums of model calls and ended executions, the home of
    usage and analytics figures, kept by every API process as executions end."""

    interval_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How often a process looks for ended executions not rolled up yet (it "
        "also looks at once when one of its own executions ends).",
    )
    batch_size: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Rows rolled up per transaction.",
    )
    delay_seconds: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="How long a process waits, once one of its executions ends, before it "
        "folds: one fold then takes every execution that ended meanwhile.",
    )


class AnalyticsSettings(BaseModel):
    """The analytics capability: business figures from the rollups at `/api/v1/analytics/*`."""

    enabled: bool = Field(
        default=True,
        description="Serve `/api/v1/analytics/*`. Off, those routes do not exist (the rollback "
        "switch); the rollups and `GET /api/v1/usage` stay.",
    )
    max_points: int = Field(
        default=2000,
        ge=24,
        le=100_000,
        description="Most buckets one time series may hold (a longer period asks for days).",
    )


class DocsSettings(BaseModel):
    """The docs capability: the interactive API explorer at `/docs`, served from vendored
    assets (the OpenAPI schema at `/openapi.json` is part of the base API)."""

    enabled: bool = Field(
        default=True,
        description="Serve the API explorer at `/docs`. Off, the page and its assets do not "
        "exist (the rollback switch).",
    )
    site_url: str = Field(
        default="http://127.0.0.1:8001/",
        description="Where the docs site is served: `renum doctor` links each failing check "
        "to its troubleshooting entry there. The default is the address of `nox -s docs -- "
        "serve`; set the address where your deployment publishes the built `site/`.",
    )

    @field_validator("site_url")
    @classmethod
    def _site_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") + "/"

    def page_url(self, link: str) -> str:
        """A link to a page of the docs (``troubleshooting.md#database``) as its address on
        the site (``{site_url}troubleshooting/#database``: MkDocs serves each page as a
        directory)."""
        page, _, anchor = link.partition("#")
        parts = page.removesuffix(".md").split("/")
        if parts[-1] == "index":  # a folder's index page is the folder
            parts.pop()
        path = "".join(f"{part}/" for part in parts)
        return self.site_url + path + (f"#{anchor}" if anchor else "")


class CompressionSettings(BaseModel):
    """Responses compressed by the client's `Accept-Encoding` (zstd, then brotli, then gzip)."""

    enabled: bool = Field(
        default=True,
        description="Compress responses the client accepts compressed. Event streams are "
        "flushed event by event, never held back.",
    )
    minimum_bytes: int = Field(
        default=1024,
        ge=0,
        le=1_048_576,
        description="Smaller one-shot bodies are sent as they are (compressing them costs "
        "more than it saves).",
    )
    level: int = Field(
        default=4,
        ge=1,
        le=9,
        description="Compression level of all three codings (1 fastest, 9 smallest).",
    )
    excluded_paths: list[str] = Field(
        default_factory=lambda: [
            "/api/v1/auth",
            "/api/v1/api-keys",
            "/api/v1/provider-keys",
            "/api/v1/webhooks",
        ],
        description="Path prefixes whose answers are never compressed: answers that carry a "
        "credential next to what a client sent (a token, a new key, a webhook's signing "
        "secret) would let an observer of their compressed sizes guess the credential "
        "(BREACH). A test fails when an operation answers a credential outside them.",
    )


class ProfilingSettings(BaseModel):
    """Slow requests profiled with a sampling profiler (pyinstrument), for admins."""

    enabled: bool = Field(
        default=True,
        json_schema_extra=LIVE,
        description="Profile slow requests. A request slower than its threshold arms its "
        "route; the route's next requests are profiled, one at a time, and a profiled request "
        "that is slow too is kept.",
    )
    p95_factor: float = Field(
        default=3.0,
        ge=1,
        le=100,
        json_schema_extra=LIVE,
        description="With the monitor on, a request is slow past this multiple of its "
        "route's p95 (once the route has `min_requests` timed requests).",
    )
    threshold_ms: float = Field(
        default=1000.0,
        gt=0,
        le=3_600_000,
        json_schema_extra=LIVE,
        description="The threshold when the monitor is off, or for a route with fewer timed "
        "requests.",
    )
    floor_ms: float = Field(
        default=100.0,
        gt=0,
        le=3_600_000,
        json_schema_extra=LIVE,
        description="No request faster than this is slow, whatever its route's p95.",
    )
    min_requests: int = Field(
        default=50,
        ge=1,
        le=1_000_000,
        json_schema_extra=LIVE,
        description="Timed requests a route needs before its p95 sets its threshold.",
    )
    attempts: int = Field(
        default=5,
        ge=1,
        le=1000,
        json_schema_extra=LIVE,
        description="Requests of an armed route profiled before it is disarmed when none of "
        "them is slow.",
    )
    keep: int = Field(
        default=50,
        ge=1,
        le=1000,
        json_schema_extra=LIVE,
        description="Profiles kept per process (the oldest go first).",
    )
    max_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        json_schema_extra=LIVE,
        description="The longest stretch of one request profiled (a longer request keeps its "
        "first `max_seconds`).",
    )
    cooldown_seconds: float = Field(
        default=300.0,
        ge=0,
        le=86_400,
        json_schema_extra=LIVE,
        description="After a route's profile is kept, or its attempts ran fast, how long "
        "before it can be armed again.",
    )
    interval_ms: float = Field(
        default=1.0,
        ge=0.1,
        le=1000,
        json_schema_extra=LIVE,
        description="The profiler's sampling interval.",
    )


class CacheSettings(BaseModel):
    """The cache of costly reads (usage reports, execution lists, analytics figures)."""

    enabled: bool = Field(
        default=True,
        description="Keep answers of costly reads until a write changes them or their time "
        "to live ends. In Redis when `redis_url` is set (shared by every process; in memory "
        "while Redis is unreachable), else in this process's memory.",
    )
    max_entries: int = Field(
        default=10_000,
        ge=10,
        le=10_000_000,
        description="Answers kept in memory (the least recently used go first).",
    )
    ttl_seconds: dict[str, float] = Field(
        default_factory=lambda: {"usage": 60.0, "executions": 5.0, "analytics": 300.0},
        description="How long an answer of each kind is kept at most: also the longest an "
        "answer can lag a write made where this process cannot hear of it (another process "
        "without Redis, or while Redis is away).",
    )

    @field_validator("ttl_seconds")
    @classmethod
    def _every_kind(cls, value: dict[str, float]) -> dict[str, float]:
        kinds = ("usage", "executions", "analytics")
        unknown = sorted(set(value) - set(kinds))
        if unknown:
            raise ValueError(f"unknown kinds {unknown}; the kinds are {list(kinds)}")
        if any(not 0 < ttl <= 86_400 for ttl in value.values()):
            raise ValueError("a time to live is more than 0 and at most 86400 seconds")
        return {**{"usage": 60.0, "executions": 5.0, "analytics": 300.0}, **value}


class PerformanceSettings(BaseModel):
    """The performance capability: response compression, profiles of slow requests and the
    cache of costly reads."""

    enabled: bool = Field(
        default=True,
        description="Compress responses, profile slow requests and keep costly reads. Off, "
        "none of it runs and the API answers as without it (the rollback switch).",
    )
    compression: CompressionSettings = Field(default_factory=lambda: CompressionSettings())
    profiling: ProfilingSettings = Field(default_factory=lambda: ProfilingSettings())
    cache: CacheSettings = Field(default_factory=lambda: CacheSettings())


class BackupSettings(BaseModel):
    """Backups of the database: where they are kept and how many (``renum backup``), and, in
    the server, a schedule and the watch over their age and verification."""

    enabled: bool = Field(
        default=True,
        description="Watch the backups in the server (their age and last verification on "
        "/metrics, /health/dependencies and as alerts) and take the scheduled ones. Off, only "
        "`renum backup` makes and checks backups (the rollback switch).",
    )
    directory: Path | None = Field(
        default=None,
        description="Where backups and their manifests are written; unset: a `backups` "
        "directory beside the SQLite database file (required for PostgreSQL).",
    )
    keep: int = Field(
        default=14,
        ge=1,
        le=10_000,
        description="Backups kept; after each new one, the oldest beyond this number are removed.",
    )
    replica_directory: Path | None = Field(
        default=None,
        description="Replicate the SQLite database continuously into this directory with "
        "Litestream (every commit within about a second), so `renum backup restore --to` can "
        "recover any moment it covers; unset: no continuous replication.",
    )
    every_hours: float | None = Field(
        default=None,
        gt=0,
        le=8760,
        description="Take and verify a backup in the server when the newest is this old "
        "(SQLite); unset: only `renum backup run` (or a timer running it) takes them.",
    )
    max_age_hours: float = Field(
        default=26,
        gt=0,
        le=87_600,
        description="The newest verified backup older than this warns on /health/dependencies "
        "and raises an alert, as does a failed verification.",
    )
    check_seconds: float = Field(
        default=60,
        ge=0.1,
        le=86_400,
        description="How often the server's watch looks at the backups (and takes a scheduled "
        "one that is due).",
    )
    age_identity: SecretStr | None = Field(
        default=None,
        description="SQLite: an age identity (AGE-SECRET-KEY-1..., `renum backup keygen` "
        "makes one) that encrypts the snapshots at rest; unset: they are plain SQLite files "
        "readable by their owner only. Losing it loses the encrypted snapshots.",
    )
    cipher_key: SecretStr | None = Field(
        default=None,
        description="PostgreSQL: the passphrase that encrypts the pgBackRest repository "
        "(AES-256-CBC); required there, since backups are never kept unencrypted. Losing it "
        "loses the backups.",
    )
    repository: Path | None = Field(
        default=None,
        description="PostgreSQL: the pgBackRest repository (backups and archived WAL); unset: "
        "`repository` inside the backups directory.",
    )
    postgres_data_directory: Path | None = Field(
        default=None,
        description="PostgreSQL: the server's data directory (pgBackRest backs it up and "
        "restores into it, on the database's host); required there.",
    )
    postgres_socket_directory: Path = Field(
        default=Path("/var/run/postgresql"),
        description="PostgreSQL: the directory of the server's Unix socket, through which "
        "pgBackRest connects.",
    )
    postgres_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="PostgreSQL: the local server's port for pgBackRest; unset: the port of "
        "RENUM_DATABASE__URL (5432 when it names several hosts or none).",
    )
    postgres_bin_directory: Path | None = Field(
        default=None,
        description="PostgreSQL: where the server's programs are (a verification starts a "
        "throwaway server); unset: Debian's /usr/lib/postgresql/<major>/bin.",
    )
    stanza: str = Field(
        default="renum",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        description="PostgreSQL: the pgBackRest stanza (the name of this database cluster in "
        "the repository).",
    )
    retention_full: int = Field(
        default=2,
        ge=1,
        le=999,
        description="PostgreSQL: full backups kept (with the differential and incremental ones "
        "and the WAL that depend on them).",
    )
    retention_diff: int = Field(
        default=7,
        ge=1,
        le=999,
        description="PostgreSQL: differential backups kept.",
    )

    @field_validator("age_identity")
    @classmethod
    def _an_identity(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(
            r"AGE-SECRET-KEY-1[02-9ACDEFGHJKLMNPQRSTUVWXYZ]{58}", value.get_secret_value()
        ):
            raise ValueError("must be an age identity: AGE-SECRET-KEY-1 and 58 characters")
        return value

    @field_validator("cipher_key")
    @classmethod
    def _usable_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        key = value.get_secret_value()
        if len(key) < 20 or any(ord(c) < 32 or ord(c) == 127 for c in key):
            raise ValueError("must be at least 20 characters, without control characters")
        return value

    @field_validator(
        "directory",
        "repository",
        "postgres_data_directory",
        "postgres_socket_directory",
        "postgres_bin_directory",
    )
    @classmethod
    def _plain_path(cls, value: Path | None) -> Path | None:
        if value is not None and any(ord(c) < 32 for c in str(value)):
            raise ValueError("must not hold control characters")
        return value

    @field_validator(
        "repository",
        "postgres_data_directory",
        "postgres_socket_directory",
        "postgres_bin_directory",
    )
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError("must be an absolute path (pgBackRest and PostgreSQL run elsewhere)")
        return value


class ScannerSettings(BaseModel):
    """The offline vulnerability scanner: the installed distributions checked against an OSV
    advisory database on disk, which operators refresh; nothing is ever downloaded."""

    enabled: bool = Field(
        default=False,
        description="Scan the installed packages in the server (at start-up, then every "
        "interval_hours) and report the result on /health/dependencies, `renum doctor` and "
        "/metrics. `renum security scan` works either way. On in the staging and production "
        "profiles.",
    )
    database: Path | None = Field(
        default=None,
        description="The OSV advisory database: the published PyPI export (`PyPI/all.zip`, "
        "one `<ID>.json` per advisory) as the zip file or a directory it was unpacked into; "
        "an absolute path. Unset while the scanner is on: the check warns that the result is "
        "unknown.",
    )
    max_age_days: float = Field(
        default=7,
        gt=0,
        le=365,
        description="A database whose newest advisory was modified longer ago than this is "
        "stale: the check warns that the result is unknown, and `renum security scan` exits "
        "2 unless it found something.",
    )
    interval_hours: float = Field(
        default=24,
        ge=0.01,
        le=8760,
        description="Hours between two scans in the server (the first runs at start-up).",
    )
    fail_on: Literal["low", "moderate", "high", "critical", "never"] = Field(
        default="critical",
        description="Known vulnerabilities of this severity or above make the check fail "
        "(an optional check: readiness is not affected); below it, or of unknown severity, "
        "they warn. `never`: they only warn.",
    )

    @field_validator("database")
    @classmethod
    def _absolute_database(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if any(ord(c) < 32 for c in str(value)):
            raise ValueError("must not hold control characters")
        if not value.is_absolute():
            raise ValueError("must be an absolute path (the server's may not be the operator's)")
        return value


class SecurityHeaderSettings(BaseModel):
    """The security headers on every answer (a page's own policy is kept)."""

    enabled: bool = Field(
        default=True,
        description="Add `X-Content-Type-Options: nosniff`, `Referrer-Policy`, the default "
        "`Content-Security-Policy` and, when `hsts_max_age_seconds` is set, "
        "`Strict-Transport-Security` to every answer that does not set them itself.",
    )
    content_security_policy: str = Field(
        default="default-src 'none'; frame-ancestors 'none'",
        min_length=1,
        max_length=1000,
        pattern=r"^[\x20-\x7e]+$",
        description="The policy of answers that set none (the API's JSON: nothing to load, "
        "never framed). The pages Renum serves set their own, with a nonce per answer.",
    )
    referrer_policy: Literal[
        "no-referrer", "same-origin", "strict-origin", "strict-origin-when-cross-origin"
    ] = Field(default="no-referrer", description="The `Referrer-Policy` of every answer.")
    hsts_max_age_seconds: int = Field(
        default=0,
        ge=0,
        le=63_072_000,
        description="`Strict-Transport-Security: max-age=N` on every answer (0: not sent). "
        "Browsers then reach this host over HTTPS only: set it where the service is served "
        "over HTTPS only (the production profile sets a year).",
    )
    hsts_include_subdomains: bool = Field(
        default=False, description="Add `includeSubDomains` to `Strict-Transport-Security`."
    )


class AuditSettings(BaseModel):
    """The audit trail of security-relevant actions: append-only, hash-chained, signed."""

    enabled: bool = Field(
        default=True,
        description="Record logins, credential and role changes, users, accounts and provider "
        "keys created and deleted, configuration reloads, silences, exports and platform "
        "admins' reads of account data in the audit trail (`GET /api/v1/audit`). Off, nothing "
        "is recorded; what was recorded stays, and `renum audit verify` still checks it.",
    )
    signing_keys: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict,
        description="Keys that sign the trail's head and checkpoints (HMAC-SHA256), as "
        "`id:secret,id2:secret`, each secret at least 32 characters; the first signs, the "
        "others still verify what they signed. Unset: one key derived from `secret_key` "
        "(id `derived`), so changing the secret key without listing the old one here makes "
        "old checkpoints unverifiable.",
    )
    checkpoint_interval_minutes: float = Field(
        default=60,
        ge=0.01,
        le=1440,
        description="Minutes between two signed checkpoints of the trail (written when it "
        "grew since the last one, and logged as `audit_checkpoint` for an outside record).",
    )
    retention_days: int = Field(
        default=0,
        ge=0,
        le=36_500,
        description="Entries older than this are pruned, up to the newest checkpoint older "
        "than it (verification then starts from that checkpoint); 0 keeps every entry.",
    )

    @field_validator("signing_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        return _keys_by_id(value, "signing_keys entries must look like id:secret")

    @field_validator("signing_keys")
    @classmethod
    def _strong_keys(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for key_id, secret in value.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", key_id):
                raise ValueError(f"signing key id {key_id!r}: 1 to 64 of A-Z a-z 0-9 _ . -")
            if len(secret.get_secret_value()) < 32:
                raise ValueError(f"signing key {key_id!r} must be at least 32 characters")
        return value


_THRESHOLD = "Count within the window that starts the throttling."
_WINDOW = "Length of the fixed window the count is kept for."


class Detector(BaseModel):
    """One attack pattern's threshold: what is counted, how many, in how long a window."""

    threshold: int = Field(ge=1, le=1_000_000, description=_THRESHOLD)
    window_seconds: int = Field(ge=1, le=604_800, description=_WINDOW)


class BruteForceDetector(Detector):
    """Failed logins to one account from one source."""

    threshold: int = Field(default=10, ge=1, le=1_000_000, description=_THRESHOLD)
    window_seconds: int = Field(default=900, ge=1, le=604_800, description=_WINDOW)


class StuffingDetector(Detector):
    """Distinct accounts with failed logins from one source."""

    threshold: int = Field(default=20, ge=1, le=1_000_000, description=_THRESHOLD)
    window_seconds: int = Field(default=900, ge=1, le=604_800, description=_WINDOW)


class EnumerationDetector(Detector):
    """Distinct unknown emails tried from one source."""

    threshold: int = Field(default=20, ge=1, le=1_000_000, description=_THRESHOLD)
    window_seconds: int = Field(default=900, ge=1, le=604_800, description=_WINDOW)


class DistributedDetector(Detector):
    """Distinct sources with failed logins to one account."""

    threshold: int = Field(default=20, ge=1, le=1_000_000, description=_THRESHOLD)
    window_seconds: int = Field(default=900, ge=1, le=604_800, description=_WINDOW)


class InvalidCredentialsDetector(Detector):
    """Requests from one source with an invalid token or API key."""

    threshold: int = Field(default=50, ge=1, le=1_000_000, description=_THRESHOLD)
    window_seconds: int = Field(default=300, ge=1, le=604_800, description=_WINDOW)


class ProbingDetector(Detector):
    """Requests from one source answered 404 on routes with an id."""

    threshold: int = Field(default=100, ge=1, le=1_000_000, description=_THRESHOLD)
    window_seconds: int = Field(default=300, ge=1, le=604_800, description=_WINDOW)


class RateLimit(BaseModel):
    """A token bucket: ``per_second`` on average, bursts of up to ``burst``."""

    per_second: float = Field(
        gt=0, le=1_000_000, description="Tokens added to the bucket per second."
    )
    burst: int = Field(ge=1, le=10_000_000, description="Tokens the bucket holds at most.")


class AccountRateLimit(RateLimit):
    """Each account's bucket."""

    per_second: float = Field(
        default=100, gt=0, le=1_000_000, description="Tokens added to the bucket per second."
    )
    burst: int = Field(
        default=200, ge=1, le=10_000_000, description="Tokens the bucket holds at most."
    )


class ApiKeyRateLimit(RateLimit):
    """Each API key's bucket."""

    per_second: float = Field(
        default=50, gt=0, le=1_000_000, description="Tokens added to the bucket per second."
    )
    burst: int = Field(
        default=100, ge=1, le=10_000_000, description="Tokens the bucket holds at most."
    )


class RateLimitSettings(BaseModel):
    """Request rate limits per account and per API key (token buckets)."""

    enabled: bool = Field(
        default=True,
        description="Limit the authenticated requests' rate per account and per API key "
        "(429 with `Retry-After` and the `RateLimit` headers once a bucket is empty).",
    )
    account: AccountRateLimit = Field(
        default_factory=lambda: AccountRateLimit(),
        description="Each account's bucket (every request authenticated as one of its users "
        "or keys takes a token).",
    )
    api_key: ApiKeyRateLimit = Field(
        default_factory=lambda: ApiKeyRateLimit(),
        description="Each API key's bucket (taken from as well as its account's).",
    )
    accounts: dict[UUID, RateLimit] = Field(
        default_factory=dict,
        description="Per-account limits set by a platform admin, as JSON keyed by account id: "
        '`{"<account id>": {"per_second": 500, "burst": 1000}}`.',
    )
    sync_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often each process shares what its buckets spent with the other "
        "processes (through the counters); between two syncs a process decides alone.",
    )


class ThrottleSettings(BaseModel):
    """Intrusion detection and throttling: the attacks on logins and credentials detected per
    source address and per account, and the request rate limits."""

    enabled: bool = Field(
        default=True,
        description="Detect and slow down attacks (brute force, credential stuffing, "
        "distributed attacks on one account, user enumeration, invalid credential floods, "
        "probing of ids) and limit request rates. Off, nothing is added to any request.",
    )
    counters: Literal["auto", "redis", "database"] = Field(
        default="auto",
        description="Where the counters every API process shares live: `redis` (needs "
        "`redis_url`), `database` (a small table) or `auto` (Redis when `redis_url` is set).",
    )
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = Field(
        default_factory=list,
        description="Proxies (addresses or CIDRs, comma separated) whose `X-Forwarded-For` is "
        "believed: the client is the right-most address of the header that is not one of "
        "them. Empty: the peer's address is the client's, the header ignored.",
    )
    brute_force: BruteForceDetector = Field(
        default_factory=lambda: BruteForceDetector(),
        description="Failed logins to one account from one source.",
    )
    stuffing: StuffingDetector = Field(
        default_factory=lambda: StuffingDetector(),
        description="Distinct accounts with failed logins from one source.",
    )
    enumeration: EnumerationDetector = Field(
        default_factory=lambda: EnumerationDetector(),
        description="Distinct unknown emails tried from one source.",
    )
    distributed: DistributedDetector = Field(
        default_factory=lambda: DistributedDetector(),
        description="Distinct sources with failed logins to one account; the account is then "
        "throttled for every source that has not logged in to it successfully lately.",
    )
    bad_tokens: InvalidCredentialsDetector = Field(
        default_factory=lambda: InvalidCredentialsDetector(),
        description="Requests from one source with an invalid token or API key (401).",
    )
    id_probing: ProbingDetector = Field(
        default_factory=lambda: ProbingDetector(),
        description="Requests from one source answered 404 on routes with an id in the path.",
    )
    block_seconds: int = Field(
        default=60,
        ge=1,
        le=86_400,
        description="The first throttling of a subject; each next one within "
        "`escalation_seconds` doubles it (the `Retry-After` grows).",
    )
    max_block_seconds: int = Field(
        default=3600, ge=1, le=604_800, description="The longest a throttling lasts."
    )
    escalation_seconds: int = Field(
        default=86_400,
        ge=1,
        le=2_592_000,
        description="How long a subject's throttlings are remembered for the doubling.",
    )
    known_context_days: float = Field(
        default=30,
        gt=0,
        le=365,
        description="A source that logged in to an account successfully stays a known context "
        "of it this long: it keeps access while a distributed attack on the account is "
        "throttled.",
    )
    limits: RateLimitSettings = Field(default_factory=lambda: RateLimitSettings())

    _split = field_validator("trusted_proxies", mode="before")(_split_commas)


class ContentEncryptionSettings(BaseModel):
    """Encryption at rest of executions' content (prompts, variables, results, steps' input
    and output, context values, messages, the events that carry outputs and errors), per
    account, with the keys of ``RENUM_ENCRYPTION_KEYS``. The API is unchanged: what is read
    back is opened. Turning it off (or the security capability) stops sealing new
    executions; what was sealed still opens."""

    accounts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accounts whose new executions' content is sealed at rest, comma separated "
        "account ids, or `*` for every account (empty: none). Executions started before an "
        "account was listed stay as they were stored; `renum keys seal-content` seals the "
        "ended ones. Removing an account stops sealing its new executions; sealed content "
        "still reads back.",
    )

    @field_validator("accounts", mode="before")
    @classmethod
    def _split_accounts(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("accounts")
    @classmethod
    def _account_ids(cls, value: list[str]) -> list[str]:
        accounts = []
        for item in value:
            if item == "*":
                accounts.append(item)
                continue
            try:
                accounts.append(str(uuid.UUID(item)))
            except ValueError:
                raise ValueError(f"{item!r} is neither an account id nor *") from None
        return list(dict.fromkeys(accounts))


class SecuritySettings(BaseModel):
    """The security manager's section: the vulnerability scanner, the security headers,
    intrusion detection and throttling, the audit trail and the encryption at rest of
    executions' content."""

    enabled: bool = Field(
        default=True,
        description="The security capability. Off, none of its parts runs in the server and "
        "its check reports nothing (the rollback switch); `renum security` still works.",
    )
    scanner: ScannerSettings = Field(default_factory=lambda: ScannerSettings())
    headers: SecurityHeaderSettings = Field(default_factory=lambda: SecurityHeaderSettings())
    throttle: ThrottleSettings = Field(default_factory=lambda: ThrottleSettings())
    audit: AuditSettings = Field(default_factory=lambda: AuditSettings())
    content_encryption: ContentEncryptionSettings = Field(
        default_factory=lambda: ContentEncryptionSettings()
    )


class TeamSettings(BaseModel):
    max_members: int = Field(
        default=10, ge=1, le=1000, json_schema_extra=LIVE, description="Agents per team at most."
    )


class ExecutionSettings(BaseModel):
    max_concurrent_per_account: int = Field(
        default=5,
        ge=1,
        le=10_000,
        json_schema_extra=LIVE,
        description="Running executions per account at most.",
    )
    runner_concurrency: int = Field(
        default=16, ge=1, le=10_000, description="Executions one process runs at once."
    )
    heartbeat_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="How often a running execution's owner beats."
    )
    stale_after_seconds: float = Field(
        default=30.0, gt=0, le=86_400, description="A heartbeat older than this is abandoned."
    )
    reaper_interval_seconds: float = Field(
        default=10.0, gt=0, le=3600, description="How often abandoned executions are looked for."
    )
    max_resumes: int = Field(
        default=3, ge=0, le=100, description="Resumptions after a crash before an execution fails."
    )
    max_wait_seconds: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        json_schema_extra=LIVE,
        description="Longest `?wait=` a request may block.",
    )


class CheckTuning(BaseModel):
    """Overrides of a health check's timing; unset values keep the check's own default."""

    interval_seconds: float | None = Field(
        default=None, gt=0, le=86_400, description="Seconds between two background runs."
    )
    timeout_seconds: float | None = Field(
        default=None, gt=0, le=600, description="Longest a run may take before it fails."
    )
    ttl_seconds: float | None = Field(
        default=None,
        gt=0,
        le=604_800,
        description="A result older than this counts as failed (at least interval + timeout).",
    )
    failure_threshold: int | None = Field(
        default=None, ge=1, le=100, description="Consecutive failures before the check fails."
    )


class HealthSettings(CheckTuning):
    """Dependency validation and probes. The timing fields here apply to every check;
    ``checks`` tunes one check by name (``{"redis": {"timeout_seconds": 1}}``)."""

    enabled: bool = Field(
        default=True,
        description="The health capability: start-up dependency validation, the background "
        "monitor and the `/health/*` probes. Off, none of them exist (the rollback switch).",
    )

    probe_token: SecretStr | None = Field(
        default=None,
        description="Token that reveals the details of /health/dependencies to monitoring "
        "(sent as `X-Probe-Token` or `Authorization: Bearer`); at least 16 characters.",
    )
    start_degraded: bool = Field(
        default=False,
        description="In production, start even when a critical dependency fails at start-up "
        "(readiness stays 503 until it recovers) instead of stopping.",
    )
    monitor: bool = Field(
        default=True,
        description="Run the checks in the background; off, the start-up report stays the "
        "probes' snapshot.",
    )
    checks: dict[str, CheckTuning] = Field(
        default_factory=dict, description="Per-check overrides keyed by check name, as JSON."
    )

    @field_validator("probe_token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("probe_token")
    @classmethod
    def _token_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters long")
        return value


class ErrorReportingSettings(BaseModel):
    """Error reports to Sentry (``app/core/error_reporting.py``): every error the log records
    (an unhandled exception of a request, a failed background task) is also sent to the DSN's
    project, scrubbed as the log is, without request bodies, headers, local variables, prompts
    or outputs."""

    sentry_dsn: SecretStr | None = Field(
        default=None,
        description="The Sentry project's DSN (`https://<key>@<host>/<project>`); unset, nothing "
        "is reported (the rollback switch). A self-hosted Sentry or GlitchTip serves too.",
    )
    sample_rate: float = Field(
        default=1.0, gt=0, le=1, description="The share of errors reported, above 0 (1.0: all)."
    )

    @field_validator("sentry_dsn")
    @classmethod
    def _a_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        from sentry_sdk.utils import BadDsn, Dsn

        dsn = value.get_secret_value()
        parts = urlsplit(dsn)
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.username:
            raise ValueError("a Sentry DSN reads https://<public key>@<host>/<project id>")
        if not parts.path.split("/")[-1].isdigit():
            raise ValueError("a Sentry DSN ends with its project's number")
        try:
            Dsn(dsn)
        except (BadDsn, ValueError):  # the SDK's own reading: a bad port, say
            raise ValueError("the SDK cannot read this Sentry DSN (check its port)") from None
        return value


class Settings(BaseSettings):
    """All of Renum's configuration. Environment variables: ``RENUM_<FIELD>``,
    nested fields ``RENUM_<GROUP>__<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="RENUM_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    environment: Environment = Field(
        default=Environment.development, description="Deployment environment."
    )
    app_name: str = Field(default="Renum", description="Name shown in the API docs.")
    secret_key: SecretStr = Field(
        default=SecretStr(DEV_SECRET_KEY),
        description="Key that signs JWTs and list cursors; at least 32 characters; required "
        "outside development (changing it ends every session and every cursor).",
    )
    encryption_keys: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict,
        description="Encryption keys for stored secrets as `id:base64key,id2:base64key`; "
        "the first is current.",
    )
    log_level: str = Field(
        default="INFO", json_schema_extra=LIVE, description="Lowest log level written."
    )
    log_format: LogFormat = Field(
        default=LogFormat.auto,
        description="`json`, `console`, or `auto` (JSON outside development).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS, comma separated."
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest accepted request body (413 above)."
    )
    max_json_depth: int = Field(
        default=64,
        ge=2,
        le=200,
        json_schema_extra=LIVE,
        description="Deepest nesting of a JSON body (422 above).",
    )
    shutdown_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="On SIGTERM, live streams end and running executions are released at "
        "once; other open requests get at most this long before they are cancelled.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Worker processes of `renum serve` (its `--workers` option overrides). "
        "More than one needs PostgreSQL.",
    )
    redis_url: str | None = Field(default=None, description="Redis URL (optional).")
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    database_manager: DatabaseManagerSettings = Field(default_factory=DatabaseManagerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    providers: ProviderSettings = Field(default_factory=ProviderSettings)
    teams: TeamSettings = Field(default_factory=TeamSettings)
    executions: ExecutionSettings = Field(default_factory=ExecutionSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    egress: EgressSettings = Field(default_factory=EgressSettings)
    templates: TemplateSettings = Field(default_factory=TemplateSettings)
    deliveries: DeliverySettings = Field(default_factory=DeliverySettings)
    rollups: RollupSettings = Field(default_factory=RollupSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    docs: DocsSettings = Field(default_factory=DocsSettings)
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings)
    performance: PerformanceSettings = Field(default_factory=PerformanceSettings)
    backups: BackupSettings = Field(default_factory=BackupSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    configuration: ConfigurationSettings = Field(default_factory=ConfigurationSettings)
    error_reporting: ErrorReportingSettings = Field(default_factory=ErrorReportingSettings)
    bootstrap_admin_email: str | None = Field(
        default=None,
        description="Email of the admin created on an empty database (default admin@renum.local).",
    )
    bootstrap_admin_password: SecretStr | None = Field(
        default=None,
        description="Password of that admin; when unset a random one is printed once.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return ordered_sources(settings_cls, init_settings, env_settings, dotenv_settings)

    @field_validator("bootstrap_admin_email", "bootstrap_admin_password", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("log_level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("encryption_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        return _keys_by_id(value, "encryption_keys entries must look like id:base64key")

    @field_validator("secret_key")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters long")
        return value

    @property
    def json_logs(self) -> bool:
        if self.log_format is LogFormat.auto:
            return self.environment is not Environment.development
        return self.log_format is LogFormat.json
