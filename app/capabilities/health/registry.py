"""The one registry of health checks and probes.

Every dependency check is a small class with a ``spec`` (name, kind, critical or optional,
timeout, interval, TTL, failure threshold, affected routes, troubleshooting entry) registered
here with ``@register``. The validator, the background monitor, the probes, ``renum doctor`` and
the generated documentation all read this registry, so a feature adds a check by defining a
class in its own module (listed in ``CHECK_MODULES``) without touching any of them.

``registered_checks()`` returns the specs without settings or I/O; ``PROBES`` is the probe table.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from app.capabilities.health.checks import CheckContext

# Modules whose import registers checks; a feature with its own check adds its module here.
CHECK_MODULES: tuple[str, ...] = (
    "app.capabilities.health.checks",
    "app.capabilities.configuration.checks",
    "app.capabilities.backups.checks",
    "app.capabilities.security.checks",
)

DOCS_PAGE = "troubleshooting.md"


class Status(StrEnum):
    """A check's or a report's status, as in the IETF health-check response draft."""

    passed = "pass"
    warn = "warn"
    fail = "fail"


@dataclass(frozen=True)
class Troubleshooting:
    """What an operator sees when the check fails, and what to do about it."""

    symptom: str
    cause: str
    fix: str
    docs_anchor: str

    @property
    def docs_link(self) -> str:
        return f"{DOCS_PAGE}#{self.docs_anchor}"


@dataclass(frozen=True)
class CheckSpec:
    """The static description of one registered check (no settings, no I/O)."""

    name: str
    kind: str  # "package" | "database" | "schema" | "cache" | "provider" | ...
    critical: bool
    description: str
    measurement: str  # the IETF "measurementName" half of the check's key, e.g. "responseTime"
    timeout_seconds: float = 5.0
    interval_seconds: float = 30.0
    ttl_seconds: float = 120.0
    failure_threshold: int = 3
    affected_endpoints: list[str] = field(default_factory=list)
    troubleshooting: Troubleshooting | None = None

    @property
    def key(self) -> str:
        """The check's key in ``application/health+json``: ``component:measurement``."""
        return f"{self.name}:{self.measurement}"


@dataclass(frozen=True)
class CheckOutcome:
    """One component's result inside a check (a check may report several components, e.g.
    one per package or one per provider base URL)."""

    component_id: str
    status: Status
    message: str
    observed_value: float | str | None = None
    observed_unit: str | None = None
    fix: str | None = None
    affected_endpoints: list[str] | None = None  # None: the spec's list
    critical: bool | None = None  # None: the spec's (an optional extra's package is not)


class HealthCheck(ABC):
    """A dependency check: ``run`` returns one outcome per component it looked at. The caller
    bounds it with the spec's timeout; a check never needs to catch its own timeout."""

    spec: ClassVar[CheckSpec]

    @abstractmethod
    async def run(self, context: CheckContext) -> list[CheckOutcome]:
        """Look at the dependency once."""


_CHECKS: dict[str, type[HealthCheck]] = {}


def register(check: type[HealthCheck]) -> type[HealthCheck]:
    """Class decorator adding a check to the registry (its spec's name must be unique)."""
    name = check.spec.name
    existing = _CHECKS.get(name)
    if existing is not None and existing is not check:
        raise ValueError(f"a health check named {name!r} is already registered")
    _CHECKS[name] = check
    return check


def check_classes() -> list[type[HealthCheck]]:
    """Every registered check class, in registration order."""
    for module in CHECK_MODULES:
        importlib.import_module(module)
    return list(_CHECKS.values())


def registered_checks() -> list[CheckSpec]:
    """The specs of every registered check."""
    return [check.spec for check in check_classes()]


@dataclass(frozen=True)
class Probe:
    """One HTTP probe: its path, aliases, what it tells and the status codes it answers."""

    path: str
    aliases: list[str]
    purpose: str
    status_codes: dict[int, str]


PROBES: list[Probe] = [
    Probe(
        path="/health/live",
        aliases=["/livez"],
        purpose="Liveness: the process is up and serving. Touches no dependency, never blocks; "
        "restart the process only when this fails.",
        status_codes={200: "the process answers"},
    ),
    Probe(
        path="/health/ready",
        aliases=["/readyz"],
        purpose="Readiness: every critical dependency passes (database reachable, migrations "
        "applied), read from the latest background snapshot; take the instance out of the "
        "load balancer while it fails.",
        status_codes={
            200: "ready to serve traffic",
            503: "a critical dependency has failed its threshold of consecutive checks",
        },
    ),
    Probe(
        path="/health/dependencies",
        aliases=[],
        purpose="The full dependency report as application/health+json (IETF health-check "
        "draft): status for everyone; each check's observed value, latency, message, fix and "
        "affected endpoints for platform admins and callers with the probe token.",
        status_codes={
            200: "pass or warn (optional dependencies may be degraded)",
            503: "fail: a critical dependency is failing",
        },
    ),
]
