"""The rules a configuration must follow beyond each setting's type and range, as data.

Each rule names the setting it is about, says what is wrong and how to fix it, and is an error
in the environments where the backend must not start that way (staging and production) and a
warning elsewhere (or nothing, where it is harmless). ``check_settings`` applies every rule and
returns every problem at once; ``renum config check`` prints them, and start-up refuses a
configuration with errors. Each rule's ``checklist`` line appears in the production checklist
of the docs (the docs session fails when a rule has no line there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import ip_address
from urllib.parse import urlsplit

from app.core.config import DEV_SECRET_KEY, Environment, Settings

STRICT = frozenset({Environment.staging, Environment.production})
ALL = frozenset(Environment)


class Severity(StrEnum):
    error = "error"
    warning = "warning"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration: which setting, how bad, why, and the fix."""

    rule: str
    setting: str  # the environment variable, e.g. RENUM_SECRET_KEY
    severity: Severity
    message: str
    fix: str
    source: str = "default"  # where the offending value came from

    def line(self) -> str:
        return (
            f"{self.severity.value}: {self.setting} (from {self.source}): {self.message}\n"
            f"  fix: {self.fix}"
        )


@dataclass(frozen=True)
class Rule:
    """``violated`` returns why the settings break the rule, or None when they keep it."""

    id: str
    setting: str  # dotted field name
    checklist: str
    fix: str
    violated: Callable[[Settings], str | None]
    errors_in: frozenset[Environment] = STRICT
    warns_in: frozenset[Environment] = frozenset({Environment.development})
    tags: tuple[str, ...] = field(default=())

    @property
    def variable(self) -> str:
        return "RENUM_" + self.setting.upper().replace(".", "__")

    def severity(self, environment: Environment) -> Severity | None:
        if environment in self.errors_in:
            return Severity.error
        if environment in self.warns_in:
            return Severity.warning
        return None


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _secret_key(settings: Settings) -> str | None:
    if settings.secret_key.get_secret_value() == DEV_SECRET_KEY:
        return "the development default signs tokens: anyone who read the source can forge them"
    return None


# OWASP's minimum for Argon2id (its password storage cheat sheet): 19 MiB, 2 passes.
MIN_HASH_MEMORY_KIB = 19_456
MIN_HASH_PASSES = 2


def _weak_password_hash(settings: Settings) -> str | None:
    cost = settings.auth.password_hash
    if cost.memory_kib < MIN_HASH_MEMORY_KIB or cost.time_cost < MIN_HASH_PASSES:
        return (
            f"password hashes cost {cost.memory_kib} KiB and {cost.time_cost} passes, below "
            f"OWASP's minimum for Argon2id ({MIN_HASH_MEMORY_KIB} KiB, {MIN_HASH_PASSES} "
            "passes): a stolen hash is cheap to guess"
        )
    return None


def _encryption_keys(settings: Settings) -> str | None:
    if not settings.encryption_keys:
        return (
            "no encryption keys: stored provider keys are sealed with a key derived from "
            "the secret key, so rotating the secret key would lose them"
        )
    return None


def _open_cors(settings: Settings) -> str | None:
    if "*" in settings.cors_origins:
        return "CORS allows every origin (*): any web page may call the API with a user's token"
    return None


def _plain_http_provider(settings: Settings) -> str | None:
    url = settings.providers.openai_base_url
    if url.startswith("http://") and not _is_loopback(url):
        return "the platform's provider URL is plain HTTP: its API key would cross the network"
    return None


def _sql_echo(settings: Settings) -> str | None:
    if settings.database.echo:
        return "every SQL statement is logged, with its parameters (secrets and personal data)"
    return None


def _debug_logs(settings: Settings) -> str | None:
    if settings.log_level == "DEBUG":
        return "DEBUG logs are verbose and may include request details"
    return None


def _public_metrics(settings: Settings) -> str | None:
    if settings.metrics.is_public(settings.environment):
        return "anyone may read /metrics (the version and build help an attacker pick exploits)"
    return None


def _probe_token(settings: Settings) -> str | None:
    if settings.health.enabled and settings.health.probe_token is None:
        return "no probe token: only platform admins can read the dependency report's details"
    return None


def _sqlite_workers(settings: Settings) -> str | None:
    if settings.database.is_sqlite and settings.workers > 1:
        return (
            f"SQLite with {settings.workers} worker processes: each process runs its own "
            "engine and executions, and SQLite takes one writer at a time"
        )
    return None


