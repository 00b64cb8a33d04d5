"""The four strategies as one pure function: given the workflow and the committed state of
an execution's steps, decide what happens next. No I/O, so every decision can be replayed
from the database after a crash."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from app.models import ExecutionStatus, StepStatus
from app.schemas.workflows import WorkflowDefinition, WorkflowStep
from app.services.conditions import ConditionTimeout, evaluate

_templates = SandboxedEnvironment(autoescape=False, undefined=StrictUndefined)


@dataclass(frozen=True)
class StepState:
    status: StepStatus
    output: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class PlannedStep:
    key: str
    agent_id: str
    input: str


@dataclass(frozen=True)
class Decision:
    """Exactly one of: steps to run now, steps to skip, or the execution's end."""

    run: list[PlannedStep] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    finish: ExecutionStatus | None = None
    result: Any = None
    error: str | None = None


class StepInputError(Exception):
    """A step's input template could not be rendered."""

    def __init__(self, step_key: str, message: str) -> None:
        super().__init__(f"step {step_key!r}: {message}")
        self.step_key = step_key


def render_input(
    step: WorkflowStep,
    *,
    input: str,
    prompt: str,
    context: Mapping[str, Any],
    variables: Mapping[str, Any],
) -> str:
    if step.input_template is None:
        return input
    try:
        return _templates.from_string(step.input_template).render(
            input=input, prompt=prompt, context=context, variables=variables
        )
    except TemplateError as exc:
        raise StepInputError(step.id, f"input template failed: {exc}") from exc


def decide(
    workflow: WorkflowDefinition,
    states: Mapping[str, StepState],
    *,
    prompt: str,
    context: Mapping[str, Any],
    variables: Mapping[str, Any],
) -> Decision:
    """What to do next. Steps not in ``states`` are pending."""

    def state(step: WorkflowStep) -> StepState:
        return states.get(step.id, StepState(StepStatus.pending))

    steps = workflow.steps
    running = [s for s in steps if state(s).status is StepStatus.running]
    failed = [s for s in steps if state(s).status is StepStatus.failed]
    pending = [s for s in steps if state(s).status is StepStatus.pending]

    def render(step: WorkflowStep, step_input: str) -> PlannedStep:
        text = render_input(
            step, input=step_input, prompt=prompt, context=context, variables=variables
        )
        return PlannedStep(step.id, str(step.agent_id), text)

    if workflow.strategy == "parallel":
        if failed and workflow.failure_policy == "fail_fast":
            if running:
                return Decision()  # wait for the in-flight steps to land
            return Decision(
                cancel=[s.id for s in pending],
                finish=ExecutionStatus.failed,
                error=f"step {failed[0].id!r} failed: {state(failed[0]).error}",
            )
        if pending:
            return Decision(run=[render(s, prompt) for s in pending])
        if running:
            return Decision()
        outputs = {
            s.id: (state(s).output if state(s).status is StepStatus.completed else None)
            for s in steps
        }
        result = {"outputs": outputs, "failed": [s.id for s in failed]}
        if failed and len(failed) == len(steps):
            return Decision(finish=ExecutionStatus.failed, error="every step failed", result=result)
        return Decision(finish=ExecutionStatus.completed, result=result)

    # sequential, pipeline and conditional run one step at a time, in order.
    if running:
        return Decision()
    if failed:
        first = failed[0]
        return Decision(
            cancel=[s.id for s in pending],
            finish=ExecutionStatus.failed,
            error=f"step {first.id!r} failed: {state(first).error}",
        )
    if not pending:
        completed = [s for s in steps if state(s).status is StepStatus.completed]
        return Decision(
            finish=ExecutionStatus.completed,
            result=state(completed[-1]).output if completed else None,
        )
    step = pending[0]
    if workflow.strategy == "conditional":
        try:
            taken = evaluate(step.when, context)
        except ConditionTimeout as exc:
            raise StepInputError(step.id, f"its condition failed: {exc}") from exc
        if not taken:
            return Decision(skip=[step.id])
    step_input = prompt
    if workflow.strategy == "pipeline":
        done = [s for s in steps if state(s).status is StepStatus.completed]
        step_input = (state(done[-1]).output or "") if done else prompt
    return Decision(run=[render(step, step_input)])
