"""`/api/v1/ops/monitor`: what the monitor has seen in this process (the dashboard's data),
for platform admins. Each worker process keeps its own history: the answer names its
``pid``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request
from pydantic import BaseModel, Field

from app.api.deps import AdminDep
from app.api.input_guard import CheckInputs
from app.api.router import PrefixRouter
from app.capabilities.monitor.monitor import AdvancedHealthMonitor
from app.capabilities.monitor.system import FIGURES, Figure
from app.schemas.common import problems

router = PrefixRouter(prefix="/api/v1/ops", tags=["ops"], dependencies=[CheckInputs])


async def get_monitor(request: Request) -> AdvancedHealthMonitor:
    monitor: AdvancedHealthMonitor = request.app.state.monitor
    return monitor


MonitorDep = Annotated[AdvancedHealthMonitor, Depends(get_monitor)]


class FigureOut(BaseModel):
    value: float | None = Field(description="The latest sample (None before the first).")
    unit: str = Field(examples=["%"])
    meaning: str = Field(examples=["CPU used by this process (100% is one core)"])


class RouteOut(BaseModel):
    method: str = Field(examples=["GET"])
    route: str = Field(description="The route template.", examples=["/api/v1/teams/{team_id}"])
    requests: float = Field(description="Requests answered since the process started.")
    errors: float = Field(description="Of those, answered 5xx.")
    rate_per_second: float = Field(description="Requests per second over the recent window.")
    error_ratio: float = Field(description="Share of 5xx answers over the recent window.")
    p50_seconds: float | None = Field(description="Median latency (from the histogram).")
    p95_seconds: float | None
    p99_seconds: float | None


class ExecutionsOut(BaseModel):
    running: float = Field(description="Executions this process drives now.")
    queued: float = Field(description="Executions waiting for a slot in this process.")


class MonitorSnapshot(BaseModel):
    pid: int = Field(description="The worker process that answered (history is per process).")
    at: float = Field(description="When, in Unix seconds.")
    interval_seconds: float = Field(description="The sampling interval.")
    window_seconds: float = Field(description="The window of the rates and error ratios.")
    system: dict[str, FigureOut] = Field(description="The latest sample of each figure.")
    routes: list[RouteOut]
    slowest: list[RouteOut] = Field(description="The five routes with the highest p95.")
    executions: ExecutionsOut


class PointOut(BaseModel):
    at: float = Field(description="Unix seconds.")
    value: float = Field(description="The sample, or the mean of a coarse point's samples.")
    peak: float = Field(description="The largest sample the point stands for.")


class SeriesOut(BaseModel):
    figure: Figure
    unit: str = Field(examples=["%"])
    pid: int
    points: list[PointOut]


@router.get(
    "/monitor",
    response_model=MonitorSnapshot,
    summary="The monitor's latest figures: system, routes, slowest routes, executions",
    responses=problems(401, 403),
)
async def get_monitor_snapshot(_: AdminDep, monitor: MonitorDep) -> MonitorSnapshot:
    return MonitorSnapshot.model_validate(monitor.snapshot())


@router.get(
    "/monitor/history/{figure}",
    response_model=SeriesOut,
    summary="One system figure's history in this process, oldest first",
    description="Full resolution for `RENUM_MONITOR__HISTORY_HOURS`, then one point per 30 "
    "samples (its mean and peak).",
    responses=problems(401, 403, 422),
)
async def get_monitor_history(
    _: AdminDep,
    monitor: MonitorDep,
    figure: Annotated[
        Figure,
        Path(
            openapi_examples={
                "cpu": {"summary": "This process's CPU", "value": Figure.process_cpu_percent}
            }
        ),
    ],
    since: Annotated[
        float | None,
        Query(description="Only points from this Unix time on.", ge=0, le=32_503_680_000),
    ] = None,
) -> SeriesOut:
    points = [PointOut(at=p.at, value=p.value, peak=p.peak) for p in monitor.series(figure, since)]
    return SeriesOut(figure=figure, unit=FIGURES[figure][0], pid=monitor.pid, points=points)
