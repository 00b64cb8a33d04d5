"""Workflow definitions: which agents run, in what shape, under which conditions."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

Strategy = Literal["sequential", "parallel", "pipeline", "conditional"]
Operator = Literal[
    "equals",
    "not_equals",
    "contains",
    "not_contains",
    "gt",
    "gte",
    "lt",
    "lte",
    "exists",
    "not_exists",
    "matches",
]
UNARY_OPERATORS = frozenset({"exists", "not_exists"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _only(present: tuple[str, ...], kinds: dict[str, str]) -> dict[str, Any]:
    """One shape of a guard, for its JSON Schema: these keys set, the others absent or null."""
    return {
        "required": list(present),
        "properties": {
            key: {"type": kinds[key] if key in present else "null"}
            for key in ("path", "op", "all", "any")
        },
    }


# What `_one_shape` checks, said in the schema too: a condition, an `all` group or an `any` one.
_SHAPES: dict[str, JsonValue] = {
    "oneOf": [
        _only(("path", "op"), {"path": "string", "op": "string"}),
        _only(("all",), {"all": "array"}),
        _only(("any",), {"any": "array"}),
    ]
}


class Guard(_Strict):
    """A condition on a context path, e.g. `{"path": "review.score", "op": "gte", "value": 3}`,
    or a group of guards: `{"all": [...]}` or `{"any": [...]}`."""

    model_config = ConfigDict(json_schema_extra=_SHAPES)

    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="Dotted path into the shared context.",
    )
    op: Operator | None = None
    value: Any = Field(default=None, description="Not used by `exists` / `not_exists`.")
    all: list[Guard] | None = Field(default=None, min_length=1, max_length=100)
    any: list[Guard] | None = Field(default=None, min_length=1, max_length=100)

    @model_validator(mode="after")
    def _one_shape(self) -> Guard:
        groups = [name for name in ("all", "any") if getattr(self, name) is not None]
        if groups:
            if len(groups) > 1 or self.path is not None or self.op is not None:
                raise ValueError("a group has exactly one of `all` or `any`, and no path or op")
        elif self.path is None or self.op is None:
            raise ValueError("a condition needs `path` and `op` (or use `all` / `any`)")
        return self

    @property
    def members(self) -> list[Guard] | None:
        return self.all if self.all is not None else self.any


class WorkflowStep(_Strict):
    id: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Unique within the workflow.",
        examples=["research"],
    )
    agent_id: uuid.UUID = Field(description="A member agent of the team.")
    input_template: str | None = Field(
        default=None,
        max_length=20_000,
        description="Jinja2 template building this step's input from `input` (the previous "
        "output in a pipeline, else the prompt), `prompt`, `context` and `variables`.",
    )
    when: Guard | None = Field(
        default=None, description="`conditional` workflows: run the step only if this holds."
    )
    send_output_to: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Send the step's output as a message to these steps' agents (step ids), or "
        'to every other agent with `"*"` (a broadcast).',
        examples=[["review"]],
    )


class WorkflowDefinition(_Strict):
    strategy: Strategy
    steps: list[WorkflowStep] = Field(
        min_length=1, max_length=1000, description="The steps, in order."
    )
    max_concurrency: int | None = Field(
        default=None, ge=1, le=1000, description="`parallel`: steps running at once at most."
    )
    failure_policy: Literal["fail_fast", "continue"] = Field(
        default="fail_fast",
        description="`parallel`: stop at the first failed step, or run the rest and report.",
    )
