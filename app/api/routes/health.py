"""Health probes: liveness (the process answers) and readiness (the database answers)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.core.logging import get_logger

router = APIRouter(tags=["health"])
log = get_logger("app.health")


class ProbeStatus(BaseModel):
    status: str


@router.get(
    "/health/live",
    response_model=ProbeStatus,
    summary="Liveness: the process is up",
    description="Touches no dependency and never blocks.",
)
@router.get("/livez", response_model=ProbeStatus, include_in_schema=False)
async def live() -> ProbeStatus:
    return ProbeStatus(status="pass")


@router.get(
    "/health/ready",
    response_model=ProbeStatus,
    summary="Readiness: the database answers",
    responses={503: {"model": ProbeStatus, "description": "A critical dependency is failing."}},
)
@router.get("/readyz", response_model=ProbeStatus, include_in_schema=False)
async def ready(request: Request) -> ProbeStatus | JSONResponse:
    try:
        await request.app.state.database.ping()
    except Exception as exc:  # any failure of the database means "not ready"
        log.warning("readiness_failed", error_type=type(exc).__name__)
        return JSONResponse({"status": "fail"}, status_code=503)
    return ProbeStatus(status="pass")
