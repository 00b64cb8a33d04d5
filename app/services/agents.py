"""Agents: validation, scoping and storage.

An ``openai`` agent's base URL must pass the egress guard's static check, and an agent whose
base URL is not the platform's must name its own provider key: the platform's key goes only to
the platform's URL."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.crypto import SecretBox
from app.core.egress import EgressGuard, EgressRefused, is_under
from app.core.errors import Conflict, NotFound, ValidationFailed
from app.models import Agent, Role
from app.repositories.agents import AgentRepository
from app.repositories.base import commit_unique
from app.schemas.agents import AgentCreate, AgentUpdate
from app.services.principal import Principal
from app.services.provider_keys import ProviderKeyService
from app.services.providers.builtin import validate_builtin


class AgentService:
    def __init__(self, session: AsyncSession, box: SecretBox, settings: Settings) -> None:
        self.session = session
        self.settings = settings
        self.agents = AgentRepository(session)
        self.provider_keys = ProviderKeyService(session, box)

    async def _check(self, principal: Principal, values: dict[str, Any], pointer: str) -> None:
        """Refuse combinations the schema alone cannot: builtin kinds, keys, base URLs."""
        if values["provider"] == "builtin":
            for field in ("provider_key_id", "base_url"):
                if values.get(field) is not None:
                    raise ValidationFailed.at(
                        f"{pointer}/{field}", f"builtin agents take no {field}"
                    )
            parameters = {
                k: v for k, v in (values.get("parameters") or {}).items() if v is not None
            }
            problems = validate_builtin(
                values["model"], parameters, timeout_seconds=values.get("timeout_seconds")
            )
            if problems:
                # Each problem reads "<field>: <message>"; the builtin kind is the agent's model.
                errors = []
                for problem in problems:
                    field, _, message = problem.partition(": ")
                    path = "model" if field == "kind" else field.replace(".", "/")
                    errors.append(
                        {
                            "pointer": f"{pointer}/{path}",
                            "location": "body",
                            "type": "invalid",
                            "message": message,
                        }
                    )
                raise ValidationFailed("; ".join(problems), errors=errors)
            return
        if values.get("parameters", {}).get("template") is not None:
            raise ValidationFailed.at(
                f"{pointer}/parameters/template", "only builtin template agents take a template"
            )
        if values.get("parameters", {}).get("seconds") is not None:
            raise ValidationFailed.at(
                f"{pointer}/parameters/seconds", "only builtin wait agents take seconds"
            )
        base_url = values.get("base_url")
        if base_url is not None:
            try:
                EgressGuard.from_settings(self.settings).check_url(base_url)
            except EgressRefused as refused:
                raise ValidationFailed.at(
                    f"{pointer}/base_url",
                    f"refused by the egress policy: {refused.detail}",
                    "egress_refused",
                ) from None
        key_id = values.get("provider_key_id")
        if key_id is not None:
            try:
                await self.provider_keys.get(principal, uuid.UUID(str(key_id)))
            except NotFound:
                raise ValidationFailed.at(
                    f"{pointer}/provider_key_id", "no provider key with this id", "not_found"
                ) from None
        platform_url = self.settings.providers.openai_base_url
        if key_id is None and not is_under(base_url or platform_url, platform_url):
            raise ValidationFailed.at(
                f"{pointer}/provider_key_id",
                "an agent whose base_url is not the platform's needs its own provider key: "
                "set provider_key_id (the platform's key goes only to the platform's URL)",
                "required",
            )

    async def create(self, principal: Principal, data: AgentCreate) -> Agent:
        principal.require(Role.member)
        values = data.model_dump(mode="json")
        await self._check(principal, values, "/body")
        if await self.agents.by_name(principal.account_id, data.name) is not None:
            raise Conflict(f"An agent named {data.name!r} already exists.")
        agent = Agent(
            account_id=principal.account_id,
            created_by=principal.user_id,
            name=data.name,
            description=data.description,
            system_prompt=data.system_prompt,
            provider=data.provider,
            model=data.model,
            parameters={k: v for k, v in values["parameters"].items() if v is not None},
            timeout_seconds=data.timeout_seconds,
            retry=values["retry"],
            base_url=values["base_url"],
            provider_key_id=data.provider_key_id,
        )
        self.agents.add(agent)
        await commit_unique(self.session, f"An agent named {data.name!r} already exists.")
        return agent

    async def page(
        self, principal: Principal, *, limit: int, offset: int, provider: str | None = None
    ) -> tuple[Sequence[Agent], int]:
        where = [] if provider is None else [Agent.provider == provider]
        return await self.agents.page(principal.scope, limit=limit, offset=offset, where=where)

    async def get(self, principal: Principal, agent_id: uuid.UUID) -> Agent:
        agent = await self.agents.get(agent_id, principal.scope)
        if agent is None:
            raise NotFound("No agent with this id.")
        return agent

    async def update(self, principal: Principal, agent_id: uuid.UUID, data: AgentUpdate) -> Agent:
        principal.require(Role.member)
        agent = await self.get(principal, agent_id)
        changes = data.model_dump(mode="json", exclude_unset=True)
        for field in ("name", "model", "parameters", "timeout_seconds", "retry"):
            if field in changes and changes[field] is None:
                raise ValidationFailed.at(f"/body/{field}", f"{field} cannot be null", "null")
        if "parameters" in changes:
            changes["parameters"] = {
                k: v for k, v in changes["parameters"].items() if v is not None
            }
        merged = {
            "provider": agent.provider,
            "model": agent.model,
            "parameters": agent.parameters,
            "timeout_seconds": agent.timeout_seconds,
            "base_url": agent.base_url,
            "provider_key_id": agent.provider_key_id,
            **changes,
        }
        if "provider_key_id" in changes and changes["provider_key_id"] is not None:
            merged["provider_key_id"] = uuid.UUID(changes["provider_key_id"])
        await self._check(principal, merged, "/body")
        for field, value in changes.items():
            setattr(agent, field, merged[field] if field == "provider_key_id" else value)
        await commit_unique(self.session, "An agent with this name already exists.")
        return agent

    async def delete(self, principal: Principal, agent_id: uuid.UUID) -> None:
        principal.require(Role.member)
        agent = await self.get(principal, agent_id)
        if await self.agents.in_a_team(agent.id):
            raise Conflict("This agent is a member of a team; remove it from its teams first.")
        await self.agents.delete(agent)
        await self.session.commit()
