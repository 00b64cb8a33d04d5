"""What an agent's step produces must be storable: its output, its context writes and the
bodies of the messages it sends meet the input limits (``app.core.input_limits``) before the
engine records them.

A template agent can write a NUL character or NaN, and a model can answer one; stored, they
broke the step's transaction on PostgreSQL (or made the execution unreadable on SQLite), so
the execution was retried until it was "abandoned" for good. An ``AgentOutcome`` checks itself
when it is made: one that cannot be stored (or is larger than a step may add) is an
``UnstorableOutput``, a provider error, so the step fails with the reason, like any other
failed call.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from app.core.input_limits import STORED_MAX_DEPTH, find_problems
from app.services.providers.base import ProviderError

# What one step may add to an execution: every later step is handed the whole context, and
# every version of it is kept, so an unbounded step would grow both without end.
MAX_STEP_OUTPUT_CHARS = 1_000_000
MAX_STEP_CONTEXT_BYTES = 1_048_576


def _json_size(value: Any) -> int:
    try:
        return len(json.dumps(value, default=str).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError):
        return 0  # not JSON data: find_problems below says where


class UnstorableOutput(ProviderError):
    """The agent's output, context writes or messages break an input limit."""

    kind = "unstorable_output"


def check_storable(output: str, context_writes: Mapping[str, Any], bodies: Iterable[Any]) -> None:
    """Raise ``UnstorableOutput`` naming the first place that cannot be stored: ``/output``,
    ``/context/<key>/...`` or ``/messages/<n>/...`` (the n-th message's body), or saying
    which part is larger than a step may add (``MAX_STEP_OUTPUT_CHARS``,
    ``MAX_STEP_CONTEXT_BYTES``)."""
    if len(output) > MAX_STEP_OUTPUT_CHARS:
        raise UnstorableOutput(
            f"the agent's output is longer than {MAX_STEP_OUTPUT_CHARS} characters",
            retryable=False,
        )
    if context_writes and _json_size(context_writes) > MAX_STEP_CONTEXT_BYTES:
        raise UnstorableOutput(
            f"the agent's context writes are larger than {MAX_STEP_CONTEXT_BYTES} bytes as JSON",
            retryable=False,
        )
    problems = (
        find_problems(output, "/output", limit=1)
        or find_problems(dict(context_writes), "/context", max_depth=STORED_MAX_DEPTH, limit=1)
        or find_problems(list(bodies), "/messages", max_depth=STORED_MAX_DEPTH, limit=1)
    )
    if problems:
        first = problems[0]
        # The reason is stored with the failed step, so it must be storable itself.
        where = first.pointer.encode("utf-8", "backslashreplace").decode("utf-8")
        where = where.replace("\x00", "\\u0000")
        raise UnstorableOutput(
            f"the agent's result cannot be stored: {where}: {first.message}", retryable=False
        )
