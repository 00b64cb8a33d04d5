"""The ``builtin`` provider: deterministic local tool agents that need no network.

They let the embedded default run teams offline and make fast, exact agents for workflows:

- ``echo``: the output is the input.
- ``template``: ``parameters["template"]`` rendered by a sandboxed Jinja2 environment over
  ``input`` (the step's input text), ``context`` (the execution's shared context),
  ``variables`` (the execution's variables) and ``remember(key, value)``, which records a
  write to the shared context and renders as nothing. Undefined names are errors, not blanks.
  Messages to other agents (see :mod:`app.services.messages`): ``inbox`` (this agent's
  messages), ``send(to, body)``, ``broadcast(body)``, ``ask(to, body, timeout_seconds)``
  (returns the request's correlation id) and ``reply(request, body)``; ``to`` is a step id or
  an agent id of the workflow.

Both kinds accept ``parameters["output_key"]``: the output is also written to that context key
(after any ``remember`` writes, so it wins over one to the same key). Builtin calls spend no
tokens and cost nothing. Every failure is a :class:`BuiltinAgentError` (kind ``bad_request``).

Rendering is bounded: the template's size, the output's size, the total length of ``range``
calls, string/list repetition and powers are capped, and the render stops after
``MAX_RENDER_SECONDS`` of producing output.
"""

from __future__ import annotations

import json
import operator
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from app.services.messages import Mailbox, MessageError
from app.services.providers.base import ProviderError

BUILTIN_KINDS: tuple[str, ...] = ("echo", "template")

MAX_TEMPLATE_CHARS = 64_000
MAX_OUTPUT_CHARS = 1_000_000
MAX_RANGE_ITEMS = 100_000  # summed over every range() call of one render
MAX_SEQUENCE_ITEMS = 1_000_000  # result length of "x" * n, [..] * n
MAX_EXPONENT = 1_000
MAX_RENDER_SECONDS = 2.0


class BuiltinAgentError(ProviderError):
    """A builtin agent could not run: unknown kind, bad parameters, or a template failure."""

    kind = "bad_request"


@dataclass(frozen=True)
class BuiltinResult:
    output: str
    context_writes: dict[str, Any]


