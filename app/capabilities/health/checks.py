"""The built-in dependency checks: Python packages, the database, its migrations, Redis and
the model providers' base URLs. Each is a small class registered in the health registry.

Optional integrations (Redis) are imported inside their check, never at import time, so a
missing optional package only turns its own check to "warn".
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import time
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
from alembic.script import ScriptDirectory
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from sqlalchemy.engine import make_url
from starlette.datastructures import State

from app.capabilities.health.registry import (
    CheckOutcome,
    CheckSpec,
    HealthCheck,
    Status,
    Troubleshooting,
    register,
)
from app.core.config import Settings
from app.db import migrate
from app.db.database import SQLAlchemyManager, sqlite_file_path

DISTRIBUTION = "renum"
# Extras that belong to the test harness, not to a feature of the running backend.
HARNESS_EXTRAS = frozenset({"qa"})
MIN_POSTGRESQL = Version("13")
MIN_SQLITE = Version("3.35")

ALL_API = ["* /api/v1/*"]
EXECUTION_ENDPOINTS = [
    "POST /api/v1/teams/{team_id}/executions",
    "POST /api/v1/executions/{execution_id}/cancel",
]
LIVE_EVENT_ENDPOINTS = [
    "GET /api/v1/executions/{execution_id}/events",
    "WS /api/v1/executions/{execution_id}/ws",
]
# What each optional extra switches on, for the warning when its packages are missing.
EXTRA_FEATURES = {"redis": "Redis cache, counters and event fan-out (in-process fallback used)"}
EXTRA_ENDPOINTS = {"redis": LIVE_EVENT_ENDPOINTS}


class MetadataLookup(Protocol):
    """Where package metadata comes from (``importlib.metadata`` unless a test injects one).
    Both methods raise ``importlib.metadata.PackageNotFoundError`` for a missing package."""

    def requires(self, distribution: str) -> list[str] | None: ...

    def version(self, distribution: str) -> str: ...


class InstalledMetadata:
    """The installed environment's metadata."""

    def requires(self, distribution: str) -> list[str] | None:
        return importlib.metadata.requires(distribution)

    def version(self, distribution: str) -> str:
        return importlib.metadata.version(distribution)


@dataclass
class CheckContext:
    """What a check may use: the settings, the database, the package metadata, the time it
    has (the caller enforces it; checks use it to bound their own client timeouts), and the
    running app's state, where capabilities keep their components (``None`` outside a
    server, as in ``renum doctor``)."""

    settings: Settings
    database: SQLAlchemyManager
    metadata: MetadataLookup = field(default_factory=InstalledMetadata)
    timeout_seconds: float = 5.0
    state: State | None = None


def elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def safe_url(url: str) -> str:
    """A URL without credentials, query or fragment, safe to show and log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _error_text(exc: BaseException) -> str:
    """The most specific message of an exception (SQLAlchemy wraps the driver's in ``orig``)."""
    inner = getattr(exc, "orig", None) or exc
    message = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {message}" if message else type(inner).__name__


# --- packages -------------------------------------------------------------------------------

_EXTRA_MARKER = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")


def _pip(requirement: str) -> str:
    return f'python -m pip install "{requirement}"'


def _package_outcome(lookup: MetadataLookup, req: Requirement, extra: str | None) -> CheckOutcome:
    wanted = str(req.specifier) or "any version"
    optional = extra is not None
    failing = Status.warn if optional else Status.fail
    fix = _pip(f"{DISTRIBUTION}[{extra}]" if optional else f"{req.name}{req.specifier}")
    feature = (
        f"; the optional feature '{extra}' is disabled ({EXTRA_FEATURES.get(extra, extra)})"
        if extra is not None
        else ""
    )
    affected = EXTRA_ENDPOINTS.get(extra or "", []) if optional else ALL_API
    try:
        installed = lookup.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        return CheckOutcome(
            component_id=req.name,
            status=failing,
            observed_value=None,
            observed_unit="version",
            message=f"{req.name} is not installed ({DISTRIBUTION} needs {wanted}){feature}",
            fix=fix,
            affected_endpoints=affected,
            critical=not optional,
        )
    try:
        compatible = req.specifier.contains(Version(installed), prereleases=True)
    except InvalidVersion:
        compatible = False
    if not compatible:
        return CheckOutcome(
            component_id=req.name,
            status=failing,
            observed_value=installed,
            observed_unit="version",
            message=f"{req.name} {installed} is installed but {DISTRIBUTION} needs "
            f"{req.name}{req.specifier}{feature}",
            fix=fix,
            affected_endpoints=affected,
            critical=not optional,
        )
    return CheckOutcome(
        component_id=req.name,
        status=Status.passed,
        observed_value=installed,
        observed_unit="version",
        message=f"{req.name} {installed} satisfies {wanted}",
        critical=not optional,
    )


def package_outcomes(lookup: MetadataLookup) -> list[CheckOutcome]:
    """One outcome per requirement the installed distribution declares (core and feature
    extras; the harness extra and self-references are skipped)."""
    try:
        lines = lookup.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return [
            CheckOutcome(
                component_id=DISTRIBUTION,
                status=Status.warn,
                message=f"the {DISTRIBUTION} distribution is not installed, so its "
                "requirements cannot be read",
                fix='python -m pip install -e ".[redis]"',
            )
        ]
    outcomes = []
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            outcomes.append(
                CheckOutcome(
                    component_id=line,
                    status=Status.warn,
                    message=f"unreadable requirement in the package metadata: {line!r}",
                    fix=_pip(f"--force-reinstall {DISTRIBUTION}"),
                )
            )
            continue
        if canonicalize_name(req.name) == DISTRIBUTION:
            continue
        extra = None
        if req.marker is not None:
            found = _EXTRA_MARKER.search(str(req.marker))
            extra = found.group(1) if found else None
            if extra in HARNESS_EXTRAS or not req.marker.evaluate({"extra": extra or ""}):
                continue
        outcomes.append(_package_outcome(lookup, req, extra))
    return outcomes


@register
class PackagesCheck(HealthCheck):
    spec = CheckSpec(
        name="packages",
        kind="package",
        critical=True,
        description="Every Python package Renum declares (core and optional extras) is "
        "installed within its version range.",
        measurement="version",
        timeout_seconds=10.0,
        interval_seconds=3600.0,
        ttl_seconds=4 * 3600.0,
        failure_threshold=1,
        affected_endpoints=ALL_API,
        troubleshooting=Troubleshooting(
            symptom="Start-up stops with 'packages: fail', or an optional feature reports "
            "'disabled' in `renum doctor`.",
            cause="A package is missing or outside the version range Renum declares (for "
            "example a settings class that moved between Pydantic versions, or a renamed "
            "Redis client).",
            fix="Run the `pip install` command shown in the check's fix; for an optional "
            'feature install its extra, e.g. `pip install "renum[redis]"`.',
            docs_anchor="packages",
        ),
    )

    async def run(self, context: CheckContext) -> list[CheckOutcome]:
        # Reading metadata touches the file system: keep it off the event loop.
        return await asyncio.to_thread(package_outcomes, context.metadata)


# --- database -------------------------------------------------------------------------------


def _sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE of an error, looking through SQLAlchemy's and the driver's
    wrappers."""
    seen: BaseException | None = exc
    while seen is not None:
        code = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if code:
            return str(code)
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


def database_error(exc: BaseException, url: str) -> tuple[str, str]:
    """A readable message and fix for a failed database connection (no password shown)."""
    parsed = make_url(url)
    where = parsed.render_as_string(hide_password=True)
    file = sqlite_file_path(parsed) if parsed.get_backend_name() == "sqlite" else None
    if file is not None and not file.exists():
        return (
            f"no SQLite database at {file} (RENUM_DATABASE__URL is {where}; a relative path "
            "is read from the working directory); nothing was created",
            "Run from the directory that holds the database, or give RENUM_DATABASE__URL an "
            "absolute path; `renum db upgrade` (or starting the server) creates a new one.",
        )
    code = _sqlstate(exc)
    text_ = _error_text(exc)
    # 28P01 invalid_password, 28000 invalid_authorization_specification (unknown role).
    if code in {"28P01", "28000"} or "authentication failed" in text_.lower():
        return (
            f"the database refused the credentials of {where} ({text_})",
            "Check the user and password in RENUM_DATABASE__URL.",
        )
    if code == "3D000":  # invalid_catalog_name
        return (
            f"the database of {where} does not exist ({text_})",
            "Create it (e.g. `createdb`) or fix the name in RENUM_DATABASE__URL.",
        )
    return (
        f"cannot connect to {where} ({text_})",
        "Check that the database server is running and reachable from this host, and that "
        "RENUM_DATABASE__URL names the right host and port.",
    )


def _server_version(raw: str) -> Version | None:
    found = re.match(r"\d+(\.\d+)*", raw.strip())
    return Version(found.group(0)) if found else None


@register
class DatabaseCheck(HealthCheck):
    spec = CheckSpec(
        name="database",
        kind="database",
        critical=True,
        description="Connect to the database, run a round trip and compare the server's version "
        "with the oldest supported (PostgreSQL 13, SQLite 3.35).",
        measurement="responseTime",
        timeout_seconds=3.0,
        interval_seconds=10.0,
        ttl_seconds=60.0,
        failure_threshold=3,
        affected_endpoints=ALL_API,
        troubleshooting=Troubleshooting(
            symptom="/health/ready answers 503; `database:responseTime` is 'fail'; API calls "
            "answer 500.",
            cause="The database server is down, unreachable, hung, refuses the credentials, or "
            "is older than the supported version; on SQLite, the file named in "
            "RENUM_DATABASE__URL does not exist (a relative path is read from the working "
            "directory).",
            fix="Start or reach the server named in RENUM_DATABASE__URL and check its "
            "credentials; on SQLite, run from the directory that holds the file or give an "
            "absolute path. `renum doctor` shows the exact error.",
            docs_anchor="database",
        ),
    )

    async def run(self, context: CheckContext) -> list[CheckOutcome]:
        database = context.database
        dialect = database.engine.dialect.name
        start = time.perf_counter()
        try:
            # Its own connection, no write lock: a busy database never fails readiness.
            raw = await database.server_version()
        except Exception as exc:  # any driver or network error is this check's answer
            message, fix = database_error(exc, database.settings.url)
            return [CheckOutcome(dialect, Status.fail, message, elapsed_ms(start), "ms", fix)]
        latency = elapsed_ms(start)
        version = _server_version(raw)
        minimum = MIN_SQLITE if dialect == "sqlite" else MIN_POSTGRESQL
        label = "SQLite" if dialect == "sqlite" else "PostgreSQL"
        if version is None or version < minimum:
            return [
                CheckOutcome(
                    dialect,
                    Status.fail,
                    f"{label} {raw} is older than the oldest supported, {minimum}",
                    latency,
                    "ms",
                    f"Upgrade {label} to {minimum} or newer.",
                )
            ]
        return [CheckOutcome(dialect, Status.passed, f"{label} {raw} answered", latency, "ms")]


# --- schema ---------------------------------------------------------------------------------


def known_revisions() -> set[str]:
    """Every migration revision this code ships."""
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    return {script.revision for script in scripts.walk_revisions()}


@register
class SchemaCheck(HealthCheck):
    spec = CheckSpec(
        name="schema",
        kind="schema",
        critical=True,
        description="The database's Alembic revision equals the code's head (no pending "
        "migrations).",
        measurement="revision",
        timeout_seconds=3.0,
        interval_seconds=30.0,
        ttl_seconds=120.0,
        failure_threshold=1,
        affected_endpoints=ALL_API,
        troubleshooting=Troubleshooting(
            symptom="/health/ready answers 503 and `schema:revision` says migrations are pending.",
            cause="The code was deployed without migrating its database (auto-migration is "
            "off), or the database belongs to a newer release.",
            fix="Run `renum db upgrade` with the same settings as the server.",
            docs_anchor="schema",
        ),
    )

    async def run(self, context: CheckContext) -> list[CheckOutcome]:
        head = await asyncio.to_thread(migrate.head_revision)
        try:
            current = await context.database.on_probe_connection(migrate.revision_on)
        except Exception as exc:  # the database check reports the connection itself
            return [
                CheckOutcome(
                    "alembic",
                    Status.fail,
                    f"cannot read the migration revision ({_error_text(exc)})",
                    None,
                    "revision",
                    "Fix the database connection first (see the database check).",
                )
            ]
        if current == head:
            return [CheckOutcome("alembic", Status.passed, f"at head {head}", current, "revision")]
        known = await asyncio.to_thread(known_revisions)
        if current is not None and current not in known:
            message = (
                f"the database is at revision {current}, which this code does not know "
                f"(head {head}): it belongs to another release"
            )
            fix = "Deploy the release that matches the database, or restore a matching backup."
        else:
            message = f"migrations pending: the database is at {current or 'no revision'}, "
            message += f"the code's head is {head}"
            fix = "renum db upgrade"
        return [CheckOutcome("alembic", Status.fail, message, current, "revision", fix)]


# --- redis ----------------------------------------------------------------------------------


@register
class RedisCheck(HealthCheck):
    spec = CheckSpec(
        name="redis",
        kind="cache",
        critical=False,
        description="When RENUM_REDIS_URL is set: the `redis` package is importable and the "
        "server answers PING (optional: Renum degrades to in-process fallbacks).",
        measurement="responseTime",
        timeout_seconds=2.0,
        interval_seconds=15.0,
        ttl_seconds=90.0,
        failure_threshold=3,
        affected_endpoints=LIVE_EVENT_ENDPOINTS,
        troubleshooting=Troubleshooting(
            symptom="`redis:responseTime` is 'fail' or 'warn'; the report's status is 'warn'; "
            "live events and counters fall back to this process only.",
            cause="The Redis server is down, unreachable, hung, refuses the password, or the "
            "optional `redis` package is not installed.",
            fix="Start or reach the server in RENUM_REDIS_URL, or install the extra with "
            '`pip install "renum[redis]"`; unset RENUM_REDIS_URL to run without Redis.',
            docs_anchor="redis",
        ),
    )

    async def run(self, context: CheckContext) -> list[CheckOutcome]:
        url = context.settings.redis_url
        if not url:
            return [
                CheckOutcome(
                    "redis",
                    Status.passed,
                    "not configured (optional): in-process fallbacks are used",
                )
            ]
        where = safe_url(url)
        try:
            import redis.asyncio as aioredis  # optional extra: imported only when configured
        except ImportError:
            return [
                CheckOutcome(
                    where,
                    Status.warn,
                    "RENUM_REDIS_URL is set but the optional `redis` package is not installed",
                    fix=_pip(f"{DISTRIBUTION}[redis]"),
                )
            ]
        limit = max(0.1, context.timeout_seconds * 0.8)
        client = aioredis.from_url(  # type: ignore[no-untyped-call]  # redis leaves it unannotated
            url, socket_connect_timeout=limit, socket_timeout=limit
        )
        start = time.perf_counter()
        try:
            await client.ping()
            info = await client.info("server")
        except Exception as exc:  # connection refused, timeout, auth: all this check's answer
            name = type(exc).__name__
            if "Authentication" in name or "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                fix = "Check the password in RENUM_REDIS_URL."
            else:
                fix = f"Start or reach the Redis server at {where}, or unset RENUM_REDIS_URL."
            return [
                CheckOutcome(
                    where,
                    Status.fail,
                    f"Redis at {where} did not answer ({_error_text(exc)})",
                    elapsed_ms(start),
                    "ms",
                    fix,
                )
            ]
        finally:
            await client.aclose()
        version = info.get("redis_version", "unknown")
        return [
            CheckOutcome(where, Status.passed, f"Redis {version} answered", elapsed_ms(start), "ms")
        ]


# --- model providers ------------------------------------------------------------------------


def provider_base_urls(settings: Settings) -> list[str]:
    """The provider base URLs the operator configured (today the platform's). Tenants' agent
    URLs are never probed: a background check must not call a URL a tenant wrote."""
    return [settings.providers.openai_base_url.rstrip("/")]


async def probe_provider(
    client: httpx.AsyncClient, base_url: str, api_key: str | None
) -> CheckOutcome:
    """GET {base}/models: reachable without spending tokens."""
    where = safe_url(base_url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    start = time.perf_counter()
    try:
        response = await client.get(f"{base_url}/models", headers=headers)
    except httpx.HTTPError as exc:
        return CheckOutcome(
            where,
            Status.fail,
            f"cannot reach {where} ({_error_text(exc)})",
            elapsed_ms(start),
            "ms",
            "Check the base URL and that this host can reach it (DNS, firewall, proxy).",
        )
    latency = elapsed_ms(start)
    content_type = response.headers.get("content-type", "")
    code = response.status_code
    if "html" in content_type:
        return CheckOutcome(
            where,
            Status.fail,
            f"{where}/models answered HTML (HTTP {code}), not an OpenAI-compatible API",
            latency,
            "ms",
            "Point the base URL at the API root, usually ending in /v1 "
            "(e.g. https://api.openai.com/v1), not at a web page.",
        )
    if code >= 500:
        return CheckOutcome(
            where,
            Status.fail,
            f"{where} answered HTTP {code}",
            latency,
            "ms",
            "The provider is failing; retry later or switch the agents to another endpoint.",
        )
    if code in (401, 403) and api_key:
        return CheckOutcome(
            where,
            Status.warn,
            f"{where} is reachable but refused the platform key (HTTP {code})",
            latency,
            "ms",
            "Replace RENUM_PROVIDERS__OPENAI_API_KEY with a valid key.",
        )
    if 300 <= code < 400:
        return CheckOutcome(
            where,
            Status.warn,
            f"{where}/models redirects (HTTP {code}); model calls are not redirected",
            latency,
            "ms",
            "Set the base URL to where it redirects (the API root, usually ending in /v1).",
        )
    if code >= 400 and code not in (401, 403):
        return CheckOutcome(
            where,
            Status.warn,
            f"{where}/models answered HTTP {code}",
            latency,
            "ms",
            "Check that the base URL is the API root of an OpenAI-compatible endpoint.",
        )
    return CheckOutcome(where, Status.passed, f"reachable (HTTP {code})", latency, "ms")


@register
class ProvidersCheck(HealthCheck):
    spec = CheckSpec(
        name="providers",
        kind="provider",
        critical=False,
        description="The platform's model-provider base URL (the operator's; agents' own URLs "
        "are never probed) answers GET /models, without spending tokens.",
        measurement="responseTime",
        timeout_seconds=5.0,
        interval_seconds=60.0,
        ttl_seconds=300.0,
        failure_threshold=3,
        affected_endpoints=EXECUTION_ENDPOINTS,
        troubleshooting=Troubleshooting(
            symptom="`providers:responseTime` is 'fail' for the platform base URL; executions "
            "of agents using it fail their model steps.",
            cause="The provider endpoint is unreachable from this host, answers HTML (a web "
            "page instead of the API root), or is failing.",
            fix="Fix RENUM_PROVIDERS__OPENAI_BASE_URL (the API root, usually ending in /v1) and "
            "the host's network access to it.",
            docs_anchor="providers",
        ),
    )

    async def run(self, context: CheckContext) -> list[CheckOutcome]:
        settings = context.settings.providers
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        limit = max(0.1, context.timeout_seconds * 0.8)
        async with httpx.AsyncClient(timeout=limit, follow_redirects=False) as client:
            return list(
                await asyncio.gather(
                    *(
                        probe_provider(client, url, key)
                        for url in provider_base_urls(context.settings)
                    )
                )
            )
