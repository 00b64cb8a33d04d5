"""The events the engine stores with an execution (``execution_events``) and streams to its
clients, as typed values.

Each event is a frozen dataclass with the wire name of its ``type``, a one-line docstring
saying when it is emitted, and typed fields; ``data()`` gives the JSON object stored (and
streamed) as the event's ``data``: one key per field, in field order (a field's key is its
name unless its metadata names another, like ``from``), with enums as their values and
decimals and UUIDs as strings. ``EVENT_TYPES`` lists every event class, for the code that
reads events back (``from_stored``) and for generated documentation (``data_fields``).

Events stay typed inside the engine; they become ``(type, data)`` pairs (``stored()``) only
where ``EngineRepository.add_events`` writes them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from typing import Any, ClassVar, Self

from app.models import ExecutionStatus, MessageKind, MessageStatus

StoredEvent = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class DataField:
    """One key of an event's ``data``: its name there, the field holding it, and its type."""

    key: str
    attribute: str
    annotation: Any  # the field's resolved type, e.g. ``int``, ``str | None``, ``Decimal``
    meaning: str = ""  # what the value is, where its name alone could mislead


def _key(name: str) -> dict[str, str]:
    """Field metadata: the field is stored under ``name`` (a keyword, like ``from``)."""
    return {"key": name}


def _meaning(text: str) -> dict[str, str]:
    """Field metadata: what the field's value is (said in the event catalogue)."""
    return {"meaning": text}


@dataclass(frozen=True)
class EngineEvent:
    """Base of every engine event: its wire ``type`` and its ``data``."""

    type: ClassVar[str]

    def data(self) -> dict[str, Any]:
        """The event's ``data`` exactly as stored and streamed."""
        return {
            f.metadata.get("key", f.name): _to_wire(getattr(self, f.name))
            for f in dataclasses.fields(self)
        }

    def stored(self) -> StoredEvent:
        """The ``(type, data)`` pair ``EngineRepository.add_events`` writes."""
        return self.type, self.data()

    @classmethod
    def data_fields(cls) -> tuple[DataField, ...]:
        """The keys of the event's ``data``, in order, with their field's type."""
        return _data_fields(cls)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        """The event whose ``data()`` is ``data``; ValueError if its keys are not the event's."""
        described = cls.data_fields()
        if list(data) != [d.key for d in described]:
            raise ValueError(f"{cls.__name__} data has keys {list(data)}, not the event's")
        return cls(**{d.attribute: _from_wire(d.annotation, data[d.key]) for d in described})


_DATA_FIELDS: dict[type[EngineEvent], tuple[DataField, ...]] = {}


def _data_fields(cls: type[EngineEvent]) -> tuple[DataField, ...]:
    if cls not in _DATA_FIELDS:
        hints = typing.get_type_hints(cls)
        _DATA_FIELDS[cls] = tuple(
            DataField(
                f.metadata.get("key", f.name), f.name, hints[f.name], f.metadata.get("meaning", "")
            )
            for f in dataclasses.fields(cls)
        )
    return _DATA_FIELDS[cls]


