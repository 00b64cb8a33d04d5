"""Messages between agents: the mailbox a step sends through, template access to it (through
the bounded renderer's workers, shared by this module's tests), and the engine's side
(numbering, inboxes, request deadlines, responses), without I/O."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from template_support import SharedRenderer

from app.db.base import utcnow
from app.models import MessageKind
from app.services import messages
from app.services.messages import (
    Mailbox,
    Message,
    MessageDraft,
    MessageError,
    OutgoingMessage,
    inbox,
)
from app.services.providers import BuiltinAgentError, run_builtin

WRITER, REVIEWER, EDITOR = (str(uuid.UUID(int=n)) for n in (1, 2, 3))
NAMES = {"draft": WRITER, "review": REVIEWER, WRITER: WRITER, REVIEWER: REVIEWER}


def request_item(correlation_id: str = "c-1", sender: str | None = WRITER) -> dict[str, Any]:
    return {
        "id": "m-1",
        "seq": 1,
        "kind": "request",
        "from": sender,
        "from_step": "draft",
        "body": "is this clear?",
        "correlation_id": correlation_id,
        "status": "pending",
    }


def test_send_and_broadcast_resolve_step_ids_and_agent_ids() -> None:
    box = Mailbox(directory=NAMES)
    assert box.send("review", {"text": "hi"}) == ""
    assert box.send(WRITER, "note to self") == ""
    assert box.broadcast("all hands") == ""
    assert box.outgoing == [
        OutgoingMessage(MessageKind.direct, REVIEWER, {"text": "hi"}),
        OutgoingMessage(MessageKind.direct, WRITER, "note to self"),
        OutgoingMessage(MessageKind.broadcast, None, "all hands"),
    ]


def test_ask_returns_a_fresh_correlation_id_with_its_deadline() -> None:
    box = Mailbox(directory=NAMES)
    first = box.ask("review", "ok?", timeout_seconds=5)
    second = box.ask("review", "and now?")
    assert first != second
    assert uuid.UUID(first)
    assert box.outgoing[0] == OutgoingMessage(MessageKind.request, REVIEWER, "ok?", first, 5.0)
    assert box.outgoing[1].timeout_seconds == messages.DEFAULT_REQUEST_TIMEOUT_SECONDS


@pytest.mark.parametrize("timeout", [0, -1, True, "5", messages.MAX_REQUEST_TIMEOUT_SECONDS + 1])
def test_ask_refuses_a_bad_timeout(timeout: Any) -> None:
    with pytest.raises(MessageError, match="timeout_seconds must be a number"):
        Mailbox(directory=NAMES).ask("review", "ok?", timeout_seconds=timeout)


@pytest.mark.parametrize("to", ["nobody", None, 3])
def test_unknown_recipients_are_refused_with_the_names_known(to: Any) -> None:
    with pytest.raises(MessageError, match=r"send\(\): unknown recipient .*draft, review"):
        Mailbox(directory=NAMES).send(to, "hi")


def test_reply_answers_a_request_from_the_inbox_by_item_or_correlation_id() -> None:
    box = Mailbox(inbox=[request_item()], directory=NAMES)
    box.reply(box.inbox[0], "yes")
    box.reply("c-1", "still yes")
    assert box.outgoing == [
        OutgoingMessage(MessageKind.response, WRITER, "yes", "c-1"),
        OutgoingMessage(MessageKind.response, WRITER, "still yes", "c-1"),
    ]


def test_reply_needs_a_request_in_the_inbox_from_an_existing_agent() -> None:
    direct = {**request_item(), "kind": "direct"}
    with pytest.raises(MessageError, match="no request with correlation id 'c-1'"):
        Mailbox(inbox=[direct], directory=NAMES).reply("c-1", "yes")
    with pytest.raises(MessageError, match="no longer exists"):
        Mailbox(inbox=[request_item(sender=None)], directory=NAMES).reply("c-1", "yes")


def test_bodies_must_be_bounded_json() -> None:
    box = Mailbox(directory=NAMES)
    with pytest.raises(MessageError, match="JSON data"):
        box.send("review", {1, 2})
    with pytest.raises(MessageError, match="JSON data"):
        box.send("review", float("nan"))
    with pytest.raises(MessageError, match="at most 65536 bytes"):
        box.broadcast("x" * messages.MAX_MESSAGE_BYTES)
    assert box.outgoing == []


def test_a_step_sends_a_bounded_number_of_messages() -> None:
    box = Mailbox(directory=NAMES)
    for _ in range(messages.MAX_MESSAGES_PER_STEP):
        box.broadcast("tick")
    with pytest.raises(MessageError, match="at most 100 messages"):
        box.broadcast("one too many")


def test_directory_maps_step_ids_and_agent_ids_to_agents() -> None:
    steps = [{"id": "draft", "agent_id": uuid.UUID(WRITER)}, {"id": "review", "agent_id": REVIEWER}]
    assert messages.directory(steps) == NAMES


def test_output_messages_address_steps_or_everyone() -> None:
    assert messages.output_messages(["review", "*"], "the draft", NAMES) == [
        OutgoingMessage(MessageKind.direct, REVIEWER, "the draft"),
        OutgoingMessage(MessageKind.broadcast, None, "the draft"),
    ]


# Templates


@pytest.fixture(scope="module")
def templates() -> Iterator[SharedRenderer]:
    renderer = SharedRenderer()
    yield renderer
    renderer.shutdown()


async def run_template(templates: SharedRenderer, template: str, box: Mailbox) -> str:
    result = await run_builtin(
        "template",
        {"template": template},
        input="in",
        context={},
        variables={},
        mailbox=box,
        templates=templates,
    )
    return result.output


@pytest.mark.anyio
async def test_templates_read_the_inbox_and_send_every_kind(templates: SharedRenderer) -> None:
    box = Mailbox(inbox=[request_item()], directory=NAMES)
    output = await run_template(
        templates,
        "{% for m in inbox %}{{ m.from_step }} asks: {{ m.body }}"
        "{{ reply(m, 'yes') }}{% endfor %}"
        "{{ send('draft', 'thanks') }}{{ broadcast('done') }}"
        "{% set cid = ask('draft', 'more?', 30) %}[{{ cid | length }}]",
        box,
    )
    assert output == "draft asks: is this clear?[36]"
    assert [m.kind for m in box.outgoing] == ["response", "direct", "broadcast", "request"]
    response, direct, _, request = box.outgoing
    assert (response.recipient, response.correlation_id) == (WRITER, "c-1")
    assert (direct.recipient, direct.body) == (WRITER, "thanks")
    assert (request.timeout_seconds, len(request.correlation_id or "")) == (30.0, 36)


@pytest.mark.anyio
async def test_template_message_errors_fail_the_agent_with_the_reason(
    templates: SharedRenderer,
) -> None:
    with pytest.raises(BuiltinAgentError, match=r"send\(\): unknown recipient 'ghost'"):
        await run_template(templates, "{{ send('ghost', 'boo') }}", Mailbox(directory=NAMES))


@pytest.mark.anyio
async def test_the_inbox_cannot_be_changed_by_a_template(templates: SharedRenderer) -> None:
    with pytest.raises(BuiltinAgentError, match="template not allowed"):
        await run_template(templates, "{{ inbox.append(1) }}", Mailbox(directory=NAMES))


@pytest.mark.anyio
async def test_agents_without_a_mailbox_send_nothing() -> None:
    result = await run_builtin("echo", {}, input="x", context={}, variables={})
    assert result.output == "x"


# The engine's side: an execution's messages in memory and one transaction's draft


A, B, C = (uuid.UUID(int=n) for n in (11, 12, 13))
NOW = utcnow()


def out(kind: MessageKind, to: uuid.UUID | None, body: Any, **extra: Any) -> OutgoingMessage:
    return OutgoingMessage(kind, str(to) if to else None, body, **extra)


def committed(draft: MessageDraft) -> list[Message]:
    """What a later transaction starts from once ``draft`` is committed."""
    return draft.messages()


def test_messages_are_numbered_in_order_and_announced() -> None:
    draft = MessageDraft([])
    events = draft.post(
        [out(MessageKind.direct, B, {"n": 1}), out(MessageKind.broadcast, None, "all")],
        sender_agent_id=A,
        sender_step="draft",
        now=NOW,
    )
    later = MessageDraft(committed(draft))
    events += later.post(
        [out(MessageKind.direct, A, "back")], sender_agent_id=B, sender_step="review", now=NOW
    )
    stored = [event.stored() for event in events]
    assert [(kind, data["seq"], data["kind"], data["status"]) for kind, data in stored] == [
        ("message", 1, "direct", "delivered"),
        ("message", 2, "broadcast", "delivered"),
        ("message", 3, "direct", "delivered"),
    ]
    assert stored[0][1]["to"] == str(B)
    assert stored[1][1]["to"] is None
    assert [m.seq for m in committed(later)] == [1, 2, 3]
    assert later.statuses == {}
    row = later.added[0].row(uuid.UUID(int=99))
    assert row["execution_id"] == uuid.UUID(int=99)
    assert (row["seq"], row["sender_step"], row["recipient_agent_id"]) == (3, "review", A)


def test_inboxes_hold_direct_messages_and_other_agents_broadcasts() -> None:
    draft = MessageDraft([])
    draft.post(
        [out(MessageKind.direct, B, "for B"), out(MessageKind.broadcast, None, "for the rest")],
        sender_agent_id=A,
        sender_step="draft",
        now=NOW,
    )
    messages = committed(draft)
    assert [m["body"] for m in inbox(messages, A)] == []
    assert [m["body"] for m in inbox(messages, B)] == ["for B", "for the rest"]
    assert [m["body"] for m in inbox(messages, C)] == ["for the rest"]
    assert inbox(messages, C)[0]["from"] == str(A)
    assert inbox(messages, None) == []


def request_and_reply(*, reply_after: float, timeout: float) -> list[str]:
    asking = MessageDraft([])
    asking.post(
        [out(MessageKind.request, B, "ok?", correlation_id="c-9", timeout_seconds=timeout)],
        sender_agent_id=A,
        sender_step="draft",
        now=NOW,
    )
    replying = MessageDraft(committed(asking))
    replying.post(
        [out(MessageKind.response, A, "yes", correlation_id="c-9")] * 2,
        sender_agent_id=B,
        sender_step="review",
        now=NOW + timedelta(seconds=reply_after),
    )
    return [m.status for m in committed(replying)]


def test_a_response_in_time_answers_its_request_and_a_second_one_is_late() -> None:
    assert request_and_reply(reply_after=1, timeout=5) == ["answered", "delivered", "late"]


def test_a_response_after_the_deadline_is_late() -> None:
    assert request_and_reply(reply_after=6, timeout=5) == ["pending", "late", "late"]


def ask(draft: MessageDraft, correlation_id: str, timeout: float) -> None:
    draft.post(
        [out(MessageKind.request, B, "?", correlation_id=correlation_id, timeout_seconds=timeout)],
        sender_agent_id=A,
        sender_step="draft",
        now=NOW,
    )


def test_requests_time_out_at_their_deadline_or_when_the_execution_ends() -> None:
    draft = MessageDraft([])
    ask(draft, "short", 1.0)
    ask(draft, "long", 600.0)
    later = MessageDraft(committed(draft))
    assert later.expire(NOW) == []
    expired = later.expire(NOW + timedelta(seconds=2))
    assert [
        (kind, data["correlation_id"], data["reason"])
        for kind, data in (event.stored() for event in expired)
    ] == [("message_timed_out", "short", "deadline passed")]
    ended = later.expire(NOW + timedelta(seconds=3), ending=True)
    assert [(event.correlation_id, event.reason) for event in ended] == [
        ("long", "the execution ended")
    ]
    assert {m.correlation_id: m.status for m in committed(later)} == {
        "short": "timed_out",
        "long": "timed_out",
    }
    assert later.expire(NOW + timedelta(days=1), ending=True) == []


def test_a_request_sent_as_the_execution_ends_times_out_with_it() -> None:
    draft = MessageDraft([])
    ask(draft, "last", 60.0)
    [(kind, data)] = [event.stored() for event in draft.expire(NOW, ending=True)]
    assert (kind, data["reason"]) == ("message_timed_out", "the execution ended")
    assert [m.status for m in draft.added] == ["timed_out"]
    assert draft.statuses == {}
