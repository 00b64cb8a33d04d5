"""Checking a workflow definition against its team, beyond what its schema says."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import regex

from app.core.errors import ValidationFailed
from app.core.templates import template_problem
from app.schemas.workflows import Guard, WorkflowDefinition
from app.services.messages import BROADCAST

_ORDERING = {"gt", "gte", "lt", "lte"}


def _conditions(guard: Guard, pointer: str) -> Iterator[tuple[Guard, str]]:
    """Every condition in a guard, with its JSON pointer."""
    if guard.members is not None:
        key = "all" if guard.all is not None else "any"
        for index, item in enumerate(guard.members):
            yield from _conditions(item, f"{pointer}/{key}/{index}")
    else:
        yield guard, pointer


def _check_condition(condition: Guard, pointer: str) -> None:
    needs_value = condition.op in _ORDERING or condition.op == "matches"
    if needs_value and condition.value is None:
        raise ValidationFailed.at(f"{pointer}/value", f"`{condition.op}` needs a value", "missing")
    if condition.op in _ORDERING and (
        isinstance(condition.value, bool) or not isinstance(condition.value, int | float | str)
    ):
        raise ValidationFailed.at(
            f"{pointer}/value", f"`{condition.op}` compares with a number or a string"
        )
    if condition.op == "matches":
        if not isinstance(condition.value, str):
            raise ValidationFailed.at(f"{pointer}/value", "`matches` takes a regular expression")
        try:
            regex.compile(condition.value)
        except regex.error as exc:
            raise ValidationFailed.at(
                f"{pointer}/value", f"invalid regular expression: {exc}"
            ) from None


def check_template(template: str, pointer: str) -> None:
    """A 422 at ``pointer`` unless ``template`` parses (it is never run here)."""
    problem = template_problem(template)
    if problem is not None:
        raise ValidationFailed.at(pointer, problem)


def validate_workflow(
    definition: WorkflowDefinition, member_ids: Sequence[uuid.UUID], pointer: str
) -> None:
    """Raise a 422 naming the first bad field of ``definition``."""
    members = set(member_ids)
    step_ids = {step.id for step in definition.steps}
    seen: set[str] = set()
    if definition.max_concurrency is not None and definition.strategy != "parallel":
        raise ValidationFailed.at(
            f"{pointer}/max_concurrency", "max_concurrency applies to parallel workflows only"
        )
    for index, step in enumerate(definition.steps):
        at = f"{pointer}/steps/{index}"
        if step.id in seen:
            raise ValidationFailed.at(f"{at}/id", f"duplicate step id {step.id!r}")
        seen.add(step.id)
        if step.agent_id not in members:
            raise ValidationFailed.at(
                f"{at}/agent_id", "unknown agent: not a member of this team", "unknown_agent"
            )
        if step.input_template is not None:
            check_template(step.input_template, f"{at}/input_template")
        if step.when is not None:
            if definition.strategy != "conditional":
                raise ValidationFailed.at(
                    f"{at}/when", "conditions apply to conditional workflows only"
                )
            for condition, where in _conditions(step.when, f"{at}/when"):
                _check_condition(condition, where)
        for position, recipient in enumerate(step.send_output_to or ()):
            if recipient != BROADCAST and recipient not in step_ids:
                raise ValidationFailed.at(
                    f"{at}/send_output_to/{position}",
                    f'unknown step {recipient!r}: give a step id of this workflow or "*"',
                    "unknown_step",
                )


def default_workflow(member_ids: Sequence[uuid.UUID]) -> dict[str, Any]:
    """A team without a workflow runs its members one after another."""
    return {
        "strategy": "sequential",
        "steps": [
            {"id": f"step-{index + 1}", "agent_id": str(agent_id)}
            for index, agent_id in enumerate(member_ids)
        ],
    }
