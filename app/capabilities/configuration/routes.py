"""`/api/v1/ops/config`: the effective configuration (secrets masked, each value's source)
and its reload, for platform admins."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from pydantic import BaseModel, Field

from app.api.deps import AdminDep, SessionDep, release
from app.api.input_guard import CheckInputs
from app.api.router import PrefixRouter
from app.capabilities.configuration.manager import (
    EnvironmentConfigManager,
    ReloadResult,
    is_live,
)
from app.capabilities.configuration.supervisor import notify_supervisor
from app.core.config import Settings
from app.core.config_sources import setting_sources
from app.core.config_view import effective_configuration
from app.schemas.common import problems

router = PrefixRouter(prefix="/api/v1/ops", tags=["ops"], dependencies=[CheckInputs])


async def get_manager(request: Request) -> EnvironmentConfigManager:
    """The manager the capability started for this app."""
    manager: EnvironmentConfigManager = request.app.state.config_manager
    return manager


ManagerDep = Annotated[EnvironmentConfigManager, Depends(get_manager)]


class SettingOut(BaseModel):
    setting: str = Field(examples=["database.pool_size"])
    variable: str = Field(examples=["RENUM_DATABASE__POOL_SIZE"])
    value: Any = Field(description="The effective value; secrets are masked.", examples=[20])
    source: Literal["init", "environment", "dotenv", "config_file", "profile", "default"] = Field(
        description="Where the value came from.", examples=["profile"]
    )
    secret: bool
    live: bool = Field(description="Whether a reload applies a change without a restart.")


class ReloadOut(BaseModel):
    status: Literal["applied", "unchanged", "refused"] = Field(
        description="applied: live settings changed; unchanged: nothing live changed; "
        "refused: the new configuration is invalid and nothing changed."
    )
    trigger: str = Field(examples=["api"])
    at: datetime
    fingerprint: str = Field(description="The running configuration's fingerprint after it.")
    applied: list[str] = Field(description="Settings changed live.", examples=[["log_level"]])
    restart_required: list[str] = Field(
        description="Settings that changed but need a restart (kept at their old value).",
        examples=[["database.url"]],
    )
    problems: list[str] = Field(description="Why a refused reload was refused.")


class ConfigurationOut(BaseModel):
    environment: str = Field(examples=["production"])
    fingerprint: str = Field(
        description="Hash of the effective non-secret settings and which secrets are set: "
        "replicas with the same fingerprint run the same configuration.",
        examples=["3f2a9c0d1b7e4a55"],
    )
    last_reload: ReloadOut | None
    settings: list[SettingOut]


def _reload_out(result: ReloadResult | None) -> ReloadOut | None:
    return None if result is None else ReloadOut.model_validate(result, from_attributes=True)


@router.get(
    "/config",
    response_model=ConfigurationOut,
    summary="The effective configuration, masked, with each value's source",
    responses=problems(401, 403),
)
async def get_configuration(_: AdminDep, manager: ManagerDep) -> ConfigurationOut:
    settings = manager.current
    sources = await asyncio.to_thread(setting_sources, Settings)  # reads .env and the file
    views = effective_configuration(settings, sources)
    return ConfigurationOut(
        environment=settings.environment.value,
        fingerprint=manager.fingerprint,
        last_reload=_reload_out(manager.last),
        settings=[SettingOut(**view.as_dict(), live=is_live(view.setting)) for view in views],
    )


@router.post(
    "/config/reload",
    response_model=ReloadOut,
    summary="Reload the configuration now (all or nothing)",
    description="Reads the `.env` file and the config file again, validates the result like a "
    "start would, and applies the settings that reload live; the others are listed as "
    "needing a restart. A configuration that fails validation changes nothing: the answer "
    "says why (`status: refused`). Under `renum serve --workers N` the answer is this "
    "worker's; the supervisor then reloads every worker.",
    responses=problems(401, 403),
)
async def reload_configuration(
    principal: AdminDep, session: SessionDep, manager: ManagerDep
) -> ReloadOut:
    await release(session)  # the reload is audited in a session of the trail's
    result = await manager.reload("api", principal)
    if result.status != "refused":
        notify_supervisor()  # under `renum serve --workers N`: the other workers reload too
    return ReloadOut.model_validate(result, from_attributes=True)
