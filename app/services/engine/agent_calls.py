"""Running one agent on one input: a builtin agent locally, or a model over the
OpenAI-compatible API with the right key. Retries, timeouts and cost live here and in the
provider, in one place.

The platform's key goes only to the platform's base URL (the operator's, compared by scheme,
host, port and path segments): an agent pointed elsewhere pays with its own provider key, and
without one its step fails before anything is sent. Calls to a tenant's base URL go through
the egress guard's client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from app.core.config import Settings
from app.core.crypto import SecretBox
from app.core.egress import EgressClients, is_under
from app.core.templates import TemplateRenderer
from app.models import Agent, MessageKind, MessageStatus, ProviderKey
from app.services.engine.storable import check_storable
from app.services.messages import Mailbox, OutgoingMessage
from app.services.provider_keys import provider_key_aad
from app.services.providers.base import (
    ChatMessage,
    ModelRequest,
    ProviderAuthError,
    RetryPolicy,
)
from app.services.providers.builtin import TEMPLATE_KITS, BuiltinAgentError, run_builtin
from app.services.providers.openai import OpenAICompatibleProvider
from app.services.providers.prices import PriceTable


@dataclass(frozen=True)
class AgentOutcome:
    output: str
    context_writes: dict[str, Any] = field(default_factory=dict)
    messages: list[OutgoingMessage] = field(default_factory=list)
    provider: str = "builtin"
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    duration_ms: int = 0
    paid_by: str | None = None  # "user" or "platform" for model calls; None for builtin

    def __post_init__(self) -> None:
        # Only what can be stored is an outcome; else the step fails (UnstorableOutput).
        check_storable(self.output, self.context_writes, (m.body for m in self.messages))

    @property
    def is_model_call(self) -> bool:
        return self.paid_by is not None


class AgentCaller:
    """Turns an agent row and a step input into an outcome; raises ProviderError on failure."""

    def __init__(
        self,
        settings: Settings,
        box: SecretBox,
        prices: PriceTable,
        http: EgressClients,
        templates: TemplateRenderer | None = None,
    ) -> None:
        self.settings = settings
        self.box = box
        self.prices = prices
        self.http = http
        # The bounded renderer of template agents and input templates; one of its own
        # unless given (whoever builds the caller closes it).
        if templates is None:
            templates = TemplateRenderer(settings.templates, TEMPLATE_KITS)
        self.templates = templates

    async def call(
        self,
        agent: Agent,
        provider_key: ProviderKey | None,
        *,
        step_input: str,
        context: Mapping[str, Any],
        variables: Mapping[str, Any],
        mailbox: Mailbox | None = None,
    ) -> AgentOutcome:
        """Run the agent; ``mailbox`` holds its inbox and collects the messages it sends."""
        mailbox = mailbox if mailbox is not None else Mailbox()
        if agent.provider == "builtin":
            started = time.perf_counter()
            try:
                async with asyncio.timeout(agent.timeout_seconds):
                    result = await run_builtin(
                        agent.model,
                        agent.parameters,
                        input=step_input,
                        context=context,
                        variables=variables,
                        mailbox=mailbox,
                        templates=self.templates,
                        owner=agent.account_id,  # its account's share of the render workers
                    )
            except TimeoutError:
                raise BuiltinAgentError(
                    f"the builtin {agent.model} agent did not finish within its "
                    f"timeout_seconds ({agent.timeout_seconds:g})"
                ) from None
            return AgentOutcome(
                output=result.output,
                context_writes=dict(result.context_writes),
                messages=list(mailbox.outgoing),
                model=agent.model,
                duration_ms=int((time.perf_counter() - started) * 1000),
            )
        outcome = await self._model_call(agent, provider_key, step_input, context, mailbox.inbox)
        # A model agent answers the requests in its inbox with its output.
        for item in mailbox.inbox:
            if item["kind"] == MessageKind.request and item["status"] == MessageStatus.pending:
                mailbox.reply(item, outcome.output)
        return replace(outcome, messages=list(mailbox.outgoing))

    async def _model_call(
        self,
        agent: Agent,
        provider_key: ProviderKey | None,
        step_input: str,
        context: Mapping[str, Any],
        inbox: list[dict[str, Any]],
    ) -> AgentOutcome:
        platform_url = self.settings.providers.openai_base_url
        base_url = agent.base_url or platform_url
        if provider_key is not None:
            api_key: str | None = self.box.open(
                provider_key.sealed_key, provider_key_aad(provider_key.account_id, provider_key.id)
            )
            paid_by = "user"
        elif is_under(base_url, platform_url):
            platform = self.settings.providers.openai_api_key
            api_key = platform.get_secret_value() if platform else None
            paid_by = "platform"
        else:
            raise ProviderAuthError(
                "the agent's base URL is not the platform's, so it needs its own provider key "
                "(provider_key_id); nothing was sent",
                retryable=False,
            )
        messages = []
        if agent.system_prompt:
            messages.append(ChatMessage("system", agent.system_prompt))
        if context:
            shared = json.dumps(dict(context), default=str, sort_keys=True)
            messages.append(ChatMessage("system", f"Shared context (JSON): {shared}"))
        if inbox:
            mail = json.dumps(inbox, default=str, sort_keys=True)
            messages.append(ChatMessage("system", f"Messages from other agents (JSON): {mail}"))
        messages.append(ChatMessage("user", step_input))
        retry = agent.retry or {}
        request = ModelRequest(
            model=agent.model,
            messages=tuple(messages),
            temperature=agent.parameters.get("temperature"),
            max_tokens=agent.parameters.get("max_tokens"),
            timeout_s=agent.timeout_seconds,
            retry=RetryPolicy(
                max_attempts=retry.get("max_attempts", 3),
                initial_backoff_s=retry.get("initial_backoff_seconds", 0.5),
                max_backoff_s=retry.get("max_backoff_seconds", 8.0),
            ),
        )
        provider = OpenAICompatibleProvider(
            base_url,
            api_key,
            client=self.http.for_url(base_url),
            tenant_url=not self.http.guard.is_trusted(base_url),
        )
        response = await provider.complete(request)
        return AgentOutcome(
            output=response.content,
            provider="openai",
            model=agent.model,
            input_tokens=response.input_tokens,
            output_tokens=response.output_tokens,
            cost_usd=self.prices.cost(agent.model, response.input_tokens, response.output_tokens),
            duration_ms=int(response.duration_s * 1000),
            paid_by=paid_by,
        )
