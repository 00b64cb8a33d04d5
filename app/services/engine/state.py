"""What the engine holds in memory of an execution it owns (``Run``, as of its last commit),
one transaction's changes to it (``Changes``, applied once committed), and the budget checks.
No I/O here: the engine's transactions read and write the database around these."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from app.db.base import utcnow
from app.models import Agent, ExecutionStatus, ProviderKey, StepStatus
from app.schemas.workflows import WorkflowDefinition
from app.services.engine.agent_calls import AgentOutcome
from app.services.engine.events import EngineEvent
from app.services.engine.strategies import PlannedStep, StepState
from app.services.messages import Mailbox, Message, MessageDraft


@dataclass
class StepRecord:
    """One step as committed (or about to be): every field the engine writes."""

    id: uuid.UUID
    key: str
    agent_id: uuid.UUID | None
    status: StepStatus
    attempts: int
    input: str | None
    output: str | None
    error: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    started_at: datetime | None
    finished_at: datetime | None
    # The key its stored input, output and error are sealed with (None: plaintext); what the
    # engine holds is always plaintext.
    content_key_id: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> StepRecord:
        """A step as ``EngineRepository.steps`` reads it (its status stored as text)."""
        return cls(**{**row, "status": StepStatus(row["status"])})

    def state(self) -> StepState:
        return StepState(self.status, self.output, self.error)

    def row(self) -> dict[str, Any]:
        """The fields ``EngineRepository.write_steps`` stores."""
        return {
            "step_id": self.id,
            "status": self.status.value,
            "attempts": self.attempts,
            "input": self.input,
            "output": self.output,
            "error": self.error,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "content_key_id": self.content_key_id,
        }


@dataclass
class Run:
    """What the engine holds of an execution it owns, as of its last commit."""

    id: uuid.UUID
    account_id: uuid.UUID
    team_id: uuid.UUID
    created_by: uuid.UUID | None
    workflow: WorkflowDefinition
    prompt: str
    variables: dict[str, Any]
    budget: dict[str, Any]
    started_at: datetime | None
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    steps: dict[str, StepRecord]
    context: dict[str, Any]
    versions: dict[str, int]
    # The agents of the workflow and their keys, as they were when the execution was claimed.
    agents: dict[str, Agent]
    keys: dict[uuid.UUID, ProviderKey]
    messages: list[Message]
    # Recipient names (step ids and agent ids) -> agent ids, for messages.
    directory: dict[str, str]
    # The ownership's generation as of the last commit (``executions.lease``).
    lease: int = 0
    # The key that sealed its prompt (None: its content is stored in plaintext); everything
    # the engine writes for it is sealed too (``writes.sealed``).
    content_key_id: str | None = None

    @property
    def fail_fast(self) -> bool:
        return self.workflow.strategy == "parallel" and self.workflow.failure_policy == "fail_fast"


@dataclass(frozen=True)
class StepResult:
    """How one step ended: an outcome, an error, or an interruption."""

    key: str
    outcome: AgentOutcome | None = None
    error: str | None = None
    failure: dict[str, Any] | None = None
    interrupted: str | None = None
    input: str | None = None  # the input after its input template, once rendered

    @property
    def failed(self) -> bool:
        return self.outcome is None and self.interrupted is None


@dataclass(frozen=True)
class StartedStep:
    """A step committed as running, with what its agent call needs."""

    planned: PlannedStep
    agent: Agent | None
    key: ProviderKey | None
    context: Mapping[str, Any]
    variables: Mapping[str, Any]
    seconds: float | None  # what the time budget leaves it
    mailbox: Mailbox  # its agent's inbox; collects the messages it sends
    prompt: str  # the execution's, for its input template


@dataclass(frozen=True)
class Finish:
    status: ExecutionStatus
    reason: str
    result: Any = None
    error: str | None = None


@dataclass
class Changes:
    """One transaction's writes over a ``Run``; applied to it once committed."""

    run: Run
    steps: dict[str, StepRecord] = field(default_factory=dict)
    context: dict[str, Any] | None = None  # the whole context after this transaction's writes
    versions: dict[str, int] = field(default_factory=dict)
    context_rows: list[dict[str, Any]] = field(default_factory=list)
    ledger_rows: list[dict[str, Any]] = field(default_factory=list)
    events: list[EngineEvent] = field(default_factory=list)
    tokens: tuple[int, int, Decimal] = (0, 0, Decimal(0))
    starting: list[PlannedStep] = field(default_factory=list)
    started: list[StartedStep] = field(default_factory=list)
    finish: Finish | None = None
    mail: MessageDraft | None = None  # set once the transaction touches a message
    lease: int | None = None  # the lease generation once written

    def draft(self) -> MessageDraft:
        """This transaction's changes to the messages."""
        if self.mail is None:
            self.mail = MessageDraft(self.run.messages)
        return self.mail

    @property
    def current_messages(self) -> list[Message]:
        return self.run.messages if self.mail is None else self.mail.messages()

    def step(self, key: str) -> StepRecord:
        """The step as this transaction leaves it (a copy, changed freely)."""
        if key not in self.steps:
            self.steps[key] = dataclasses.replace(self.run.steps[key])
        return self.steps[key]

    def states(self) -> dict[str, StepState]:
        return {key: self.steps.get(key, step).state() for key, step in self.run.steps.items()}

    @property
    def current_context(self) -> Mapping[str, Any]:
        return self.run.context if self.context is None else self.context

    @property
    def totals(self) -> tuple[int, int, Decimal]:
        tokens_in, tokens_out, cost = self.tokens
        run = self.run
        return run.input_tokens + tokens_in, run.output_tokens + tokens_out, run.cost_usd + cost

    def apply(self) -> None:
        run = self.run
        run.steps.update(self.steps)
        if self.context is not None:
            run.context = self.context
        run.versions.update(self.versions)
        run.input_tokens, run.output_tokens, run.cost_usd = self.totals
        if self.mail is not None:
            run.messages = self.mail.messages()
        if self.lease is not None:
            run.lease = self.lease


def budget_breach(
    budget: Mapping[str, Any],
    totals: tuple[int, int, Decimal],
    started_at: datetime | None,
) -> Finish | None:
    """Whether the execution has used up its budget; checked before anything new starts."""
    tokens_in, tokens_out, cost = totals
    max_tokens = budget.get("max_tokens")
    if max_tokens is not None and tokens_in + tokens_out >= max_tokens:
        return Finish(ExecutionStatus.cancelled, "budget_exceeded")
    max_cost = budget.get("max_cost_usd")
    if max_cost is not None and Decimal(cost) >= Decimal(str(max_cost)):
        return Finish(ExecutionStatus.cancelled, "budget_exceeded")
    left = seconds_left(budget, started_at)
    if left is not None and left <= 0:
        return Finish(ExecutionStatus.timed_out, "timed_out")
    return None


def seconds_left(budget: Mapping[str, Any], started_at: datetime | None) -> float | None:
    max_seconds = budget.get("max_seconds")
    if max_seconds is None or started_at is None:
        return None
    return (started_at + timedelta(seconds=max_seconds) - utcnow()).total_seconds()
