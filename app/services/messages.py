"""Messages between the agents of an execution: direct, broadcast, and request/response.

A step reads its **inbox** (messages addressed to its agent, and other agents' broadcasts,
committed before the step started) and sends messages through its :class:`Mailbox`; what it
sends is written with the step's result, in the same transaction, and announced as ``message``
events. A request carries a correlation id and a deadline: the recipient answers it with
``reply``; a request without an answer by its deadline, or when the execution ends, is
``timed_out`` (a ``message_timed_out`` event). Steps that run in the same turn of a parallel
workflow do not see each other's messages; later steps do.

The write side is plain synchronous SQLAlchemy over a ``Session`` so the engine can run it in
whichever transaction commits the step.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.models import ExecutionMessage, MessageKind, MessageStatus

MAX_MESSAGE_BYTES = 64 * 1024
MAX_MESSAGES_PER_STEP = 100
MAX_REQUEST_TIMEOUT_SECONDS = 86_400.0
DEFAULT_REQUEST_TIMEOUT_SECONDS = 60.0
BROADCAST = "*"

Event = tuple[str, dict[str, Any]]


class MessageError(ValueError):
    """A step tried to send a message it may not send; the message says why."""


@dataclass(frozen=True)
class OutgoingMessage:
    kind: MessageKind
    recipient: str | None  # an agent id; None for a broadcast
    body: Any
    correlation_id: str | None = None
    timeout_seconds: float | None = None


@dataclass
class Mailbox:
    """One step's view of the messages: the inbox it reads and the messages it sends.

    ``directory`` maps every name a recipient may be given by (the workflow's step ids and the
    agent ids of its steps) to an agent id.
    """

    inbox: list[dict[str, Any]] = field(default_factory=list)
    directory: Mapping[str, str] = field(default_factory=dict)
    outgoing: list[OutgoingMessage] = field(default_factory=list)

    def send(self, to: Any, body: Any) -> str:
        self._queue(OutgoingMessage(MessageKind.direct, self._recipient("send", to), body))
        return ""

    def broadcast(self, body: Any) -> str:
        self._queue(OutgoingMessage(MessageKind.broadcast, None, body))
        return ""

    def ask(
        self, to: Any, body: Any, timeout_seconds: Any = DEFAULT_REQUEST_TIMEOUT_SECONDS
    ) -> str:
        """Send a request; return its correlation id (the reply carries the same one)."""
        if (
            isinstance(timeout_seconds, bool)
            or not isinstance(timeout_seconds, int | float)
            or not 0 < timeout_seconds <= MAX_REQUEST_TIMEOUT_SECONDS
        ):
            raise MessageError(
                f"ask(): timeout_seconds must be a number above 0 and at most "
                f"{MAX_REQUEST_TIMEOUT_SECONDS:g}"
            )
        correlation_id = str(uuid.uuid4())
        recipient = self._recipient("ask", to)
        self._queue(
            OutgoingMessage(
                MessageKind.request, recipient, body, correlation_id, float(timeout_seconds)
            )
        )
        return correlation_id

    def reply(self, message: Any, body: Any) -> str:
        """Answer a request from the inbox, given as the inbox item or its correlation id."""
        wanted = message.get("correlation_id") if isinstance(message, Mapping) else message
        request = next(
            (
                item
                for item in self.inbox
                if item["kind"] == MessageKind.request and item["correlation_id"] == wanted
            ),
            None,
        )
        if request is None:
            raise MessageError(f"reply(): no request with correlation id {wanted!r} in the inbox")
        if request["from"] is None:
            raise MessageError("reply(): the agent that asked no longer exists")
        self._queue(
            OutgoingMessage(MessageKind.response, request["from"], body, request["correlation_id"])
        )
        return ""

    def _recipient(self, verb: str, to: Any) -> str:
        agent_id = self.directory.get(to) if isinstance(to, str) else None
        if agent_id is None:
            known = ", ".join(sorted(self.directory)) or "none"
            raise MessageError(
                f"{verb}(): unknown recipient {to!r}; expected a step id or agent id of this "
                f"workflow ({known})"
            )
        return agent_id

    def _queue(self, message: OutgoingMessage) -> None:
        if len(self.outgoing) >= MAX_MESSAGES_PER_STEP:
            raise MessageError(f"a step sends at most {MAX_MESSAGES_PER_STEP} messages")
        try:
            size = len(json.dumps(message.body, allow_nan=False).encode())
        except (TypeError, ValueError):
            raise MessageError("a message body must be JSON data") from None
        if size > MAX_MESSAGE_BYTES:
            raise MessageError(f"a message body is at most {MAX_MESSAGE_BYTES} bytes as JSON")
        self.outgoing.append(message)


def directory(steps: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Recipient names of a workflow's steps (``{"id", "agent_id"}`` dicts): step ids and
    agent ids, each mapped to its agent id."""
    names: dict[str, str] = {}
    for step in steps:
        agent_id = str(step["agent_id"])
        names[agent_id] = agent_id
    for step in steps:
        names[step["id"]] = str(step["agent_id"])
    return names


