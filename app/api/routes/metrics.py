"""`GET /metrics`: the process's metrics in the Prometheus text format (no authentication,
like the health probes; expose it only where your scraper can reach it)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.services.metrics import CONTENT_TYPE, ProcessMetrics

router = APIRouter(tags=["health"])

EXAMPLE = """# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1.2345e+08
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 4.2
# HELP renum_executions_active Executions pending or running across all accounts.
# TYPE renum_executions_active gauge
renum_executions_active 3.0
"""


@router.get(
    "/metrics",
    summary="Prometheus metrics: process CPU and memory, interpreter, executions in flight",
    description="The text exposition format (version 0.0.4). Application gauges are read "
    "when scraped, so serving requests costs nothing extra.",
    response_class=Response,
    responses={
        200: {
            "description": "The metrics, one sample per line.",
            "content": {"text/plain": {"schema": {"type": "string"}, "example": EXAMPLE}},
        }
    },
)
async def metrics(request: Request) -> Response:
    state = request.app.state
    if getattr(state, "metrics", None) is None:
        state.metrics = ProcessMetrics(state.settings.environment.value)
    body = await state.metrics.render(getattr(state, "database", None))
    return Response(body, media_type=CONTENT_TYPE)
