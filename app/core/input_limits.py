"""Input limits: what every value a client sends, and every value an agent produces, must meet
before Renum stores it, checked by one walker.

- No NUL character (``\\u0000``) in any string or object key: PostgreSQL text cannot hold one
  (SQLite would keep it, so the two databases would disagree).
- No unpaired surrogate (``\\ud800``): not encodable as UTF-8, so no database can store it.
- Only finite numbers: JSON has no NaN or Infinity (Python's parser reads ``NaN``,
  ``Infinity`` and ``1e999`` anyway), PostgreSQL's ``json`` refuses them, and a response
  carrying one cannot be rendered.
- At most ``max_depth`` nested objects and arrays: deeper values cannot be serialised back
  (pydantic stops at about 255 levels) and cost recursion everywhere they go.

``find_problems(value, "/body", max_depth=64)`` lists where a parsed value breaks a limit, each
with a JSON pointer; ``text_problem`` checks one string; ``strict_loads`` parses JSON text and
refuses what breaks a limit; ``parse_error_problem`` names the limit behind an exception
Python's JSON parser raised (too deep to parse at all, an integer too long to convert).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

# The request body's default (``Settings.max_json_depth``).
DEFAULT_MAX_DEPTH = 64
# What an agent may store (context writes, message bodies): deeper than a request may send,
# since a template can wrap what it was given, and well below the serializer's ~255 levels.
STORED_MAX_DEPTH = 128
# Problems reported at most per value: enough to fix a request, bounded for a hostile one.
MAX_PROBLEMS = 20

NUL = "nul_character"
SURROGATE = "unpaired_surrogate"
NON_FINITE = "non_finite_number"
TOO_DEEP = "too_deep"
NUMBER_TOO_LONG = "number_too_long"
# Every error type this module produces.
PROBLEM_TYPES = frozenset({NUL, SURROGATE, NON_FINITE, TOO_DEEP, NUMBER_TOO_LONG})


@dataclass(frozen=True)
class InputProblem:
    """One place where a value breaks a limit."""

    pointer: str  # JSON pointer, e.g. "/body/variables/a"
    type: str  # one of PROBLEM_TYPES
    message: str


class UnsafeInput(ValueError):
    """A value breaks an input limit; ``problems`` says where and how."""

    def __init__(self, problems: list[InputProblem]) -> None:
        self.problems = problems
        first = problems[0]
        super().__init__(f"{first.pointer or '/'}: {first.message}")


def escape(token: str) -> str:
    """One JSON pointer reference token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def text_problem(text: str) -> tuple[str, str] | None:
    """The limit ``text`` breaks, as (type, message), or None."""
    if "\x00" in text:
        return NUL, "contains a NUL character (\\u0000), which cannot be stored"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return SURROGATE, "contains an unpaired UTF-16 surrogate, which cannot be stored"
    return None


def _pointer(path: tuple[Any, ...] | None) -> str:
    parts: list[str] = []
    while path is not None:
        path, key = path
        parts.append(escape(str(key)))
    return "".join("/" + part for part in reversed(parts))


def find_problems(
    value: Any,
    pointer: str = "",
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    limit: int = MAX_PROBLEMS,
) -> list[InputProblem]:
    """Where ``value`` (parsed JSON: dicts, lists, strings, numbers, booleans, None; tuples
    count as lists) breaks a limit, in document order, at most ``limit`` problems.
    ``pointer`` is where ``value`` itself sits; the root container is at depth 1."""
    problems: list[InputProblem] = []
    # (value, path, depth of the container holding it); a path is a (parent, key) chain whose
    # pointer is only spelled out when a problem is found.
    stack: list[tuple[Any, tuple[Any, ...] | None, int]] = [(value, None, 0)]
    while stack and len(problems) < limit:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            found = text_problem(item)
            if found is not None:
                problems.append(InputProblem(pointer + _pointer(path), *found))
        elif isinstance(item, float):
            if not math.isfinite(item):
                message = f"{item} is not a finite number; JSON numbers are finite"
                problems.append(InputProblem(pointer + _pointer(path), NON_FINITE, message))
        elif isinstance(item, dict | list | tuple):
            if depth + 1 > max_depth:
                message = f"nested deeper than {max_depth} levels of objects and arrays"
                problems.append(InputProblem(pointer + _pointer(path), TOO_DEEP, message))
                continue
            if isinstance(item, dict):
                children = []
                for key, child in item.items():
                    child_path = (path, key)
                    if isinstance(key, str):
                        found = text_problem(key)
                        if found is not None:
                            type_, message = found
                            at = pointer + _pointer(child_path)
                            problems.append(InputProblem(at, type_, f"the key {message}"))
                            continue
                    children.append((child, child_path, depth + 1))
            else:
                children = [(child, (path, index), depth + 1) for index, child in enumerate(item)]
            stack.extend(reversed(children))
    return problems[:limit]


def parse_error_problem(exc: BaseException, pointer: str = "") -> InputProblem | None:
    """The limit behind an exception Python's JSON parser raised, if it was one: nesting too
    deep to parse at all (``RecursionError``), or an integer longer than Python converts."""
    if isinstance(exc, RecursionError):
        return InputProblem(pointer, TOO_DEEP, "nested too deeply to parse")
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return InputProblem(pointer, NUMBER_TOO_LONG, "a number has too many digits")
    return None


def strict_loads(data: str | bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse JSON text; raise ``json.JSONDecodeError`` if it is not JSON and ``UnsafeInput``
    if it breaks a limit."""
    try:
        value = json.loads(data)
    except json.JSONDecodeError:
        raise
    except (RecursionError, ValueError) as exc:
        problem = parse_error_problem(exc)
        if problem is None:
            raise
        raise UnsafeInput([problem]) from None
    problems = find_problems(value, max_depth=max_depth)
    if problems:
        raise UnsafeInput(problems)
    return value
