"""`GET /metrics`: the process's metrics in the Prometheus text format.

Who may read them is ``settings.metrics``: anyone while public (the default outside
production), else platform admins and the health probe token (``X-Probe-Token`` or
``Authorization: Bearer``, as ``/health/dependencies`` takes it; a scraper needs no user).
Anonymous callers then get 401, other users 403. The token is checked without the database;
an admin's credentials cost one lookup, like any API call."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Response

from app.api.deps import SettingsDep, get_codec, oauth2_scheme, probe_token_matches
from app.api.router import PrefixRouter
from app.capabilities.metrics.collector import CONTENT_TYPE, ScrapedGauges
from app.core.errors import Forbidden, Unauthorized
from app.db.database import SQLAlchemyManager
from app.schemas.common import problems
from app.services.auth import AuthService

router = PrefixRouter(tags=["health"])

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


async def get_collector(request: Request) -> ScrapedGauges:
    """The gauges the capability installed on this app."""
    collector: ScrapedGauges = request.app.state.scraped_gauges
    return collector


async def get_database(request: Request) -> SQLAlchemyManager:
    database: SQLAlchemyManager = request.app.state.database
    return database


async def metrics_access(
    request: Request,
    settings: SettingsDep,
    credential: Annotated[str | None, Depends(oauth2_scheme)],
) -> None:
    """Let the caller through when the metrics are public, or for the probe token or a
    platform admin; 401 without credentials (or invalid ones), 403 for other users."""
    if settings.metrics.is_public(settings.environment) or probe_token_matches(request, credential):
        return
    if not credential:
        raise Unauthorized(
            "The metrics are not public here: send the probe token (`X-Probe-Token`) or a "
            "platform admin's `Authorization: Bearer` credentials."
        )
    codec = await get_codec(request)
    async with (await get_database(request)).session() as session:
        principal = await AuthService(session, codec).authenticate(credential)
    if not principal.is_admin:
        raise Forbidden("Only platform admins and the probe token may read the metrics.")


@router.get(
    "/metrics",
    summary="Prometheus metrics: process CPU and memory, interpreter, executions in flight",
    description="The text exposition format (version 0.0.4). Application gauges are read "
    "when scraped, so serving requests costs nothing extra. Anyone may read them while "
    "`RENUM_METRICS__PUBLIC` allows it (by default outside production); otherwise platform "
    "admins and the health probe token (`X-Probe-Token: <token>` or `Authorization: Bearer "
    "<token>`) only.",
    response_class=Response,
    dependencies=[Depends(metrics_access)],
    responses={
        200: {
            "description": "The metrics, one sample per line.",
            "content": {"text/plain": {"schema": {"type": "string"}, "example": EXAMPLE}},
        },
        **problems(401, 403),
    },
)
async def metrics(
    collector: Annotated[ScrapedGauges, Depends(get_collector)],
    database: Annotated[SQLAlchemyManager, Depends(get_database)],
) -> Response:
    return Response(await collector.render(database), media_type=CONTENT_TYPE)