class _RenderLimitExceeded(SecurityError):
    """Raised inside a render when it exceeds one of the module's bounds."""


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, with repetition and powers kept to sane sizes.

    Immutable: a template cannot change ``context`` or ``variables`` in place (``.update``,
    ``.append``, ...); it writes to the context through ``remember`` only.
    """

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            if isinstance(right, int) and abs(right) > MAX_EXPONENT:
                raise _RenderLimitExceeded(f"exponent larger than {MAX_EXPONENT}")
            return operator.pow(left, right)
        for sequence, count in ((left, right), (right, left)):
            if (
                isinstance(sequence, str | list | tuple)
                and isinstance(count, int)
                and len(sequence) * count > MAX_SEQUENCE_ITEMS
            ):
                raise _RenderLimitExceeded(f"repetition longer than {MAX_SEQUENCE_ITEMS}")
        return operator.mul(left, right)


_ENV = _BoundedSandbox(autoescape=False, undefined=StrictUndefined, keep_trailing_newline=True)


def _fail(message: str) -> BuiltinAgentError:
    return BuiltinAgentError(message)


@lru_cache(maxsize=256)
def _compile(source: str) -> Template:
    return _ENV.from_string(source)


def _syntax_problem(error: TemplateSyntaxError) -> str:
    return f"template syntax error on line {error.lineno}: {error.message}"


def _json_ready(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class _Render:
    """The mutable state of one render: context writes and the range budget."""

    def __init__(self) -> None:
        self.writes: dict[str, Any] = {}
        self.range_items = 0

    def remember(self, key: Any, value: Any) -> str:
        if not isinstance(key, str) or not key:
            raise _fail("remember() needs a non-empty string key")
        if not _json_ready(value):
            raise _fail(f"remember({key!r}, ...) got a value that is not JSON data")
        self.writes[key] = value
        return ""

    def range(self, *args: int) -> range:
        items = range(*args)
        self.range_items += len(items)
        if self.range_items > MAX_RANGE_ITEMS:
            raise _RenderLimitExceeded(f"range() over more than {MAX_RANGE_ITEMS} items")
        return items


def _bounded(chunks: Iterator[str]) -> Iterator[str]:
    deadline = time.monotonic() + MAX_RENDER_SECONDS
    produced = 0
    for chunk in chunks:
        produced += len(chunk)
        if produced > MAX_OUTPUT_CHARS:
            raise _RenderLimitExceeded(f"output longer than {MAX_OUTPUT_CHARS} characters")
        if time.monotonic() > deadline:
            raise _RenderLimitExceeded(f"rendering took longer than {MAX_RENDER_SECONDS:g} s")
        yield chunk


def _render_template(
    source: str,
    *,
    input: str,
    context: Mapping[str, Any],
    variables: Mapping[str, Any],
    mailbox: Mailbox,
) -> tuple[str, dict[str, Any]]:
    if len(source) > MAX_TEMPLATE_CHARS:
        raise _fail(f"template longer than {MAX_TEMPLATE_CHARS} characters")
    try:
        template = _compile(source)
    except TemplateSyntaxError as error:
        raise _fail(_syntax_problem(error)) from None
    state = _Render()
    names = {
        "input": input,
        "context": context,
        "variables": variables,
        "remember": state.remember,
        "range": state.range,
        "inbox": mailbox.inbox,
        "send": mailbox.send,
        "broadcast": mailbox.broadcast,
        "ask": mailbox.ask,
        "reply": mailbox.reply,
    }
    try:
        output = "".join(_bounded(template.generate(names)))
    except BuiltinAgentError:
        raise
    except MessageError as error:
        raise _fail(str(error)) from None
    except _RenderLimitExceeded as error:
        raise _fail(f"template stopped: {error}") from None
    except SecurityError as error:
        raise _fail(f"template not allowed: {error}") from None
    except UndefinedError as error:
        raise _fail(f"template error: {error.message}") from None
    except TemplateError as error:
        raise _fail(f"template error: {error}") from None
    except Exception as error:  # a Python error inside an expression: 1/0, int('x'), ...
        raise _fail(f"template error: {type(error).__name__}: {error}") from None
    return output, state.writes


def _echo(
    parameters: Mapping[str, Any],
    *,
    input: str,
    context: Mapping[str, Any],
    variables: Mapping[str, Any],
    mailbox: Mailbox,
) -> tuple[str, dict[str, Any]]:
    return input, {}


def _template(
    parameters: Mapping[str, Any],
    *,
    input: str,
    context: Mapping[str, Any],
    variables: Mapping[str, Any],
    mailbox: Mailbox,
) -> tuple[str, dict[str, Any]]:
    source = parameters.get("template")
    if not isinstance(source, str):
        raise _fail("the template agent needs parameters.template, a string")
    return _render_template(
        source, input=input, context=context, variables=variables, mailbox=mailbox
    )


_RUNNERS: dict[str, Callable[..., tuple[str, dict[str, Any]]]] = {
    "echo": _echo,
    "template": _template,
}


def _unknown_kind(kind: object) -> str:
    return f"unknown builtin kind {kind!r}; expected one of: {', '.join(BUILTIN_KINDS)}"


def run_builtin(
    kind: str,
    parameters: Mapping[str, Any],
    *,
    input: str,
    context: Mapping[str, Any],
    variables: Mapping[str, Any],
    mailbox: Mailbox | None = None,
) -> BuiltinResult:
    """Run the builtin agent ``kind`` on ``input``; raise BuiltinAgentError if it cannot.
    Messages the agent sends are collected in ``mailbox.outgoing``."""
    runner = _RUNNERS.get(kind) if isinstance(kind, str) else None
    if runner is None:
        raise _fail(_unknown_kind(kind))
    output_key = parameters.get("output_key")
    if output_key is not None and (not isinstance(output_key, str) or not output_key):
        raise _fail("parameters.output_key must be a non-empty string")
    output, writes = runner(
        parameters,
        input=input,
        context=context,
        variables=variables,
        mailbox=mailbox if mailbox is not None else Mailbox(),
    )
    if output_key:
        writes[output_key] = output
    return BuiltinResult(output=output, context_writes=writes)


def validate_builtin(kind: str, parameters: Mapping[str, Any]) -> list[str]:
    """Problems with a builtin agent's definition, each led by the field it is about.

    Returns ``[]`` for a valid definition. Messages read ``"<field>: <problem>"`` with the
    field one of ``kind``, ``parameters``, ``parameters.template``, ``parameters.output_key``.
    Extra parameters (temperature, ...) are allowed and ignored.
    """
    if not isinstance(kind, str) or kind not in _RUNNERS:
        return [f"kind: {_unknown_kind(kind)}"]
    if not isinstance(parameters, Mapping):
        return ["parameters: must be an object"]
    problems: list[str] = []
    output_key = parameters.get("output_key")
    if output_key is not None and (not isinstance(output_key, str) or not output_key):
        problems.append("parameters.output_key: must be a non-empty string")
    if kind == "template":
        source = parameters.get("template")
        if source is None:
            problems.append("parameters.template: required for the template kind")
        elif not isinstance(source, str):
            problems.append("parameters.template: must be a string")
        elif len(source) > MAX_TEMPLATE_CHARS:
            problems.append(f"parameters.template: longer than {MAX_TEMPLATE_CHARS} characters")
        else:
            try:
                _compile(source)
            except TemplateSyntaxError as error:
                problems.append(f"parameters.template: {_syntax_problem(error)}")
    return problems
