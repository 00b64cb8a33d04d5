"""The four strategies as one pure function: given the workflow and the committed state of
an execution's steps, decide what happens next. No I/O, so every decision can be replayed
from the database after a crash.

A planned step carries its input template unrendered: :func:`render_input` renders it when the
step runs (through the bounded renderer, outside any transaction, within the step's time
budget), and a failure fails that step."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.core.input_limits import text_problem
from app.core.templates import RenderError, TemplateRenderer
from app.models import ExecutionStatus, StepStatus
from app.schemas.workflows import WorkflowDefinition, WorkflowStep
from app.services.conditions import ConditionTimeout, evaluate


@dataclass(frozen=True)
class StepState:
    status: StepStatus
    output: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class PlannedStep:
    key: str
    agent_id: str
    input: str  # before its input template, if it has one
    template: str | None = None


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
    """A step's input could not be made: its input template failed, or its condition."""

    def __init__(self, step_key: str, message: str) -> None:
        super().__init__(f"step {step_key!r}: {message}")
        self.step_key = step_key


async def render_input(
    templates: TemplateRenderer,
    step: PlannedStep,
    *,
    prompt: str,
    context: Mapping[str, Any],
    variables: Mapping[str, Any],
    owner: Hashable | None = None,
) -> str:
    """The step's input after its input template (``input``, ``prompt``, ``context`` and
    ``variables`` in scope), rendered as ``owner`` (the execution's account: it holds at most
    its share of the render workers); raises StepInputError if the template fails or renders
    what cannot be stored."""
    if step.template is None:
        return step.input
    data = {"input": step.input, "prompt": prompt, "context": context, "variables": variables}
    try:
        rendered = (await templates.render(step.template, data, owner=owner)).output
    except RenderError as exc:
        raise StepInputError(step.key, f"input template failed: {exc.reason}") from None
    # The rendered input is stored with the step: what cannot be stored fails the step here.
    problem = text_problem(rendered)
    if problem is not None:
        raise StepInputError(step.key, f"input template failed: its output {problem[1]}")
    return rendered


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

    def plan(step: WorkflowStep, step_input: str) -> PlannedStep:
        return PlannedStep(step.id, str(step.agent_id), step_input, step.input_template)

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
            return Decision(run=[plan(s, prompt) for s in pending])
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
    return Decision(run=[plan(step, step_input)])
