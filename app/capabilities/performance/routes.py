"""`/api/v1/ops/profiles`: the profiles of slow requests this process kept, for platform
admins (each worker process keeps its own)."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from typing import Annotated, Literal

from fastapi import Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from app.api.deps import AdminDep
from app.api.input_guard import CheckInputs
from app.api.router import PrefixRouter
from app.capabilities.performance.profiling import HTML_POLICY, SlowRequests
from app.core.errors import NotFound
from app.schemas.common import problems

router = PrefixRouter(prefix="/api/v1/ops", tags=["ops"], dependencies=[CheckInputs])


async def get_slow_requests(request: Request) -> SlowRequests:
    slow: SlowRequests = request.app.state.performance.slow_requests
    return slow


SlowDep = Annotated[SlowRequests, Depends(get_slow_requests)]


class ProfileOut(BaseModel):
    id: str = Field(examples=["p3"])
    method: str = Field(examples=["GET"])
    route: str = Field(description="The route template.", examples=["/api/v1/usage"])
    path: str = Field(description="The request's path.", examples=["/api/v1/usage"])
    status: int = Field(description="The status it was answered with.", examples=[200])
    duration_ms: float = Field(description="How long it took.", examples=[1840.2])
    threshold_ms: float = Field(
        description="The threshold it passed (its route's at the time).", examples=[600.0]
    )
    at: datetime = Field(description="When it ended.")
    samples: int = Field(description="Stack samples the profile holds.", examples=[1790])


class ProfileList(BaseModel):
    pid: int = Field(description="The worker process that answered (profiles are per process).")
    armed: list[str] = Field(
        description="Routes seen slow whose next requests are being profiled (`METHOD /template`).",
        examples=[["GET /api/v1/usage"]],
    )
    profiles: list[ProfileOut] = Field(description="Newest first.")


@router.get(
    "/profiles",
    response_model=ProfileList,
    summary="Profiles of slow requests kept by this process",
    description="Requests slower than their route's threshold (a multiple of its p95 from the "
    "monitor, or `performance.profiling.threshold_ms`) arm their route; the next slow request "
    "of the route is profiled with pyinstrument and listed here, the newest first.",
    responses=problems(401, 403),
)
async def list_profiles(_: AdminDep, slow: SlowDep) -> ProfileList:
    return ProfileList(
        pid=os.getpid(),
        armed=[f"{method} {route}" for method, route in slow.armed],
        profiles=[
            ProfileOut.model_validate(p, from_attributes=True)
            for p in reversed(slow.profiles.values())
        ],
    )


@router.get(
    "/profiles/{profile_id}",
    summary="One profile, as an HTML page or a speedscope document",
    description="`format=html` (the default): pyinstrument's call tree and timeline as one "
    "self-contained page. `format=speedscope`: a document to open in speedscope "
    "(https://www.speedscope.app, or its offline build).",
    responses={
        200: {
            "content": {
                "text/html": {"schema": {"type": "string"}},
                "application/json": {
                    "schema": {"type": "object", "description": "A speedscope document."}
                },
            },
        },
        **problems(401, 403, 404, 422),
    },
)
async def get_profile(
    profile_id: Annotated[str, Path(pattern=r"^p[0-9]{1,12}$", examples=["p3"])],
    _: AdminDep,
    slow: SlowDep,
    format: Annotated[Literal["html", "speedscope"], Query()] = "html",
) -> Response:
    profile = slow.profiles.get(profile_id)
    if profile is None:
        raise NotFound("No profile with this id in this process.")
    if format == "speedscope":
        return Response(
            await asyncio.to_thread(profile.speedscope),
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="{profile.id}.speedscope.json"'},
        )
    return HTMLResponse(
        await asyncio.to_thread(profile.html),
        headers={"Content-Security-Policy": HTML_POLICY, "Cache-Control": "no-store"},
    )