def output_messages(recipients: Sequence[str], output: str, names: Mapping[str, str]) -> list:
    """The messages a step's ``send_output_to`` sends: its output to each recipient."""
    return [
        OutgoingMessage(MessageKind.broadcast, None, output)
        if to == BROADCAST
        else OutgoingMessage(MessageKind.direct, names[to], output)
        for to in recipients
    ]


def as_inbox_item(message: ExecutionMessage) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "seq": message.seq,
        "kind": message.kind,
        "from": str(message.sender_agent_id) if message.sender_agent_id else None,
        "from_step": message.sender_step,
        "body": message.body,
        "correlation_id": message.correlation_id,
        "status": message.status,
    }


def inboxes(
    session: Session, execution_id: uuid.UUID, agent_ids: Sequence[uuid.UUID]
) -> dict[str, list[dict[str, Any]]]:
    """Each agent's inbox: messages to it and other agents' broadcasts, oldest first."""
    wanted = set(agent_ids)
    if not wanted:
        return {}
    rows = session.scalars(
        select(ExecutionMessage)
        .where(
            ExecutionMessage.execution_id == execution_id,
            or_(
                ExecutionMessage.recipient_agent_id.in_(wanted),
                ExecutionMessage.kind == MessageKind.broadcast.value,
            ),
        )
        .order_by(ExecutionMessage.seq)
    ).all()
    boxes: dict[str, list[dict[str, Any]]] = {str(a): [] for a in wanted}
    for row in rows:
        if row.kind == MessageKind.broadcast:
            readers = [a for a in wanted if a != row.sender_agent_id]
        else:
            readers = [row.recipient_agent_id] if row.recipient_agent_id in wanted else []
        for reader in readers:
            boxes[str(reader)].append(as_inbox_item(row))
    return boxes


def _message_event(row: ExecutionMessage) -> Event:
    return (
        "message",
        {
            "id": str(row.id),
            "seq": row.seq,
            "kind": row.kind,
            "status": row.status,
            "from": str(row.sender_agent_id) if row.sender_agent_id else None,
            "from_step": row.sender_step,
            "to": str(row.recipient_agent_id) if row.recipient_agent_id else None,
            "correlation_id": row.correlation_id,
        },
    )


def write(
    session: Session,
    execution_id: uuid.UUID,
    *,
    step_key: str,
    sender_agent_id: uuid.UUID | None,
    outgoing: Sequence[OutgoingMessage],
    now: datetime,
) -> list[Event]:
    """Store a step's messages (in the caller's transaction); return their events."""
    if not outgoing:
        return []
    last = session.scalar(
        select(func.max(ExecutionMessage.seq)).where(ExecutionMessage.execution_id == execution_id)
    )
    seq = int(last or 0)
    events: list[Event] = []
    for message in outgoing:
        seq += 1
        status = MessageStatus.delivered
        expires_at = None
        if message.kind == MessageKind.request:
            status = MessageStatus.pending
            expires_at = now + timedelta(seconds=message.timeout_seconds or 0)
        elif message.kind == MessageKind.response:
            answered = session.execute(
                update(ExecutionMessage)
                .where(
                    ExecutionMessage.execution_id == execution_id,
                    ExecutionMessage.correlation_id == message.correlation_id,
                    ExecutionMessage.kind == MessageKind.request.value,
                    ExecutionMessage.status == MessageStatus.pending.value,
                    ExecutionMessage.expires_at > now,
                )
                .values(status=MessageStatus.answered.value)
            )
            if answered.rowcount == 0:  # type: ignore[attr-defined]
                status = MessageStatus.late
        row = ExecutionMessage(
            id=uuid.uuid4(),
            execution_id=execution_id,
            seq=seq,
            kind=message.kind.value,
            status=status.value,
            sender_agent_id=sender_agent_id,
            sender_step=step_key,
            recipient_agent_id=uuid.UUID(message.recipient) if message.recipient else None,
            correlation_id=message.correlation_id,
            body=message.body,
            expires_at=expires_at,
            created_at=now,
        )
        session.add(row)
        events.append(_message_event(row))
    return events


def expire(
    session: Session, execution_id: uuid.UUID, *, now: datetime, ending: bool = False
) -> list[Event]:
    """Time out the requests whose deadline has passed (every pending one when the execution
    is ``ending``); return their ``message_timed_out`` events."""
    query = select(ExecutionMessage).where(
        ExecutionMessage.execution_id == execution_id,
        ExecutionMessage.status == MessageStatus.pending.value,
    )
    if not ending:
        query = query.where(ExecutionMessage.expires_at <= now)
    events: list[Event] = []
    for row in session.scalars(query.order_by(ExecutionMessage.seq)).all():
        row.status = MessageStatus.timed_out.value
        reason = "the execution ended" if ending and row.expires_at > now else "deadline passed"
        events.append(
            (
                "message_timed_out",
                {"id": str(row.id), "correlation_id": row.correlation_id, "reason": reason},
            )
        )
    return events
