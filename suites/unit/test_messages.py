"""Messages between agents: the mailbox a step sends through, template access to it, and the
write side (numbering, request deadlines, responses, inboxes) on a real SQLite database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session

from app.db.base import Base, utcnow
from app.models import Account, Agent, Execution, ExecutionMessage, MessageKind, Team
from app.services import messages
from app.services.messages import Mailbox, MessageError, OutgoingMessage
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


def run_template(template: str, box: Mailbox) -> str:
    return run_builtin(
        "template", {"template": template}, input="in", context={}, variables={}, mailbox=box
    ).output


def test_templates_read_the_inbox_and_send_every_kind() -> None:
    box = Mailbox(inbox=[request_item()], directory=NAMES)
    output = run_template(
        "{% for m in inbox %}{{ m.from_step }} asks: {{ m.body }}"
        "{{ reply(m, 'yes') }}{% endfor %}"
        "{{ send('draft', 'thanks') }}{{ broadcast('done') }}"
        "{% set cid = ask('draft', 'more?', 30) %}[{{ cid | length }}]",
        box,
    )
    assert output == "draft asks: is this clear?[36]"
    assert [m.kind for m in box.outgoing] == ["response", "direct", "broadcast", "request"]


def test_template_message_errors_fail_the_agent_with_the_reason() -> None:
    with pytest.raises(BuiltinAgentError, match=r"send\(\): unknown recipient 'ghost'"):
        run_template("{{ send('ghost', 'boo') }}", Mailbox(directory=NAMES))


def test_the_inbox_cannot_be_changed_by_a_template() -> None:
    with pytest.raises(BuiltinAgentError, match="template not allowed"):
        run_template("{{ inbox.append(1) }}", Mailbox(directory=NAMES))


def test_agents_without_a_mailbox_send_nothing() -> None:
    result = run_builtin("echo", {}, input="x", context={}, variables={})
    assert result.output == "x"


# The write side, on a real database


@pytest.fixture
def store(tmp_path: Any) -> Iterator[tuple[Session, uuid.UUID, dict[str, uuid.UUID]]]:
    engine = create_engine(f"sqlite:///{tmp_path / 'messages.db'}")
    event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA foreign_keys=ON"))
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        account = Account(name="a", name_key="a")
        session.add(account)
        session.flush()
        agents = {
            name: Agent(account_id=account.id, name=name, provider="builtin", model="echo")
            for name in ("writer", "reviewer", "editor")
        }
        session.add_all(agents.values())
        team = Team(account_id=account.id, name="t", workflow={}, workflow_version=1)
        session.add(team)
        session.flush()
        execution = Execution(
            account_id=account.id,
            team_id=team.id,
            workflow_version=1,
            workflow={},
            prompt="p",
            status="running",
        )
        session.add(execution)
        session.commit()
        yield session, execution.id, {name: agent.id for name, agent in agents.items()}
    engine.dispose()


def out(kind: MessageKind, to: uuid.UUID | None, body: Any, **extra: Any) -> OutgoingMessage:
    return OutgoingMessage(kind, str(to) if to else None, body, **extra)


def test_messages_are_numbered_in_order_and_announced(store: Any) -> None:
    session, execution_id, agents = store
    now = utcnow()
    events = messages.write(
        session,
        execution_id,
        step_key="draft",
        sender_agent_id=agents["writer"],
        outgoing=[
            out(MessageKind.direct, agents["reviewer"], {"n": 1}),
            out(MessageKind.broadcast, None, "all"),
        ],
        now=now,
    )
    events += messages.write(
        session,
        execution_id,
        step_key="review",
        sender_agent_id=agents["reviewer"],
        outgoing=[out(MessageKind.direct, agents["writer"], "back")],
        now=now,
    )
    session.commit()
    assert [(kind, data["seq"], data["kind"], data["status"]) for kind, data in events] == [
        ("message", 1, "direct", "delivered"),
        ("message", 2, "broadcast", "delivered"),
        ("message", 3, "direct", "delivered"),
    ]
    assert events[0][1]["to"] == str(agents["reviewer"])
    assert events[1][1]["to"] is None
    assert (
        messages.write(
            session, execution_id, step_key="x", sender_agent_id=None, outgoing=[], now=now
        )
        == []
    )


def test_inboxes_hold_direct_messages_and_other_agents_broadcasts(store: Any) -> None:
    session, execution_id, agents = store
    messages.write(
        session,
        execution_id,
        step_key="draft",
        sender_agent_id=agents["writer"],
        outgoing=[
            out(MessageKind.direct, agents["reviewer"], "for reviewer"),
            out(MessageKind.broadcast, None, "for everyone else"),
        ],
        now=utcnow(),
    )
    session.commit()
    boxes = messages.inboxes(session, execution_id, list(agents.values()))
    bodies = {name: [m["body"] for m in boxes[str(agent)]] for name, agent in agents.items()}
    assert bodies == {
        "writer": [],
        "reviewer": ["for reviewer", "for everyone else"],
        "editor": ["for everyone else"],
    }
    assert boxes[str(agents["editor"])][0]["from"] == str(agents["writer"])
    assert messages.inboxes(session, execution_id, []) == {}


def request_and_reply(store: Any, *, reply_after: float, timeout: float) -> list[str]:
    session, execution_id, agents = store
    start = utcnow()
    messages.write(
        session,
        execution_id,
        step_key="draft",
        sender_agent_id=agents["writer"],
        outgoing=[
            out(
                MessageKind.request,
                agents["reviewer"],
                "ok?",
                correlation_id="c-9",
                timeout_seconds=timeout,
            )
        ],
        now=start,
    )
    messages.write(
        session,
        execution_id,
        step_key="review",
        sender_agent_id=agents["reviewer"],
        outgoing=[out(MessageKind.response, agents["writer"], "yes", correlation_id="c-9")],
        now=start + timedelta(seconds=reply_after),
    )
    session.commit()
    rows = session.query(ExecutionMessage).order_by(ExecutionMessage.seq).all()
    return [row.status for row in rows]


def test_a_response_in_time_answers_its_request(store: Any) -> None:
    assert request_and_reply(store, reply_after=1, timeout=5) == ["answered", "delivered"]


def test_a_response_after_the_deadline_is_late(store: Any) -> None:
    assert request_and_reply(store, reply_after=6, timeout=5) == ["pending", "late"]


def test_requests_time_out_at_their_deadline_or_when_the_execution_ends(store: Any) -> None:
    session, execution_id, agents = store
    start = utcnow()
    for correlation_id, timeout in (("short", 1.0), ("long", 600.0)):
        messages.write(
            session,
            execution_id,
            step_key="draft",
            sender_agent_id=agents["writer"],
            outgoing=[
                out(
                    MessageKind.request,
                    agents["reviewer"],
                    "?",
                    correlation_id=correlation_id,
                    timeout_seconds=timeout,
                )
            ],
            now=start,
        )
    assert messages.expire(session, execution_id, now=start) == []
    expired = messages.expire(session, execution_id, now=start + timedelta(seconds=2))
    assert [(kind, data["correlation_id"], data["reason"]) for kind, data in expired] == [
        ("message_timed_out", "short", "deadline passed")
    ]
    ended = messages.expire(session, execution_id, now=start + timedelta(seconds=3), ending=True)
    assert [(data["correlation_id"], data["reason"]) for _, data in ended] == [
        ("long", "the execution ended")
    ]
    session.commit()
    statuses = {row.correlation_id: row.status for row in session.query(ExecutionMessage)}
    assert statuses == {"short": "timed_out", "long": "timed_out"}
