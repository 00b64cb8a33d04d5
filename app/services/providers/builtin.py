"""The ``builtin`` provider: deterministic local tool agents that need no network.

They let the embedded default run teams offline and make fast, exact agents for workflows:

- ``echo``: the output is the input.
- ``template``: ``parameters["template"]`` rendered by the bounded renderer
  (:mod:`app.core.templates`: a sandbox with size, iteration and time limits, in a worker
  process) over ``input`` (the step's input text), ``context`` (the execution's shared
  context), ``variables`` (the execution's variables) and ``remember(key, value)``, which
  records a write to the shared context and renders as nothing. Undefined names are errors,
  not blanks. Messages to other agents (see :mod:`app.services.messages`): ``inbox`` (this
  agent's messages), ``send(to, body)``, ``broadcast(body)``, ``ask(to, body,
  timeout_seconds)`` (returns the request's correlation id) and ``reply(request, body)``;
  ``to`` is a step id or an agent id of the workflow.
- ``wait``: waits ``parameters["seconds"]`` (a number, more than 0 and at most
  :data:`MAX_WAIT_SECONDS`; when the agent is created or changed, also at most its
  ``timeout_seconds``), then outputs its input. It stands for a slow agent with no model
  behind it (to try a cancel or an execution's time budget offline): the wait is an
  ``asyncio.sleep``, so an immediate cancel or the end of the execution's ``max_seconds``
  interrupts it at once, as it does a model call.

``remember`` and the messages run in the render worker as the ``builtin`` kit
(:class:`TemplateKit`, registered by :data:`TEMPLATE_KITS`): the agent's inbox and the
workflow's directory go there as JSON, the writes and the messages sent come back as JSON.

Every kind accepts ``parameters["output_key"]``: the output is also written to that context key
(after any ``remember`` writes, so it wins over one to the same key). Builtin calls spend no
tokens and cost nothing. Every failure is a :class:`BuiltinAgentError` (kind ``bad_request``).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from app.core.templates import (
    MAX_TEMPLATE_CHARS,
    KitError,
    RenderError,
    TemplateRenderer,
    template_problem,
)
from app.models import MessageKind
from app.services.messages import Mailbox, MessageError, OutgoingMessage
from app.services.providers.base import ProviderError

BUILTIN_KINDS: tuple[str, ...] = ("echo", "template", "wait")
# The longest a ``wait`` agent waits: the longest an agent's ``timeout_seconds`` may be.
MAX_WAIT_SECONDS = 600.0
TEMPLATE_KITS = {"builtin": "app.services.providers.builtin:TemplateKit"}

__all__ = [
    "BUILTIN_KINDS",
    "MAX_TEMPLATE_CHARS",
    "MAX_WAIT_SECONDS",
    "TEMPLATE_KITS",
    "BuiltinAgentError",
    "BuiltinResult",
    "TemplateKit",
    "run_builtin",
    "validate_builtin",
]


class BuiltinAgentError(ProviderError):
    """A builtin agent could not run: unknown kind, bad parameters, or a template failure."""

    kind = "bad_request"


@dataclass(frozen=True)
class BuiltinResult:
    output: str
    context_writes: dict[str, Any]


def _fail(message: str) -> BuiltinAgentError:
    return BuiltinAgentError(message)


class TemplateKit:
    """What a template agent's render may do besides its output, run in the render worker:
    ``remember`` (context writes) and the messaging functions of a :class:`Mailbox` made from
    ``data`` (``{"inbox": [...], "directory": {...}}``). :meth:`effects` returns the writes and
    the messages sent, as JSON data."""

    def __init__(self, data: Any) -> None:
        data = data or {}
        self.writes: dict[str, Any] = {}
        self.mailbox = Mailbox(list(data.get("inbox", [])), dict(data.get("directory", {})))
        box = self.mailbox
        self.names = {
            "remember": self.remember,
            "inbox": box.inbox,
            "send": self._kit(box.send),
            "broadcast": self._kit(box.broadcast),
            "ask": self._kit(box.ask),
            "reply": self._kit(box.reply),
        }

    @staticmethod
    def _kit(function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except MessageError as error:
                raise KitError(str(error)) from None

        return call

    def remember(self, key: Any, value: Any) -> str:
        if not isinstance(key, str) or not key:
            raise KitError("remember() needs a non-empty string key")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise KitError(f"remember({key!r}, ...) got a value that is not JSON data") from None
        self.writes[key] = value
        return ""

    def effects(self) -> dict[str, Any]:
        messages = [
            {
                "kind": m.kind.value,
                "recipient": m.recipient,
                "body": m.body,
                "correlation_id": m.correlation_id,
                "timeout_seconds": m.timeout_seconds,
            }
            for m in self.mailbox.outgoing
        ]
        return {"writes": self.writes, "messages": messages}


async def _render_template(
    source: str,
    *,
    input: str,
    context: Mapping[str, Any],
    variables: Mapping[str, Any],
    mailbox: Mailbox,
    templates: TemplateRenderer,
    owner: Hashable | None,
) -> tuple[str, dict[str, Any]]:
    try:
        rendered = await templates.render(
            source,
            {"input": input, "context": context, "variables": variables},
            kit="builtin",
            kit_data={"inbox": mailbox.inbox, "directory": dict(mailbox.directory)},
            owner=owner,
        )
    except RenderError as error:
        raise _fail(error.reason) from None
    effects = rendered.effects
    for message in effects["messages"]:
        mailbox.outgoing.append(
            OutgoingMessage(
                MessageKind(message["kind"]),
                message["recipient"],
                message["body"],
                message["correlation_id"],
                message["timeout_seconds"],
            )
        )
    return rendered.output, dict(effects["writes"])


def _unknown_kind(kind: object) -> str:
    return f"unknown builtin kind {kind!r}; expected one of: {', '.join(BUILTIN_KINDS)}"


def _seconds_problem(seconds: object, timeout_seconds: float | None = None) -> str | None:
    """What is wrong with a ``wait`` agent's ``seconds`` (None if nothing is): a number, more
    than 0, at most :data:`MAX_WAIT_SECONDS` and, when given, the agent's ``timeout_seconds``."""
    if seconds is None:
        return "required for the wait kind (how long to wait, in seconds)"
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return "must be a number of seconds"
    if not math.isfinite(seconds) or seconds <= 0:
        return "must be more than 0"
    if seconds > MAX_WAIT_SECONDS:
        return f"must be at most {MAX_WAIT_SECONDS:g}"
    if timeout_seconds is not None and seconds > timeout_seconds:
        return (
            f"must be at most the agent's timeout_seconds ({timeout_seconds:g}); "
            f"wait less or raise timeout_seconds (up to {MAX_WAIT_SECONDS:g})"
        )
    return None


