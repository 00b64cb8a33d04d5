"""What an agent's step produces must be storable: its output, its context writes and the
bodies of the messages it sends meet the input limits (``app.core.input_limits``) before the
engine records them.

A template agent can write a NUL character or NaN, and a model can answer one; stored, they
broke the step's transaction on PostgreSQL (or made the execution unreadable on SQLite), so
the execution was retried until it was "abandoned" for good. An ``AgentOutcome`` checks itself
when it is made: one that cannot be stored is an ``UnstorableOutput``, a provider error, so the
step fails with the reason, like any other failed call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from app.core.input_limits import STORED_MAX_DEPTH, find_problems
from app.services.providers.base import ProviderError


class UnstorableOutput(ProviderError):
    """The agent's output, context writes or messages break an input limit."""

    kind = "unstorable_output"


def check_storable(output: str, context_writes: Mapping[str, Any], bodies: Iterable[Any]) -> None:
    """Raise ``UnstorableOutput`` naming the first place that cannot be stored: ``/output``,
    ``/context/<key>/...`` or ``/messages/<n>/...`` (the n-th message's body)."""
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
