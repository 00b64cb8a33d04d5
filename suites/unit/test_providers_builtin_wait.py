"""The builtin ``wait`` agent: it waits ``parameters.seconds``, then answers with its input;
a cancel or a deadline interrupts the wait at once; its seconds are checked when it runs and
(against the agent's ``timeout_seconds`` too) when it is defined."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from app.services.providers import (
    BUILTIN_KINDS,
    BuiltinAgentError,
    BuiltinResult,
    builtin,
    run_builtin,
    validate_builtin,
)

pytestmark = pytest.mark.anyio


async def wait(parameters: Any, input: str = "the input") -> BuiltinResult:
    return await run_builtin("wait", parameters, input=input, context={}, variables={})


def test_wait_is_a_builtin_kind() -> None:
    assert "wait" in BUILTIN_KINDS
    assert builtin.MAX_WAIT_SECONDS == 600


async def test_wait_sleeps_its_seconds_then_answers_with_its_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(builtin, "asyncio", SimpleNamespace(sleep=sleep))
    result = await wait({"seconds": 2.5}, input="same words back")
    assert result == BuiltinResult(output="same words back", context_writes={})
    assert slept == [2.5]


async def test_wait_really_waits_and_honours_output_key() -> None:
    result = await wait({"seconds": 0.01, "output_key": "waited"}, input="done")
    assert result == BuiltinResult(output="done", context_writes={"waited": "done"})


async def test_a_cancel_interrupts_the_wait_at_once() -> None:
    task = asyncio.ensure_future(wait({"seconds": 600}))
    await asyncio.sleep(0)  # the task runs up to its sleep
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_a_deadline_interrupts_the_wait() -> None:
    # The engine runs every step under its share of the execution's max_seconds this way.
    deadline = asyncio.timeout(0.01)
    with pytest.raises(TimeoutError):
        async with deadline:
            await wait({"seconds": 600})
    assert deadline.expired()


@pytest.mark.parametrize(
    ("parameters", "problem"),
    [
        ({}, "parameters.seconds: required for the wait kind (how long to wait, in seconds)"),
        ({"seconds": "5"}, "parameters.seconds: must be a number of seconds"),
        ({"seconds": True}, "parameters.seconds: must be a number of seconds"),
        ({"seconds": 0}, "parameters.seconds: must be more than 0"),
        ({"seconds": -1.5}, "parameters.seconds: must be more than 0"),
        ({"seconds": float("nan")}, "parameters.seconds: must be more than 0"),
        ({"seconds": float("inf")}, "parameters.seconds: must be more than 0"),
        ({"seconds": 600.5}, "parameters.seconds: must be at most 600"),
    ],
)
async def test_bad_seconds_are_refused_before_waiting(
    parameters: dict[str, Any], problem: str
) -> None:
    with pytest.raises(BuiltinAgentError) as caught:
        await wait(parameters)
    assert caught.value.message == problem
    assert caught.value.kind == "bad_request"
    assert not caught.value.retryable


# -- validation at agent-create time ----------------------------------------------------------


def test_valid_wait_definitions_have_no_problems() -> None:
    assert validate_builtin("wait", {"seconds": 30}) == []
    assert validate_builtin("wait", {"seconds": 0.5, "output_key": "k"}, timeout_seconds=60) == []
    assert validate_builtin("wait", {"seconds": 600}, timeout_seconds=600) == []
    # Exactly the agent's timeout is allowed.
    assert validate_builtin("wait", {"seconds": 12.5}, timeout_seconds=12.5) == []


@pytest.mark.parametrize(
    ("parameters", "timeout_seconds", "problems"),
    [
        ({}, 60, ["parameters.seconds: required for the wait kind (how long to wait, in seconds)"]),
        (
            {"seconds": None},
            None,
            ["parameters.seconds: required for the wait kind (how long to wait, in seconds)"],
        ),
        ({"seconds": [5]}, 60, ["parameters.seconds: must be a number of seconds"]),
        ({"seconds": 0}, 60, ["parameters.seconds: must be more than 0"]),
        ({"seconds": 601}, None, ["parameters.seconds: must be at most 600"]),
        (
            {"seconds": 90},
            60,
            [
                "parameters.seconds: must be at most the agent's timeout_seconds (60); "
                "wait less or raise timeout_seconds (up to 600)"
            ],
        ),
        (
            {"seconds": 2, "output_key": ""},
            1.5,
            [
                "parameters.output_key: must be a non-empty string",
                "parameters.seconds: must be at most the agent's timeout_seconds (1.5); "
                "wait less or raise timeout_seconds (up to 600)",
            ],
        ),
    ],
)
def test_wait_validation_names_each_problem(
    parameters: dict[str, Any], timeout_seconds: float | None, problems: list[str]
) -> None:
    assert validate_builtin("wait", parameters, timeout_seconds=timeout_seconds) == problems


def test_unknown_kinds_name_wait_among_the_kinds() -> None:
    assert validate_builtin("sleep", {}) == [
        "kind: unknown builtin kind 'sleep'; expected one of: echo, template, wait"
    ]


@pytest.mark.parametrize("kind", ["echo", "template"])
def test_only_wait_agents_take_seconds(kind: str) -> None:
    parameters = {"seconds": 5, "template": "{{ input }}"}
    assert validate_builtin(kind, parameters) == [
        "parameters.seconds: only builtin wait agents take seconds"
    ]