def _to_wire(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    return value


def _from_wire(annotation: Any, value: Any) -> Any:
    if value is None:
        return None
    members = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    for member in members:
        plain = typing.get_origin(member) is None and isinstance(member, type)
        if plain and issubclass(member, Enum | Decimal | uuid.UUID):
            return member(value)
    return value


# -- the execution ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecutionStarted(EngineEvent):
    """The execution was claimed for the first time and its first steps start."""

    type: ClassVar[str] = "execution_started"
    workflow_version: int


@dataclass(frozen=True)
class ExecutionResumed(EngineEvent):
    """A process claimed the execution again after its previous owner stopped driving it."""

    type: ClassVar[str] = "execution_resumed"
    resumed_count: int


@dataclass(frozen=True)
class ExecutionEnded(EngineEvent):
    """Base of the events that end an execution (not itself an event)."""

    statuses: ClassVar[frozenset[ExecutionStatus]] = frozenset()
    status: ExecutionStatus
    reason: str
    error: str | None

    def __post_init__(self) -> None:
        if self.status not in self.statuses:
            name = type(self).__name__
            raise ValueError(f"{name} does not end an execution as {self.status.value}")


@dataclass(frozen=True)
class ExecutionCompleted(ExecutionEnded):
    """The execution ended with every step done (its ``result`` is set)."""

    type: ClassVar[str] = "execution_completed"
    statuses: ClassVar[frozenset[ExecutionStatus]] = frozenset({ExecutionStatus.completed})


@dataclass(frozen=True)
class ExecutionFailed(ExecutionEnded):
    """The execution ended failed: a step failed, it made no progress, or it was abandoned."""

    type: ClassVar[str] = "execution_failed"
    statuses: ClassVar[frozenset[ExecutionStatus]] = frozenset({ExecutionStatus.failed})


@dataclass(frozen=True)
class ExecutionCancelled(ExecutionEnded):
    """The execution ended cancelled: on request, over budget, or out of time (``timed_out``)."""

    type: ClassVar[str] = "execution_cancelled"
    statuses: ClassVar[frozenset[ExecutionStatus]] = frozenset(
        {ExecutionStatus.cancelled, ExecutionStatus.timed_out}
    )


# -- steps -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepStarted(EngineEvent):
    """A step was committed as running; its agent is called next."""

    type: ClassVar[str] = "step_started"
    step: str
    agent_id: uuid.UUID


@dataclass(frozen=True)
class StepCompleted(EngineEvent):
    """A step's agent answered; its output is recorded."""

    type: ClassVar[str] = "step_completed"
    step: str
    output: str


@dataclass(frozen=True)
class StepFailed(EngineEvent):
    """A step failed: its agent call, its input template or its condition."""

    type: ClassVar[str] = "step_failed"
    step: str
    error: dict[str, Any]  # at least ``message``; a provider error's summary for a failed call


@dataclass(frozen=True)
class StepCancelled(EngineEvent):
    """A running step was interrupted (a cancel, its time budget, or another step's failure)."""

    type: ClassVar[str] = "step_cancelled"
    step: str
    reason: str


@dataclass(frozen=True)
class StepSkipped(EngineEvent):
    """A conditional workflow's step was skipped because its condition is false."""

    type: ClassVar[str] = "step_skipped"
    step: str
    reason: str


@dataclass(frozen=True)
class ContextUpdated(EngineEvent):
    """A completed step wrote a new version of a shared context key."""

    type: ClassVar[str] = "context_updated"
    key: str
    version: int
    step: str


@dataclass(frozen=True)
class CostUpdated(EngineEvent):
    """A step's model call was billed: its own cost (``step_*``) and the execution's totals."""

    type: ClassVar[str] = "cost_updated"
    step: str = field(metadata=_meaning("The step whose model call was billed."))
    step_input_tokens: int = field(metadata=_meaning("Input tokens of this step's call."))
    step_output_tokens: int = field(metadata=_meaning("Output tokens of this step's call."))
    step_cost_usd: Decimal = field(metadata=_meaning("What this step's call cost, in US dollars."))
    total_input_tokens: int = field(
        metadata=_meaning(
            "The execution's input tokens so far, this call included: the sum of the events' "
            "`step_input_tokens` (adding up `total_*` counts twice)."
        )
    )
    total_output_tokens: int = field(
        metadata=_meaning("The execution's output tokens so far, this call included.")
    )
    total_cost_usd: Decimal = field(
        metadata=_meaning(
            "What the execution has cost so far, this call included. Events recorded before "
            "`step_*` and `total_*` existed carry `input_tokens`, `output_tokens` and "
            "`cost_usd`: these running totals."
        )
    )


# -- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageSent(EngineEvent):
    """A completed step sent a message (direct, broadcast, request or response)."""

    type: ClassVar[str] = "message"
    id: uuid.UUID
    seq: int
    kind: MessageKind
    status: MessageStatus
    from_: uuid.UUID | None = field(metadata=_key("from"))
    from_step: str
    to: uuid.UUID | None
    correlation_id: str | None


@dataclass(frozen=True)
class MessageTimedOut(EngineEvent):
    """A request got no response by its deadline, or before the execution ended."""

    type: ClassVar[str] = "message_timed_out"
    id: uuid.UUID
    correlation_id: str | None
    reason: str


EVENT_TYPES: tuple[type[EngineEvent], ...] = (
    ExecutionStarted,
    ExecutionResumed,
    StepStarted,
    StepCompleted,
    StepFailed,
    StepCancelled,
    StepSkipped,
    ContextUpdated,
    CostUpdated,
    MessageSent,
    MessageTimedOut,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionCancelled,
)
"""Every event the engine emits, for readers of stored events and generated documentation."""

TERMINAL_EVENT_TYPES: tuple[type[ExecutionEnded], ...] = (
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionCancelled,
)
"""The events that end an execution: the last event of every execution that ended."""

_BY_TYPE: dict[str, type[EngineEvent]] = {cls.type: cls for cls in EVENT_TYPES}


def from_stored(event_type: str, data: Mapping[str, Any]) -> EngineEvent:
    """The event stored as ``(event_type, data)``; ValueError for an unknown type or data."""
    cls = _BY_TYPE.get(event_type)
    if cls is None:
        raise ValueError(f"unknown engine event type {event_type!r}")
    return cls.from_data(data)


def from_stored_pairs(pairs: Iterable[StoredEvent]) -> list[EngineEvent]:
    """Events made elsewhere as ``(type, data)`` pairs (``app.services.messages``), typed."""
    return [from_stored(event_type, data) for event_type, data in pairs]


def execution_ended(status: ExecutionStatus, reason: str, error: str | None) -> ExecutionEnded:
    """The event that ends an execution as ``status``."""
    for cls in TERMINAL_EVENT_TYPES:
        if status in cls.statuses:
            return cls(status, reason, error)
    raise ValueError(f"an execution does not end as {status.value}")
