"""The engine's typed events (``app.services.engine.events``): each one stores exactly the
``(type, data)`` pair the engine wrote when events were tuples (same keys, order and values,
so the stored and streamed JSON is unchanged), the catalogue lists every event class, and no
event is built as a tuple anywhere in the engine package any more."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import typing
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import app.services.engine
from app.db.base import utcnow
from app.models import ExecutionStatus, MessageKind, MessageStatus, StepStatus
from app.services.engine import events
from app.services.engine.events import (
    EVENT_TYPES,
    TERMINAL_EVENT_TYPES,
    ContextUpdated,
    CostUpdated,
    EngineEvent,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionEnded,
    ExecutionFailed,
    ExecutionResumed,
    ExecutionStarted,
    MessageSent,
    MessageTimedOut,
    StepCancelled,
    StepCompleted,
    StepFailed,
    StepSkipped,
    StepStarted,
    execution_ended,
    from_stored,
    from_stored_pairs,
)
from app.services.engine.state import Changes, StepRecord
from app.services.messages import MessageDraft, OutgoingMessage

AGENT, OTHER = uuid.UUID(int=7), uuid.UUID(int=8)
NOW = utcnow()
OldEvent = tuple[str, dict[str, Any]]


def _messages() -> tuple[list[OldEvent], list[OldEvent]]:
    """Real ``message`` and ``message_timed_out`` pairs, as ``app.services.messages`` makes
    them (a direct message, a broadcast, a request; then the request timing out)."""
    draft = MessageDraft([])
    posted = draft.post(
        [
            OutgoingMessage(MessageKind.direct, str(OTHER), {"n": 1}),
            OutgoingMessage(MessageKind.broadcast, None, "all"),
            OutgoingMessage(MessageKind.request, str(OTHER), "?", "c-1", 1.0),
        ],
        sender_agent_id=AGENT,
        sender_step="s0",
        now=NOW,
    )
    anonymous = MessageDraft(draft.messages()).post(
        [OutgoingMessage(MessageKind.response, str(AGENT), "late", "c-0")],
        sender_agent_id=None,
        sender_step="s1",
        now=NOW,
    )
    later = MessageDraft(draft.messages())
    timed_out = later.expire(NOW + timedelta(seconds=2))
    timed_out += MessageDraft(draft.messages()).expire(NOW, ending=True)
    return [e.stored() for e in posted + anonymous], [e.stored() for e in timed_out]


def _samples() -> Iterator[tuple[EngineEvent, OldEvent]]:
    """Each event class with the tuple the engine built for the same event before, written
    as the engine wrote it."""
    yield ExecutionStarted(workflow_version=3), ("execution_started", {"workflow_version": 3})
    yield ExecutionResumed(resumed_count=2), ("execution_resumed", {"resumed_count": 2})
    agent_id = str(AGENT)  # PlannedStep.agent_id
    yield (
        StepStarted(step="s0", agent_id=uuid.UUID(agent_id)),
        ("step_started", {"step": "s0", "agent_id": agent_id}),
    )
    yield (
        StepCompleted(step="s0", output="done"),
        ("step_completed", {"step": "s0", "output": "done"}),
    )
    failure = {"kind": "rate_limited", "message": "m", "status": 429, "retryable": True}
    yield (
        StepFailed(step="s0", error=failure),
        ("step_failed", {"step": "s0", "error": failure}),
    )
    yield (
        StepFailed(step="s1", error={"message": "input template failed"}),
        ("step_failed", {"step": "s1", "error": {"message": "input template failed"}}),
    )
    yield (
        StepCancelled(step="s0", reason="timed_out"),
        ("step_cancelled", {"step": "s0", "reason": "timed_out"}),
    )
    yield (
        StepSkipped(step="s2", reason="condition is false"),
        ("step_skipped", {"step": "s2", "reason": "condition is false"}),
    )
    yield (
        ContextUpdated(key="plan", version=2, step="s0"),
        ("context_updated", {"key": "plan", "version": 2, "step": "s0"}),
    )
    cost = Decimal("0.001") + Decimal("0.0025")
    yield (
        CostUpdated(
            step="s1",
            step_input_tokens=4,
            step_output_tokens=5,
            step_cost_usd=Decimal("0.0025"),
            total_input_tokens=10,
            total_output_tokens=20,
            total_cost_usd=cost,
        ),
        (
            "cost_updated",
            {
                "step": "s1",
                "step_input_tokens": 4,
                "step_output_tokens": 5,
                "step_cost_usd": "0.0025",
                "total_input_tokens": 10,
                "total_output_tokens": 20,
                "total_cost_usd": str(cost),
            },
        ),
    )
    posted, timed_out = _messages()
    for kind, data in posted:
        sender = uuid.UUID(data["from"]) if data["from"] else None
        recipient = uuid.UUID(data["to"]) if data["to"] else None
        sent = MessageSent(
            id=uuid.UUID(data["id"]),
            seq=data["seq"],
            kind=MessageKind(data["kind"]),
            status=MessageStatus(data["status"]),
            from_=sender,
            from_step=data["from_step"],
            to=recipient,
            correlation_id=data["correlation_id"],
        )
        yield sent, (kind, data)
    for kind, data in timed_out:
        expired = MessageTimedOut(
            id=uuid.UUID(data["id"]), correlation_id=data["correlation_id"], reason=data["reason"]
        )
        yield expired, (kind, data)
    # The engine's old map from an end's status to its event type.
    old_types = {
        ExecutionStatus.completed: "execution_completed",
        ExecutionStatus.failed: "execution_failed",
        ExecutionStatus.cancelled: "execution_cancelled",
        ExecutionStatus.timed_out: "execution_cancelled",
    }
    ends = [
        (ExecutionStatus.completed, "completed", None),
        (ExecutionStatus.failed, "abandoned", "the execution was abandoned 4 times"),
        (ExecutionStatus.cancelled, "budget_exceeded", None),
        (ExecutionStatus.timed_out, "timed_out", None),
    ]
    for status, reason, error in ends:
        yield (
            execution_ended(status, reason, error),
            (old_types[status], {"status": status.value, "reason": reason, "error": error}),
        )


SAMPLES = list(_samples())


@pytest.mark.parametrize(
    ("event", "old"), SAMPLES, ids=[f"{type(e).__name__}-{n}" for n, (e, _) in enumerate(SAMPLES)]
)
def test_each_event_stores_what_the_old_tuple_stored(event: EngineEvent, old: OldEvent) -> None:
    kind, data = event.stored()
    assert (kind, data) == old
    assert list(data) == list(old[1])  # the same keys in the same order
    assert json.dumps(data) == json.dumps(old[1])  # byte for byte, as stored and streamed
    assert all(type(value) in (str, int, dict, type(None)) for value in data.values())
    assert event.type == kind
    assert from_stored(*old) == event
    assert from_stored_pairs([old]) == [event]


def test_every_event_class_has_a_sample() -> None:
    assert {type(event) for event, _ in SAMPLES} == set(EVENT_TYPES)
    messages = [old for event, old in SAMPLES if isinstance(event, MessageSent)]
    assert {data["kind"] for _, data in messages} == {k.value for k in MessageKind}
    assert None in {data["from"] for _, data in messages}


def _event_classes() -> list[type[EngineEvent]]:
    return [
        cls
        for _, cls in inspect.getmembers(events, inspect.isclass)
        if issubclass(cls, EngineEvent) and cls.__module__ == events.__name__
    ]


def test_the_catalogue_lists_every_event_class_of_the_module() -> None:
    concrete = [cls for cls in _event_classes() if "type" in vars(cls)]
    bases = {cls for cls in _event_classes() if "type" not in vars(cls)}
    # A new event class must name its type and be listed; only these two are not events.
    assert bases == {EngineEvent, ExecutionEnded}
    assert set(concrete) == set(EVENT_TYPES)
    assert len(EVENT_TYPES) == len(set(EVENT_TYPES))
    names = [cls.type for cls in EVENT_TYPES]
    assert len(names) == len(set(names))
    assert set(TERMINAL_EVENT_TYPES) == {c for c in EVENT_TYPES if issubclass(c, ExecutionEnded)}


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda cls: cls.__name__)
def test_each_event_class_describes_itself(cls: type[EngineEvent]) -> None:
    """What a docs generator reads: the type, a one-line docstring and the data fields."""
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    doc = cls.__doc__ or ""
    assert doc.strip()
    assert "\n" not in doc.strip()
    assert doc is not EngineEvent.__doc__
    assert doc is not ExecutionEnded.__doc__
    fields = cls.data_fields()
    assert fields
    assert len({f.key for f in fields}) == len(fields)
    hints = typing.get_type_hints(cls)
    assert [f.annotation for f in fields] == [hints[f.attribute] for f in fields]
    assert all(f.annotation is not Any for f in fields)


def test_data_fields_name_the_stored_keys() -> None:
    keys = [f.key for f in MessageSent.data_fields()]
    assert keys == ["id", "seq", "kind", "status", "from", "from_step", "to", "correlation_id"]
    assert [f.key for f in CostUpdated.data_fields()][-1] == "total_cost_usd"
    assert CostUpdated.data_fields()[-1].annotation is Decimal
    assert all(f.meaning for f in CostUpdated.data_fields())  # the catalogue says what each is


def test_an_execution_ends_with_the_event_of_its_status() -> None:
    assert type(execution_ended(ExecutionStatus.completed, "completed", None)) is (
        ExecutionCompleted
    )
    assert type(execution_ended(ExecutionStatus.failed, "failed", "x")) is ExecutionFailed
    for status in (ExecutionStatus.cancelled, ExecutionStatus.timed_out):
        assert type(execution_ended(status, status.value, None)) is ExecutionCancelled
    for status in (ExecutionStatus.pending, ExecutionStatus.running):
        with pytest.raises(ValueError, match="does not end"):
            execution_ended(status, "x", None)
    with pytest.raises(ValueError, match="ExecutionCompleted does not end"):
        ExecutionCompleted(ExecutionStatus.failed, "failed", None)


def test_reading_back_refuses_unknown_types_and_other_keys() -> None:
    with pytest.raises(ValueError, match="unknown engine event type"):
        from_stored("step_exploded", {})
    with pytest.raises(ValueError, match="keys"):
        from_stored("step_completed", {"step": "s0"})
    with pytest.raises(ValueError, match="keys"):
        from_stored("step_completed", {"output": "x", "step": "s0"})  # order is part of it


def test_events_are_immutable() -> None:
    event = StepCompleted(step="s0", output="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.output = "y"  # type: ignore[misc]


# -- statuses stay enums inside the engine ---------------------------------------------------


def test_a_step_record_holds_its_status_as_an_enum_and_stores_text() -> None:
    row = {
        "id": uuid.UUID(int=1),
        "key": "s0",
        "agent_id": AGENT,
        "status": "running",
        "attempts": 1,
        "input": "go",
        "output": None,
        "error": None,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": Decimal(0),
        "started_at": NOW,
        "finished_at": None,
    }
    record = StepRecord.from_row(row)
    assert record.status is StepStatus.running
    assert record.state().status is StepStatus.running
    stored = record.row()
    assert stored["status"] == "running"
    assert type(stored["status"]) is str


def test_changes_hold_typed_events() -> None:
    assert typing.get_type_hints(Changes)["events"] == list[EngineEvent]


# -- no tuple-style events left in the engine package ---------------------------------------

ENGINE = Path(app.services.engine.__file__).parent
EVENT_NAMES = {cls.type for cls in EVENT_TYPES}


def _modules() -> list[Path]:
    paths = sorted(ENGINE.rglob("*.py"))
    assert ENGINE / "engine.py" in paths
    assert ENGINE / "events.py" in paths
    return paths


def _is_log_call(node: ast.Call) -> bool:
    func = node.func
    return (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and (func.value.id == "log")
    )


def _tuple_events(tree: ast.AST) -> list[str]:
    """Where an event is built or added as a tuple: a tuple whose first item is an event type
    name, or a tuple (or a list of tuples) appended or added to something called ``events``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple) and node.elts:
            first = node.elts[0]
            if isinstance(first, ast.Constant) and first.value in EVENT_NAMES:
                found.append(f"line {node.lineno}: tuple {first.value!r}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"append", "extend", "insert"}
            and "events" in ast.unparse(node.func.value)
            and any(isinstance(a, ast.Tuple | ast.List) for a in node.args)
        ):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        if (
            isinstance(node, ast.AugAssign)
            and "events" in ast.unparse(node.target)
            and isinstance(node.value, ast.List | ast.Tuple)
        ):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def _event_names_outside_logs(tree: ast.AST) -> list[str]:
    """Event type names written as strings, other than a log call's event name or a dict's
    key (``{"message": ...}``)."""
    allowed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_log_call(node) and node.args:
            allowed.add(id(node.args[0]))
        if isinstance(node, ast.Dict):
            allowed.update(id(key) for key in node.keys if key is not None)
    return [
        f"line {node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in EVENT_NAMES and id(node) not in allowed
    ]


def test_the_engine_package_builds_no_tuple_events() -> None:
    problems = {}
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = _tuple_events(tree)
        if path.name != "events.py":  # the one place that names the types
            found += _event_names_outside_logs(tree)
        if found:
            problems[path.name] = found
    assert problems == {}


def test_the_inspection_finds_tuple_events() -> None:
    """The check above catches the old forms."""
    old = """
changes.events.append(("step_completed", {"step": step.key, "output": outcome.output}))
changes.events += [("message", {})]
changes.events.append(
    (_FINISH_EVENTS[finish.status], {"status": finish.status.value})
)
log.info("execution_resumed", execution_id="x")
kind = "step_skipped"
"""
    tree = ast.parse(old)
    lines = {int(found.split(":")[0].removeprefix("line ")) for found in _tuple_events(tree)}
    assert lines == {2, 3, 4}  # the three event statements, not the log call or the string
    assert set(_event_names_outside_logs(tree)) == {
        "line 2: 'step_completed'",
        "line 3: 'message'",
        "line 8: 'step_skipped'",
    }
