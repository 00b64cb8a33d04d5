"""What a running backend process holds for executions: the database, the event hub, the
HTTP clients for model calls (trusted for the operator's URLs, guarded by the egress policy for
tenants'), the sealing and opening of executions' content, the bounded template renderer (its
worker processes start in the background with the app), the engine and its dispatcher, the
dispatcher of outbound deliveries (webhooks, alerts), the folder that keeps the rollups, and
the cache of costly reads. Built and torn down by the application's lifespan; nothing here
connects at import time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from dataclasses import dataclass, field

from app.core.config import Settings
from app.core.crypto import SecretBox
from app.core.egress import EgressClients
from app.core.templates import TemplateRenderer
from app.db.database import SQLAlchemyManager
from app.services.content import ExecutionContent
from app.services.delivery import DeliveryDispatcher
from app.services.engine.agent_calls import AgentCaller
from app.services.engine.engine import ExecutionEngine
from app.services.engine.runner import InProcessRunner
from app.services.events import EventHub
from app.services.providers.builtin import TEMPLATE_KITS
from app.services.providers.prices import PriceTable
from app.services.read_cache import ReadCache
from app.services.rollups import Folded, RollupFolder


@dataclass
class Runtime:
    database: SQLAlchemyManager
    hub: EventHub
    http: EgressClients
    runner: InProcessRunner
    templates: TemplateRenderer
    deliveries: DeliveryDispatcher
    rollups: RollupFolder  # keeps the usage and execution rollups as executions end
    # Seals and opens executions' content; what it seals is the security capability's call.
    content: ExecutionContent
    warming: asyncio.Task[None] | None = None  # the template workers starting in the background
    cache: ReadCache = field(default_factory=ReadCache)  # the performance capability's, when on

    @classmethod
    def build(cls, settings: Settings, database: SQLAlchemyManager, box: SecretBox) -> Runtime:
        overrides = {
            model: price.model_dump(mode="json")
            for model, price in settings.providers.price_overrides.items()
        }
        http = EgressClients.build(settings)
        hub = EventHub()
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        templates = TemplateRenderer(settings.templates, TEMPLATE_KITS)
        caller = AgentCaller(settings, box, PriceTable.load(overrides), http, templates)
        content = ExecutionContent(box)
        engine = ExecutionEngine(database, settings.executions, caller, hub, owner, content)
        runner = InProcessRunner(engine, database, settings.executions)
        deliveries = DeliveryDispatcher(
            database, settings.deliveries, box, http, owner, smtp=settings.monitor.alerts.smtp
        )
        rollups = RollupFolder(database, settings.rollups)
        engine.observers.append(deliveries.on_engine_commit)
        engine.observers.append(rollups.on_engine_commit)
        return cls(database, hub, http, runner, templates, deliveries, rollups, content)

    async def start(self) -> None:
        self.rollups.observers.append(self._rolled_up)
        await self.runner.start()
        await self.deliveries.start()
        await self.rollups.start()
        self.warming = asyncio.get_running_loop().create_task(self.templates.warm())

    def _rolled_up(self, folded: Folded) -> None:
        """The analytics figures of the accounts a fold added to changed."""
        for account_id in folded.accounts:
            self.cache.changed("analytics", account_id)

    async def stop(self) -> None:
        await self.runner.stop()
        await self.deliveries.stop()
        await self.rollups.stop()
        if self.warming is not None:
            self.warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.warming
        await self.templates.close()
        await self.http.aclose()
