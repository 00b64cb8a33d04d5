"""An execution followed live over a long-lived connection (the WebSocket): who is calling,
whether they may see the execution, its events as they come, and cancelling it. Each
operation opens a short session of its own, so the connection never holds a transaction."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from app.core.config import Settings
from app.core.errors import ProblemError
from app.core.security import TokenCodec
from app.db.database import SQLAlchemyManager
from app.schemas.executions import EventOut
from app.services.auth import AuthService
from app.services.executions import ExecutionService, event_stream
from app.services.principal import Principal

if TYPE_CHECKING:
    from app.services.runtime import Runtime


class LiveExecutionService:
    def __init__(
        self, database: SQLAlchemyManager, settings: Settings, codec: TokenCodec, runtime: Runtime
    ) -> None:
        self.database = database
        self.settings = settings
        self.codec = codec
        self.runtime = runtime

    async def authenticate(self, token: str) -> Principal | None:
        """Who the access token or API key belongs to; ``None`` when it is not valid."""
        async with self.database.session() as session:
            try:
                return await AuthService(session, self.codec).authenticate(token)
            except ProblemError:
                return None

    async def visible(self, principal: Principal, execution_id: uuid.UUID) -> bool:
        """Whether the execution exists and the caller may see it."""
        async with self.database.session() as session:
            try:
                service = ExecutionService(session, self.settings, self.runtime.content)
                await service.get(principal, execution_id)
            except ProblemError:
                return False
            return True

    async def cancel(self, principal: Principal, execution_id: uuid.UUID, mode: object) -> None:
        """Cancel as ``POST /executions/{id}/cancel`` does (``ProblemError`` when refused, a
        mode that is not a cancel mode included)."""
        async with self.database.session() as session:
            service = ExecutionService(session, self.settings, self.runtime.content)
            await service.cancel(
                principal, execution_id, mode, self.runtime.runner, self.runtime.hub
            )

    def events(
        self, execution_id: uuid.UUID, after: int, idle_seconds: float
    ) -> AsyncIterator[EventOut | None]:
        """The execution's events after ``after`` as they come (see ``event_stream``)."""
        runtime = self.runtime
        return event_stream(
            runtime.database, runtime.hub, execution_id, after, idle_seconds, runtime.content
        )
