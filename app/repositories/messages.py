"""Queries over the messages the agents of an execution sent each other."""

from __future__ import annotations

import uuid

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import ExecutionMessage, MessageKind


class MessageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def list(
        self,
        execution_id: uuid.UUID,
        *,
        after: int,
        limit: int,
        kind: str | None = None,
        agent_id: uuid.UUID | None = None,
    ) -> list[ExecutionMessage]:
        """Messages after sequence ``after``, oldest first; with ``agent_id``, those the agent
        sent or received (other agents' broadcasts included)."""
        query = select(ExecutionMessage).where(
            ExecutionMessage.execution_id == execution_id, ExecutionMessage.seq > after
        )
        if kind is not None:
            query = query.where(ExecutionMessage.kind == kind)
        if agent_id is not None:
            query = query.where(
                or_(
                    ExecutionMessage.sender_agent_id == agent_id,
                    ExecutionMessage.recipient_agent_id == agent_id,
                    and_(
                        ExecutionMessage.kind == MessageKind.broadcast.value,
                        ExecutionMessage.sender_agent_id.is_distinct_from(agent_id),
                    ),
                )
            )
        rows = await self.session.scalars(query.order_by(ExecutionMessage.seq).limit(limit))
        return list(rows)
