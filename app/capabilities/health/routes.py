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
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response

from app.api.deps import get_codec, oauth2_scheme, probe_token_matches
from app.api.router import PrefixRouter
from app.capabilities.health.monitor import HealthMonitor
from app.capabilities.health.schemas import HEALTH_JSON, REPORT_EXAMPLE, HealthReport, ProbeStatus
from app.services.auth import AuthService

router = PrefixRouter(tags=["health"])

# How long /health/dependencies may spend checking a caller's credentials.
CREDENTIAL_TIMEOUT_SECONDS = 2.0
PASS_BODY = b'{"status":"pass"}'
FAIL_BODY = b'{"status":"fail"}'


class HealthJSONResponse(JSONResponse):
    media_type = HEALTH_JSON


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


async def get_monitor(request: Request) -> HealthMonitor:
    """The monitor the capability started for this app.

    A coroutine on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a hop
    to a worker thread and back on every probe (it cost ``/health/ready`` most of its rate and
    let background work run in the middle of each probe)."""
    monitor: HealthMonitor = request.app.state.health_monitor
    return monitor


MonitorDep = Annotated[HealthMonitor, Depends(get_monitor)]


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
async def ready(monitor: MonitorDep) -> Response:
    if monitor.ready:
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
                codec = await get_codec(request)
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
    monitor: MonitorDep, details: Annotated[bool, Depends(details_allowed)]
) -> Response:
    report = monitor.snapshot()
    body = report.health_json(details=details)
    return Response(
        json.dumps(body, separators=(",", ":")).encode(),
        status_code=503 if body["status"] == "fail" else 200,
        media_type=HEALTH_JSON,
        headers={"Cache-Control": "no-store"},
    )
