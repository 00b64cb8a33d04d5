"""The input limits (``app.core.input_limits``) applied to every API request, in one place: a
dependency of the API router (``/api/v1``; the probes and ``/metrics`` take no input) that runs
before every other dependency of every operation, so nothing is authenticated, read or stored
for a request that breaks them. It costs a request about what any FastAPI dependency costs.

It reads what FastAPI has already parsed for the operation (the JSON body, the form, the path
parameters and the query parameters the operation takes; others are never read), so nothing is
parsed twice; a request without a body costs a look at its query string. A request that breaks
a limit gets one 422 problem listing every place, each with a JSON pointer
(``/body/variables/a``, ``/query/to``). Bodies too deep for Python's parser to read at all are
answered the same way by the error handlers (``app.core.errors``).
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends
from starlette.requests import HTTPConnection, Request

from app.core.errors import ValidationFailed
from app.core.input_limits import (
    DEFAULT_MAX_DEPTH,
    MAX_PROBLEMS,
    InputProblem,
    escape,
    find_problems,
    text_problem,
)

_UNSET = object()
# Where a route keeps the query parameters it takes (its own and its dependencies'), found
# on its first request.
_QUERY_NAMES = "_input_guard_query_names"


def _query_names(connection: HTTPConnection) -> frozenset[str] | None:
    """The query parameters the matched route takes; None if unknown (then all count)."""
    route = connection.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return None
    names: frozenset[str] | None = getattr(route, _QUERY_NAMES, None)
    if names is None:
        found: set[str] = set()
        todo = [dependant]
        while todo:
            current = todo.pop()
            found.update(field.alias for field in current.query_params)
            todo.extend(current.dependencies)
        names = frozenset(found)
        setattr(route, _QUERY_NAMES, names)
    return names


def _text_problems(
    pairs: Any, prefix: str, only: frozenset[str] | None = None
) -> list[InputProblem]:
    problems = []
    for name, value in pairs:
        if only is not None and name not in only:
            continue
        for text in (name, value):
            found = text_problem(text) if isinstance(text, str) else None
            if found is not None:
                problems.append(InputProblem(f"{prefix}/{escape(str(name))}", *found))
                break
    return problems


def input_problems(connection: HTTPConnection) -> list[InputProblem]:
    """Where the request's parsed inputs break a limit (an empty list if nowhere)."""
    problems = []
    if connection.scope.get("query_string"):
        query = connection.query_params.multi_items()
        problems += _text_problems(query, "/query", _query_names(connection))
    problems += _text_problems(connection.path_params.items(), "/path")
    if isinstance(connection, Request):
        body = getattr(connection, "_json", _UNSET)  # Starlette's cache of `request.json()`
        if body is not _UNSET:
            settings = getattr(connection.app.state, "settings", None)
            depth = settings.max_json_depth if settings is not None else DEFAULT_MAX_DEPTH
            problems += find_problems(body, "/body", max_depth=depth)
        form = connection._form  # Starlette's cache of `request.form()`
        if form is not None:
            problems += _text_problems(form.multi_items(), "/body")
    return problems[:MAX_PROBLEMS]


def unsafe_input(problems: list[InputProblem]) -> ValidationFailed:
    """The 422 problem for ``problems``."""
    count = len(problems)
    errors = [
        {
            "pointer": p.pointer,
            "location": p.pointer.strip("/").split("/", 1)[0] or "body",
            "type": p.type,
            "message": p.message,
        }
        for p in problems
    ]
    detail = f"{count} value{'s' if count != 1 else ''} cannot be accepted: {problems[0].message}."
    return ValidationFailed(detail, errors=errors)


async def check_inputs(connection: HTTPConnection) -> None:
    """Refuse a request whose inputs break a limit (422), before anything else runs."""
    if connection.scope["type"] != "http":
        return  # WebSocket messages are parsed strictly where they are read
    problems = input_problems(connection)
    if problems:
        raise unsafe_input(problems)


# For `APIRouter(dependencies=[CheckInputs])`.
CheckInputs = Depends(check_inputs)