RULES: tuple[Rule, ...] = (
    Rule(
        id="secret-key-default",
        setting="secret_key",
        checklist="`RENUM_SECRET_KEY` is a random value of at least 32 characters, not the "
        "development default.",
        fix="Set RENUM_SECRET_KEY to a random value: python -c 'import secrets; "
        "print(secrets.token_urlsafe(48))'",
        violated=_secret_key,
    ),
    Rule(
        id="password-hash-weak",
        setting="auth.password_hash",
        checklist="Password hashes cost at least OWASP's minimum for Argon2id "
        "(`RENUM_AUTH__PASSWORD_HASH__MEMORY_KIB` 19456 or more, `__TIME_COST` 2 or more; "
        "the defaults are 65536 and 3).",
        fix="Unset RENUM_AUTH__PASSWORD_HASH__MEMORY_KIB and __TIME_COST (the defaults)",
        violated=_weak_password_hash,
        warns_in=frozenset(),
    ),
    Rule(
        id="encryption-keys-missing",
        setting="encryption_keys",
        checklist="`RENUM_ENCRYPTION_KEYS` holds at least one base64 key (`id:key`), the "
        "current one first.",
        fix="Set RENUM_ENCRYPTION_KEYS=k1:<32 random bytes, base64>",
        violated=_encryption_keys,
        warns_in=frozenset(),
    ),
    Rule(
        id="cors-open",
        setting="cors_origins",
        checklist="`RENUM_CORS_ORIGINS` lists the exact origins of your web clients (no `*`).",
        fix="List the origins that may call the API, e.g. RENUM_CORS_ORIGINS=https://app.example",
        violated=_open_cors,
    ),
    Rule(
        id="provider-plain-http",
        setting="providers.openai_base_url",
        checklist="`RENUM_PROVIDERS__OPENAI_BASE_URL` uses https:// (plain HTTP only on loopback).",
        fix="Use the provider's https:// URL",
        violated=_plain_http_provider,
    ),
    Rule(
        id="sqlite-workers",
        setting="workers",
        checklist="More than one worker process (`RENUM_WORKERS`, `renum serve --workers`) "
        "only on PostgreSQL.",
        fix="Use PostgreSQL (RENUM_DATABASE__URL=postgresql+asyncpg://...) or run one worker",
        violated=_sqlite_workers,
    ),
    Rule(
        id="sql-echo",
        setting="database.echo",
        checklist="`RENUM_DATABASE__ECHO` is off.",
        fix="Unset RENUM_DATABASE__ECHO (or set it to false)",
        violated=_sql_echo,
        warns_in=frozenset(),
    ),
    Rule(
        id="debug-logs",
        setting="log_level",
        checklist="`RENUM_LOG_LEVEL` is INFO or higher.",
        fix="Set RENUM_LOG_LEVEL=INFO",
        violated=_debug_logs,
        errors_in=frozenset(),
        warns_in=STRICT,
    ),
    Rule(
        id="metrics-public",
        setting="metrics.public",
        checklist="`/metrics` is not public (`RENUM_METRICS__PUBLIC` unset or false); "
        "scrapers use the probe token.",
        fix="Unset RENUM_METRICS__PUBLIC and give the scraper RENUM_HEALTH__PROBE_TOKEN",
        violated=_public_metrics,
        errors_in=frozenset(),
        warns_in=STRICT,
    ),
    Rule(
        id="probe-token-missing",
        setting="health.probe_token",
        checklist="`RENUM_HEALTH__PROBE_TOKEN` is set for monitoring (16+ characters).",
        fix="Set RENUM_HEALTH__PROBE_TOKEN to a random value of at least 16 characters",
        violated=_probe_token,
        errors_in=frozenset(),
        warns_in=STRICT,
    ),
)


def check_settings(
    settings: Settings,
    sources: dict[str, str] | None = None,
    rules: Iterable[Rule] = RULES,
) -> list[Problem]:
    """Every rule the settings break in their environment, errors first."""
    problems = []
    for rule in rules:
        severity = rule.severity(settings.environment)
        if severity is None:
            continue
        reason = rule.violated(settings)
        if reason is None:
            continue
        source = _source_of(rule.setting, sources or {})
        problems.append(Problem(rule.id, rule.variable, severity, reason, rule.fix, source))
    return sorted(problems, key=lambda p: p.severity is not Severity.error)


def _source_of(setting: str, sources: dict[str, str]) -> str:
    if setting in sources:
        return sources[setting]
    for key, source in sources.items():
        if key.startswith(f"{setting}."):
            return source
    return "default"


class UnsafeConfiguration(RuntimeError):
    """The configuration has errors for its environment: the backend does not start."""

    def __init__(self, environment: Environment, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(problem.line() for problem in problems)
        super().__init__(
            f"Renum will not start in {environment.value} with this configuration "
            f"({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n{lines}"
        )


def refuse_unsafe(settings: Settings, sources: dict[str, str] | None = None) -> list[Problem]:
    """Raise ``UnsafeConfiguration`` listing every error; return the warnings."""
    problems = check_settings(settings, sources)
    errors = [p for p in problems if p.severity is Severity.error]
    if errors:
        raise UnsafeConfiguration(settings.environment, errors)
    return problems
