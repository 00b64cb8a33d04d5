"""Messages between the agents of an execution: direct, broadcast, and request/response.

A step reads its **inbox** (messages addressed to its agent, and other agents' broadcasts,
committed before the step started) and sends messages through its :class:`Mailbox`; what it
sends is written with the step's result, in the same transaction, and announced as ``message``
events. A request carries a correlation id and a deadline: the recipient answers it with
``reply``; a request without an answer by its deadline (noticed at the next commit), or when
the execution ends, is ``timed_out`` (a ``message_timed_out`` event). Steps that run in the
same turn of a parallel workflow do not see each other's messages; later steps do.

The engine keeps an execution's messages in memory (:class:`Message`, loaded once when it
resumes an execution) and stages one transaction's changes in a :class:`MessageDraft`: no
statement is spent on messages unless a step sends one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from app.models import MessageKind, MessageStatus
from app.services.engine.events import EngineEvent, MessageSent, MessageTimedOut

MAX_MESSAGE_BYTES = 64 * 1024
MAX_MESSAGES_PER_STEP = 100
MAX_REQUEST_TIMEOUT_SECONDS = 86_400.0
DEFAULT_REQUEST_TIMEOUT_SECONDS = 60.0
BROADCAST = "*"

Event = EngineEvent


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


def output_messages(
    recipients: Sequence[str], output: str, names: Mapping[str, str]
) -> list[OutgoingMessage]:
    """The messages a step's ``send_output_to`` sends: its output to each recipient."""
    return [
        OutgoingMessage(MessageKind.broadcast, None, output)
        if to == BROADCAST
        else OutgoingMessage(MessageKind.direct, names[to], output)
        for to in recipients
    ]


@dataclass(frozen=True)
class Message:
    """One committed message, as the engine holds it."""

    id: uuid.UUID
    seq: int
    kind: str
    status: str
    sender_agent_id: uuid.UUID | None
    sender_step: str
    recipient_agent_id: uuid.UUID | None
    correlation_id: str | None
    body: Any
    expires_at: datetime | None
    created_at: datetime

    def readable_by(self, agent_id: uuid.UUID) -> bool:
        if self.kind == MessageKind.broadcast:
            return self.sender_agent_id != agent_id
        return self.recipient_agent_id == agent_id

    def inbox_item(self) -> dict[str, Any]:
        """How an agent sees the message."""
        return {
            "id": str(self.id),
            "seq": self.seq,
            "kind": self.kind,
            "from": str(self.sender_agent_id) if self.sender_agent_id else None,
            "from_step": self.sender_step,
            "body": self.body,
            "correlation_id": self.correlation_id,
            "status": self.status,
        }

    def row(self, execution_id: uuid.UUID) -> dict[str, Any]:
        """The ``execution_messages`` row (in plaintext: ``writes.sealed`` seals it)."""
        return {"execution_id": execution_id, **self.__dict__, "content_key_id": None}

    def event(self) -> MessageSent:
        return MessageSent(
            id=self.id,
            seq=self.seq,
            kind=MessageKind(self.kind),
            status=MessageStatus(self.status),
            from_=self.sender_agent_id,
            from_step=self.sender_step,
            to=self.recipient_agent_id,
            correlation_id=self.correlation_id,
        )


def inbox(messages: Sequence[Message], agent_id: uuid.UUID | None) -> list[dict[str, Any]]:
    """An agent's inbox: messages to it and other agents' broadcasts, oldest first."""
    if agent_id is None:
        return []
    return [m.inbox_item() for m in messages if m.readable_by(agent_id)]


@dataclass
class MessageDraft:
    """One transaction's changes to an execution's messages: new ones and new statuses."""

    committed: Sequence[Message]
    added: list[Message] = field(default_factory=list)
    statuses: dict[uuid.UUID, str] = field(default_factory=dict)  # of committed messages

    def post(
        self,
        outgoing: Sequence[OutgoingMessage],
        *,
        sender_agent_id: uuid.UUID | None,
        sender_step: str,
        now: datetime,
    ) -> list[Event]:
        """Add a step's messages; a response answers its request if it is still pending."""
        events: list[Event] = []
        for message in outgoing:
            status = MessageStatus.delivered
            expires_at = None
            if message.kind == MessageKind.request:
                status = MessageStatus.pending
                expires_at = now + timedelta(seconds=message.timeout_seconds or 0)
            elif message.kind == MessageKind.response:
                request = self._pending_request(message.correlation_id, now)
                if request is None:
                    status = MessageStatus.late
                else:
                    self.statuses[request.id] = MessageStatus.answered.value
            added = Message(
                id=uuid.uuid4(),
                seq=self._last_seq() + 1,
                kind=message.kind.value,
                status=status.value,
                sender_agent_id=sender_agent_id,
                sender_step=sender_step,
                recipient_agent_id=uuid.UUID(message.recipient) if message.recipient else None,
                correlation_id=message.correlation_id,
                body=message.body,
                expires_at=expires_at,
                created_at=now,
            )
            self.added.append(added)
            events.append(added.event())
        return events

    def expire(self, now: datetime, *, ending: bool = False) -> list[Event]:
        """Time out the pending requests whose deadline has passed (every one of them when
        the execution is ``ending``)."""
        events: list[Event] = []
        for index, message in enumerate(self.added):
            if self._expires(message, message.status, now, ending):
                self.added[index] = replace(message, status=MessageStatus.timed_out.value)
                events.append(self._timed_out(message, now))
        for message in self.committed:
            status = self.statuses.get(message.id, message.status)
            if self._expires(message, status, now, ending):
                self.statuses[message.id] = MessageStatus.timed_out.value
                events.append(self._timed_out(message, now))
        return events

    def messages(self) -> list[Message]:
        """The execution's messages once this draft is committed."""
        changed = [
            replace(m, status=self.statuses[m.id]) if m.id in self.statuses else m
            for m in self.committed
        ]
        return [*changed, *self.added]

    def _last_seq(self) -> int:
        if self.added:
            return self.added[-1].seq
        return self.committed[-1].seq if self.committed else 0

    def _pending_request(self, correlation_id: str | None, now: datetime) -> Message | None:
        for message in self.committed:
            if (
                message.kind == MessageKind.request
                and message.correlation_id == correlation_id
                and self.statuses.get(message.id, message.status) == MessageStatus.pending
                and message.expires_at is not None
                and message.expires_at > now
            ):
                return message
        return None

    @staticmethod
    def _expires(message: Message, status: str, now: datetime, ending: bool) -> bool:
        if status != MessageStatus.pending:
            return False
        return ending or (message.expires_at is not None and message.expires_at <= now)

    @staticmethod
    def _timed_out(message: Message, now: datetime) -> MessageTimedOut:
        deadline_passed = message.expires_at is not None and message.expires_at <= now
        return MessageTimedOut(
            id=message.id,
            correlation_id=message.correlation_id,
            reason="deadline passed" if deadline_passed else "the execution ended",
        )
