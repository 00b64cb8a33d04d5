"""What a running backend process holds for executions: the database, the event hub, the
HTTP client for model calls, the engine and its dispatcher. Built and torn down by the
application's lifespan; nothing here connects at import time."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

import httpx

from app.core.config import Settings
from app.core.crypto import SecretBox
from app.db.database import Database
from app.services.engine.agent_calls import AgentCaller
from app.services.engine.engine import ExecutionEngine
from app.services.engine.runner import InProcessRunner
from app.services.events import EventHub
from app.services.providers.prices import PriceTable


@dataclass
class Runtime:
    database: Database
    hub: EventHub
    http: httpx.AsyncClient
    runner: InProcessRunner

    @classmethod
    def build(cls, settings: Settings, database: Database, box: SecretBox) -> Runtime:
        overrides = {
            model: price.model_dump(mode="json")
            for model, price in settings.providers.price_overrides.items()
        }
        http = httpx.AsyncClient(limits=httpx.Limits(max_connections=100))
        hub = EventHub()
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        caller = AgentCaller(settings, box, PriceTable.load(overrides), http)
        engine = ExecutionEngine(database, settings.executions, caller, hub, owner)
        return cls(database, hub, http, InProcessRunner(engine, database, settings.executions))

    async def start(self) -> None:
        await self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()
        await self.http.aclose()
