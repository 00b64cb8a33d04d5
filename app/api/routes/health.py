"""Health probes as ``application/health+json`` (IETF health-check response draft).

- ``/health/live`` (``/livez``): the process answers; touches nothing.
- ``/health/ready`` (``/readyz``): every critical dependency passes in the monitor's latest
  snapshot; 200 or 503.
- ``/health/dependencies``: the full report; details only for platform admins and callers with
  the probe token.

Every probe reads memory only (the background monitor's snapshot): a hung dependency cannot
hang a probe. Only a caller who sends credentials makes ``/health/dependencies`` look them up,
bounded by a short timeout.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from app.api.deps import oauth2_scheme, probe_token_matches
from app.core.health.monitor import HealthMonitor
from app.services.auth import AuthService

router = APIRouter(tags=["health"])

HEALTH_JSON = "application/health+json"
# How long /health/dependencies may spend checking a caller's credentials.
CREDENTIAL_TIMEOUT_SECONDS = 2.0
PASS_BODY = b'{"status":"pass"}'
FAIL_BODY = b'{"status":"fail"}'


class HealthJSONResponse(JSONResponse):
    media_type = HEALTH_JSON


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


def _probe_responses(fail_description: str | None) -> dict[int | str, dict[str, Any]]:
    responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {HEALTH_JSON: {"example": {"status": "pass"}}}}
    }
    if fail_description:
        responses[503] = {
            "model": ProbeStatus,
            "description": fail_description,
            "content": {HEALTH_JSON: {"example": {"status": "fail"}}},
        }
    return responses


def monitor_of(request: Request) -> HealthMonitor:
    return request.app.state.health_monitor


@router.get(
    "/health/live",
    response_model=ProbeStatus,
    response_class=HealthJSONResponse,
    summary="Liveness: the process is up",
    description="Touches no dependency and never blocks. Alias: `/livez`.",
    responses=_probe_responses(None),
)
@router.get("/livez", response_class=HealthJSONResponse, include_in_schema=False)
async def live() -> Response:
    return Response(PASS_BODY, media_type=HEALTH_JSON)


@router.get(
    "/health/ready",
    response_model=ProbeStatus,
    response_class=HealthJSONResponse,
    summary="Readiness: critical dependencies pass",
    description="200 while every critical dependency (database, migrations, packages) passes "
    "in the background monitor's latest snapshot, 503 once one has failed its threshold of "
    "consecutive checks. Reads memory only. Alias: `/readyz`.",
    responses=_probe_responses("A critical dependency is failing."),
)
@router.get("/readyz", response_class=HealthJSONResponse, include_in_schema=False)
async def ready(request: Request) -> Response:
    if monitor_of(request).ready:
        return Response(PASS_BODY, media_type=HEALTH_JSON)
    return Response(FAIL_BODY, status_code=503, media_type=HEALTH_JSON)


async def details_allowed(
    request: Request,
    credential: Annotated[str | None, Depends(oauth2_scheme)],
) -> bool:
    """Details for the probe token or a platform admin; anything else (no credentials,
    invalid ones, other roles, or a database too slow to tell) sees the status only."""
    if probe_token_matches(request, credential):
        return True
    if not credential:
        return False
    try:
        async with asyncio.timeout(CREDENTIAL_TIMEOUT_SECONDS):
            async with request.app.state.database.session() as session:
                codec = request.app.state.codec
                principal = await AuthService(session, codec).authenticate(credential)
    except Exception:  # invalid credentials, or a database too slow to tell: status only
        return False
    return principal.is_admin


@router.get(
    "/health/dependencies",
    response_model=HealthReport,
    response_class=HealthJSONResponse,
    summary="Dependency report (IETF health+json)",
    description="The background monitor's latest report. Anonymous callers get `status` "
    "only; platform admins and callers with the probe token (`X-Probe-Token` or "
    "`Authorization: Bearer`) get every check with its observed value, message, fix and "
    "affected endpoints. Credentials that are invalid or of another role see the status only.",
    responses={
        200: {
            "description": "pass or warn.",
            "content": {HEALTH_JSON: {"example": REPORT_EXAMPLE}},
        },
        503: {
            "model": HealthReport,
            "description": "fail: a critical dependency is failing.",
            "content": {HEALTH_JSON: {"example": {"status": "fail"}}},
        },
    },
)
async def dependencies(
    request: Request, details: Annotated[bool, Depends(details_allowed)]
) -> Response:
    report = monitor_of(request).snapshot()
    body = report.health_json(details=details)
    return Response(
        json.dumps(body, separators=(",", ":")).encode(),
        status_code=503 if body["status"] == "fail" else 200,
        media_type=HEALTH_JSON,
        headers={"Cache-Control": "no-store"},
    )
