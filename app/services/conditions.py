"""Evaluating a conditional step's guard against the shared context."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from app.schemas.workflows import Guard

_MISSING = object()


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
    try:
        if op == "gt":
            return bool(actual > expected)
        if op == "gte":
            return bool(actual >= expected)
        if op == "lt":
            return bool(actual < expected)
        return bool(actual <= expected)
    except TypeError:
        return False


def _contains(actual: Any, expected: Any) -> bool:
    if isinstance(actual, str):
        return isinstance(expected, str) and expected in actual
    if isinstance(actual, list | tuple):
        return expected in actual
    if isinstance(actual, Mapping):
        return isinstance(expected, str) and expected in actual
    return False


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
        return bool(actual == expected)
    if op == "not_equals":
        return bool(actual != expected)
    if op == "contains":
        return _contains(actual, expected)
    if op == "not_contains":
        return not _contains(actual, expected)
    if op == "matches":
        return isinstance(actual, str) and re.search(str(expected), actual) is not None
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