async def run_builtin(
    kind: str,
    parameters: Mapping[str, Any],
    *,
    input: str,
    context: Mapping[str, Any],
    variables: Mapping[str, Any],
    mailbox: Mailbox | None = None,
    templates: TemplateRenderer | None = None,
    owner: Hashable | None = None,
) -> BuiltinResult:
    """Run the builtin agent ``kind`` on ``input``; raise BuiltinAgentError if it cannot.
    A ``template`` agent renders through ``templates`` (a pool with the :data:`TEMPLATE_KITS`)
    as ``owner`` (the agent's account: it holds at most its share of the workers); the
    messages it sends are collected in ``mailbox.outgoing``. A ``wait`` agent sleeps first:
    cancelling the call (an immediate cancel, the execution's time budget) ends it there."""
    if not isinstance(kind, str) or kind not in BUILTIN_KINDS:
        raise _fail(_unknown_kind(kind))
    output_key = parameters.get("output_key")
    if output_key is not None and (not isinstance(output_key, str) or not output_key):
        raise _fail("parameters.output_key must be a non-empty string")
    output: Any = input
    writes: dict[str, Any] = {}
    if kind == "template":
        source = parameters.get("template")
        if not isinstance(source, str):
            raise _fail("the template agent needs parameters.template, a string")
        if templates is None:
            raise RuntimeError("a template agent needs the template renderer")
        output, writes = await _render_template(
            source,
            input=input,
            context=context,
            variables=variables,
            mailbox=mailbox if mailbox is not None else Mailbox(),
            templates=templates,
            owner=owner,
        )
    elif kind == "wait":
        seconds: Any = parameters.get("seconds")
        if (problem := _seconds_problem(seconds)) is not None:
            raise _fail(f"parameters.seconds: {problem}")
        await asyncio.sleep(float(seconds))
    if output_key:
        writes[output_key] = output
    return BuiltinResult(output=output, context_writes=writes)


def validate_builtin(
    kind: str, parameters: Mapping[str, Any], *, timeout_seconds: float | None = None
) -> list[str]:
    """Problems with a builtin agent's definition, each led by the field it is about.

    Returns ``[]`` for a valid definition. Messages read ``"<field>: <problem>"`` with the
    field one of ``kind``, ``parameters``, ``parameters.template``, ``parameters.output_key``,
    ``parameters.seconds``. A ``wait`` agent's seconds are checked against the agent's
    ``timeout_seconds`` when it is given. Extra parameters (temperature, ...) are allowed and
    ignored. The template is parsed, never run.
    """
    if not isinstance(kind, str) or kind not in BUILTIN_KINDS:
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
        elif (problem := template_problem(source)) is not None:
            problems.append(f"parameters.template: {problem}")
    if kind == "wait":
        problem = _seconds_problem(parameters.get("seconds"), timeout_seconds)
        if problem is not None:
            problems.append(f"parameters.seconds: {problem}")
    elif parameters.get("seconds") is not None:
        problems.append("parameters.seconds: only builtin wait agents take seconds")
    return problems
