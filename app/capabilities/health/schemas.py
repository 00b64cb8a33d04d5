"""The ``application/health+json`` shape (IETF health-check response draft, plus ``kind``,
``critical`` and ``fix``), defined once: the report builds its bodies with these models and the
probes declare them in the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

HEALTH_JSON = "application/health+json"


class ProbeStatus(BaseModel):
    """A probe's answer: its status only."""

    status: Literal["pass", "fail"] = Field(examples=["pass"])


class HealthCheckResult(BaseModel):
    """One component's result (IETF fields, plus `kind`, `critical` and `fix`)."""

    componentId: str = Field(examples=["postgresql"])
    componentType: str = Field(examples=["datastore"])
    kind: str = Field(
        description="The registry's kind: package, database, schema, cache, provider, ...",
        examples=["database"],
    )
    critical: bool = Field(description="A failing critical dependency makes the service fail.")
    status: Literal["pass", "warn", "fail"]
    time: datetime = Field(description="When the check ran.")
    output: str = Field(description="What was observed, in words.", examples=["PostgreSQL 16.4"])
    observedValue: float | str | None = Field(default=None, examples=[2.4])
    observedUnit: str | None = Field(default=None, examples=["ms"])
    fix: str | None = Field(default=None, description="What to do (when not passing).")
    affectedEndpoints: list[str] | None = Field(
        default=None,
        description="Routes that fail or degrade while this dependency is not passing.",
        examples=[["POST /api/v1/teams/{team_id}/executions"]],
    )
    links: dict[str, str] | None = Field(
        default=None, description="`about`: the troubleshooting entry."
    )


class HealthReport(BaseModel):
    """The dependency report; anonymous callers get `status` only."""

    status: Literal["pass", "warn", "fail"] = Field(
        description="fail: a critical dependency fails; warn: an optional one fails or "
        "something needs attention; pass: all well."
    )
    version: str | None = Field(default=None, description="Public API version.", examples=["1"])
    releaseId: str | None = Field(default=None, examples=["0.1.0"])
    serviceId: str | None = Field(default=None, examples=["renum"])
    description: str | None = None
    time: datetime | None = Field(default=None, description="When the snapshot was taken.")
    output: str | None = Field(default=None, description="The problems, in one line.")
    checks: dict[str, list[HealthCheckResult]] | None = Field(
        default=None, description="Results keyed `component:measurement`."
    )


REPORT_EXAMPLE: dict[str, Any] = {
    "status": "warn",
    "version": "1",
    "releaseId": "0.1.0",
    "serviceId": "renum",
    "description": "Renum API and its dependencies",
    "time": "2026-11-25T10:00:00Z",
    "output": "redis:responseTime redis://cache:6379/0: Redis did not answer",
    "checks": {
        "database:responseTime": [
            {
                "componentId": "postgresql",
                "componentType": "datastore",
                "kind": "database",
                "critical": True,
                "status": "pass",
                "time": "2026-11-25T10:00:00Z",
                "output": "PostgreSQL 16.4 answered",
                "observedValue": 2.4,
                "observedUnit": "ms",
                "links": {"about": "troubleshooting.md#database"},
            }
        ],
        "redis:responseTime": [
            {
                "componentId": "redis://cache:6379/0",
                "componentType": "datastore",
                "kind": "cache",
                "critical": False,
                "status": "fail",
                "time": "2026-11-25T10:00:00Z",
                "output": "Redis did not answer",
                "observedValue": 2000.0,
                "observedUnit": "ms",
                "fix": "Start or reach the Redis server, or unset RENUM_REDIS_URL.",
                "affectedEndpoints": ["GET /api/v1/executions/{execution_id}/events"],
                "links": {"about": "troubleshooting.md#redis"},
            }
        ],
    },
}
