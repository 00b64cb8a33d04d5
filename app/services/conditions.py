"""Evaluating a conditional step's guard against the shared context, with JSON semantics:
a boolean is not a number (``true`` neither equals ``1`` nor orders with numbers), and a
`matches` pattern runs with a time limit (the ``regex`` engine), so no pattern can stall the
process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import regex

from app.schemas.workflows import Guard

_MISSING = object()
MATCH_TIMEOUT_SECONDS = 0.02


class ConditionTimeout(Exception):
    """A `matches` pattern took longer than its time limit on the context value."""


def _same(actual: Any, expected: Any) -> bool:
    """Equality of JSON values: booleans are not numbers, containers compare item by item."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(map(_same, actual, expected))
    if isinstance(actual, Mapping) and isinstance(expected, Mapping):
        return actual.keys() == expected.keys() and all(
            _same(actual[k], expected[k]) for k in actual
        )
    return bool(actual == expected)


def _orderable(value: Any) -> bool:
    return isinstance(value, int | float | str) and not isinstance(value, bool)


def resolve(context: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (keys of mappings, indexes of lists), or ``_MISSING``."""
    current: Any = context
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current


def _compare(op: str, actual: Any, expected: Any) -> bool:
    numbers = all(isinstance(v, int | float) for v in (actual, expected))
    strings = all(isinstance(v, str) for v in (actual, expected))
    if not (_orderable(actual) and _orderable(expected) and (numbers or strings)):
        return False
    if op == "gt":
        return bool(actual > expected)
    if op == "gte":
        return bool(actual >= expected)
    if op == "lt":
        return bool(actual < expected)
    return bool(actual <= expected)


def _contains(actual: Any, expected: Any) -> bool:
    if isinstance(actual, str):
        return isinstance(expected, str) and expected in actual
    if isinstance(actual, list | tuple):
        return any(_same(item, expected) for item in actual)
    if isinstance(actual, Mapping):
        return isinstance(expected, str) and expected in actual
    return False


def _matches(pattern: str, actual: Any) -> bool:
    if not isinstance(actual, str):
        return False
    try:
        return regex.search(pattern, actual, timeout=MATCH_TIMEOUT_SECONDS) is not None
    except TimeoutError:
        raise ConditionTimeout(
            f"the pattern {pattern!r} took longer than {MATCH_TIMEOUT_SECONDS}s"
        ) from None


def check(condition: Guard, context: Mapping[str, Any]) -> bool:
    """One condition (a guard with a path and an operator)."""
    actual = resolve(context, condition.path or "")
    op, expected = condition.op, condition.value
    if op == "exists":
        return actual is not _MISSING
    if op == "not_exists":
        return actual is _MISSING
    if actual is _MISSING:
        # A missing value equals nothing, contains nothing and orders with nothing.
        return op in {"not_equals", "not_contains"}
    if op == "equals":
        return _same(actual, expected)
    if op == "not_equals":
        return not _same(actual, expected)
    if op == "contains":
        return _contains(actual, expected)
    if op == "not_contains":
        return not _contains(actual, expected)
    if op == "matches":
        return _matches(str(expected), actual)
    if op is None:  # a validated Guard with a path always has an operator
        raise ValueError("a condition needs an operator")
    return _compare(op, actual, expected)


def evaluate(guard: Guard | None, context: Mapping[str, Any]) -> bool:
    """True when the step should run (no guard always runs)."""
    if guard is None:
        return True
    if guard.all is not None:
        return all(evaluate(item, context) for item in guard.all)
    if guard.any is not None:
        return any(evaluate(item, context) for item in guard.any)
    return check(guard, context)
