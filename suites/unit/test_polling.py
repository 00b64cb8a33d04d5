"""The harness's one polling helper (``qa.polling``): what it returns, when it gives up, and
what it says then. Clocks are counted in polls, not measured."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from qa import polling
from qa.polling import wait_until, wait_until_async


class Countdown:
    """A predicate that is falsy for ``polls`` calls, then returns ``value``."""

    def __init__(self, polls: int, value: object = True) -> None:
        self.left = polls
        self.value = value
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        if self.left > 0:
            self.left -= 1
            return None
        return self.value


def test_returns_at_once_when_the_condition_holds() -> None:
    predicate = Countdown(0, "ready")
    assert wait_until(predicate) == "ready"
    assert predicate.calls == 1


def test_polls_until_the_condition_holds_and_returns_its_value() -> None:
    predicate = Countdown(3, {"status": "completed"})
    assert wait_until(predicate, interval=0) == {"status": "completed"}
    assert predicate.calls == 4


def test_a_falsy_value_is_not_an_answer() -> None:
    values = iter([0, "", [], {}, False, None, ["x"]])
    assert wait_until(lambda: next(values), interval=0) == ["x"]


def test_times_out_with_what_was_awaited_and_the_last_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = itertools.count(0.0, 1.0)  # each reading of the clock is a second later
    monkeypatch.setattr(polling, "monotonic", lambda: next(clock))
    monkeypatch.setattr(polling, "sleep", lambda _: None)
    with pytest.raises(AssertionError) as caught:
        wait_until(list, timeout=2.5, what="the end")
    assert str(caught.value) == "timed out after 2.5s waiting for the end; last seen: []"


def test_a_boolean_predicate_times_out_without_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = itertools.count(0.0, 1.0)
    monkeypatch.setattr(polling, "monotonic", lambda: next(clock))
    monkeypatch.setattr(polling, "sleep", lambda _: None)
    predicate = Countdown(100)
    with pytest.raises(AssertionError, match=r"^timed out after 3s waiting for the call$"):
        wait_until(predicate, timeout=3, what="the call")
    # Polled until the deadline had passed: the deadline is checked after each poll.
    assert predicate.calls == 4


def test_without_a_description_the_predicate_is_named() -> None:
    def never() -> bool:
        return False

    with pytest.raises(AssertionError, match=r"waiting for <function .*never"):
        wait_until(never, timeout=0, interval=0)


def test_the_async_poller_lets_the_loop_move_the_state_on() -> None:
    async def scenario() -> object:
        state: dict[str, object] = {}

        async def worker() -> None:
            for n in range(3):
                await asyncio.sleep(0)
                state["steps"] = n + 1

        task = asyncio.create_task(worker())
        value = await wait_until_async(lambda: state.get("steps") == 3 and state, interval=0)
        await task
        return value

    assert asyncio.run(scenario()) == {"steps": 3}


def test_the_async_poller_times_out_like_the_other(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = itertools.count(0.0, 1.0)
    monkeypatch.setattr(polling, "monotonic", lambda: next(clock))
    with pytest.raises(AssertionError, match=r"^timed out after 1s waiting for nothing; last"):
        asyncio.run(wait_until_async(lambda: 0, timeout=1, what="nothing", interval=0))
