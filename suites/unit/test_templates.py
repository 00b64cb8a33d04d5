"""The bounded renderer (``app.core.templates``): every limit of the sandbox bites (the attacks
that froze the server or passed the size cap included), legitimate templates still render,
failures become one error type with a clear reason, and the pool of worker processes starts on
first use, kills and replaces a worker past the time limit or after a crash, caps a worker's
memory, carries a kit's effects back as JSON, and closes cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from template_support import SharedRenderer

from app.core.config import TemplateSettings
from app.core.templates import (
    ACK,
    MAX_TEMPLATE_CHARS,
    WORKER_MODULE,
    FairShares,
    KitError,
    Rendered,
    RenderError,
    RenderLimits,
    TemplateRenderer,
    encode_frame,
    render_template,
    template_problem,
    worker_cpu_seconds,
    worker_environment,
)
from app.services.providers.builtin import TemplateKit
from qa.polling import wait_until_async

DATA = {"input": "a" * 10_000, "context": {"items": [{"n": 1, "kids": [{"n": 2}]}]}}
SLOW = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def render(source: str, **data: Any) -> str:
    return render_template(source, {**DATA, **data}).output


def refused(source: str, **data: Any) -> str:
    with pytest.raises(RenderError) as caught:
        render(source, **data)
    return caught.value.reason


# -- the sandbox's limits (in this process) -----------------------------------------------------


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        # iterations: every loop's items, range() items as produced, macro calls; summed
        (
            "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
            "more than 100000 iterations",
        ),
        ("{{ range(10**9) | list | length }}", "more than 100000 iterations"),
        ("{{ range(10**9) | sum }}", "more than 100000 iterations"),
        ("{{ range(10**9) | join }}", "more than 100000 iterations"),
        ("{% for i in range(10**9) %}{% endfor %}", "more than 100000 iterations"),
        ("{% for i in 'x' * 200000 %}{% endfor %}", "more than 100000 iterations"),
        (  # a recursive loop's inner loop(...) calls count too
            "{% for x in range(300) recursive %}{{ loop(range(400)) if loop.depth < 2 }}"
            "{% endfor %}",
            "more than 100000 iterations",
        ),
        (  # macros calling themselves twice: no loop, but 2**30 calls
            "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
            "{{ f(30) }}",
            "more than 100000 iterations",
        ),
        # sizes, checked before building where the size is known
        ("{{ '{:>30000000}'.format(input) }}", "format() wider than"),
        ("{{ '{0:{1}}'.format(input, 30000000) }}", "format() wider than"),
        ("{{ '{:>999999}{:>999999}'.format(1, 2) }}", "format() wider than"),
        ("{{ '{!r}'.format([input] * 1000) }}", "a value's text longer than"),
        ("{{ ([input] * 200) | join }}", "join() longer than"),
        ("{{ ''.join([input] * 200) }}", "join() longer than"),
        ('{{ "x" | center(10**9) }}', "center() longer than"),
        ("{{ 'x'.ljust(10**9) }}", "ljust() longer than"),
        ("{{ 'x'.zfill(10**9) }}", "zfill() longer than"),
        ("{{ ('\t' * 1000).expandtabs(10**6) }}", "expandtabs() longer than"),
        ("{{ input.replace('a', input) }}", "replace longer than"),
        ("{{ input | replace('a', input) }}", "replace() longer than"),
        ("{{ ('a\n' * 5000) | indent(1000) }}", "indent() longer than"),
        ("{{ input | wordwrap(1, wrapsep=input) }}", "wordwrap() longer than"),
        ("{{ ([[input] * 1001] * 1000) | sum(start=[]) }}", "sum() longer than"),
        ("{{ [1] | batch(10**9, 'x') | list }}", "batch() longer than"),
        ("{{ [1] | slice(10**9) | list }}", "slice() longer than"),
        ("{{ '%1000000000d' % 1 }}", "% formatting longer than"),
        ("{{ '%*d' % (10**9, 1) }}", "a * width in % formatting"),
        ("{{ ('%0200000000d'.encode() % 1) | length }}", "% formatting longer than"),
        ("{{ '%*d'.encode() % (10**9, 1) }}", "a * width in % formatting"),
        ("{{ '%s'.encode() % ([input] * 1000,) }}", "a value's text longer than"),
        ("{{ 'x'.encode() * 10000000 }}", "a repetition longer than"),
        ("{{ '%s' | format([input] * 1000) }}", "a value's text longer than"),
        ("{{ 'x' * 10000000 }}", "a repetition longer than"),
        ("{{ [1, 2] * 900000 }}", "a repetition longer than"),
        ("{{ 10 ** 100000 }}", "a number larger than 100000 bits"),
        ("{{ (2 ** 60000) * (2 ** 60000) }}", "a number larger than 100000 bits"),
        ("{{ [input] * 1000 }}", "a value's text longer than"),
        ("{{ ([input] * 1000) | tojson }}", "a value's text longer than"),
        ("{{ input | tojson(indent=100) }}", "a tojson() indent above 8"),
        # and checked after building: growth step by step, output
        (
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "a ~ concatenation longer than",
        ),
        (
            "{% set ns = namespace(s=[1]) %}{% for i in range(40) %}"
            "{% set ns.s = ns.s + ns.s %}{% endfor %}",
            "a + result longer than",
        ),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
            "{% set ns.s %}{{ ns.s }}{{ ns.s }}{% endset %}{% endfor %}",
            "a block's output longer than",
        ),
        (
            "{% set ns = namespace(s='&') %}{% for i in range(40) %}"
            "{% set ns.s = ns.s | tojson %}{% endfor %}",
            "longer than",
        ),
        (
            "{% set ns = namespace(s='é') %}{% for i in range(40) %}"
            "{% set ns.s = ns.s.encode('unicode_escape').decode() %}{% endfor %}",
            "longer than",
        ),
        ("{% for i in range(90000) %}{{ 'x' * 20 }}{% endfor %}", "output longer than 1000000"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion too deep"),
    ],
)
def test_every_limit_bites(source: str, problem: str) -> None:
    reason = refused(source)
    assert reason.startswith("template stopped: "), reason
    assert problem in reason, reason


def test_limits_follow_the_settings() -> None:
    limits = RenderLimits(max_output_chars=1_000, max_iterations=100)
    with pytest.raises(RenderError, match="more than 100 iterations"):
        render_template("{% for i in range(101) %}{% endfor %}", {}, limits=limits)
    with pytest.raises(RenderError, match="output longer than 1000 characters"):
        render_template("{{ 'x' * 600 }}{{ 'y' * 600 }}", {}, limits=limits)
    assert render_template("{% for i in range(100) %}{% endfor %}", {}, limits=limits).output == ""


def test_legitimate_templates_still_render() -> None:
    assert render("{{ range(3) | list }} {{ range(5) | join(',') }}") == "[0, 1, 2] 0,1,2,3,4"
    assert render("{{ 2 ** 10 }} {{ 3 * 4 }} {{ 'ab' * 3 }} {{ [0] * 2 + [1] }}") == (
        "1024 12 ababab [0, 0, 1]"
    )
    assert render("{% for i in range(3) | reverse %}{{ loop.index }}{{ i }};{% endfor %}") == (
        "12;21;30;"
    )
    assert render(
        "{% for x in [1, 2, 3] if x > 1 %}{{ loop.index }}/{{ loop.length }} {% endfor %}"
    )
    assert render("{{ range(10**9) | length }} {{ 5 in range(10**9) }}") == "1000000000 True"
    assert render("{{ '{:>6}|{:,}'.format('ab', 1234567) }} {{ '%05d-%s' | format(7, 'x') }}") == (
        "    ab|1,234,567 00007-x"
    )
    assert render("{{ context | tojson }}") == '{"items": [{"kids": [{"n": 2}], "n": 1}]}'
    assert render("{{ [[1], [2]] | sum(start=[]) }} {{ [1, 2] | sum }}") == "[1, 2] 3"
    assert render("{{ 'ab' | center(6) }}|{{ 'a b c' | wordwrap(1, wrapsep='/') }}") == (
        "  ab  |a/b/c"
    )
    assert render("{{ 'a\nb' | indent(2, first=True) }} {{ 'hello' | replace('l', 'L') }}") == (
        "  a\n  b heLLo"
    )
    assert (
        render(
            "{% for item in context['items'] recursive %}{{ item.n }}"
            "{% if item.kids is defined %}({{ loop(item.kids) }}){% endif %}{% endfor %}"
        )
        == "1(2)"
    )
    assert render("{% macro hi(n) %}hi {{ n }}{% endmacro %}{{ hi(1) }}, {{ hi(2) }}") == (
        "hi 1, hi 2"
    )
    assert (
        render(
            "{% set ns = namespace(n=0) %}{% for i in range(5) %}{% set ns.n = ns.n + i %}"
            "{% endfor %}{{ ns.n }}"
        )
        == "10"
    )
    assert render("{{ input[:2] ~ '!' }}{{ 'x' ~ 1 ~ [2] }}\n") == "aa!x1[2]\n"
    assert render("{{ ('%03d|%s'.encode() % (7, 'é'.encode())).decode() }}") == "007|é"


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (
            "line one\n{% if %}",
            "template syntax error on line 2: Expected an expression, got 'end of statement block'",
        ),
        ("Hello {{ nobody }}", "template error: 'nobody' is undefined"),
        ("{{ 1 / 0 }}", "template error: ZeroDivisionError: division by zero"),
        (
            "{% include 'other.txt' %}",
            "template error: TypeError: no loader for this environment specified",
        ),
        ("{{ lipsum(10**6) }}", "template error: 'lipsum' is undefined"),
        ("{{ 'x' | urlize }}", "template syntax error on line 1: No filter named 'urlize'."),
    ],
)
def test_failures_have_clear_reasons(source: str, reason: str) -> None:
    assert refused(source) == reason


def test_sandbox_violations_are_refused_and_data_cannot_change() -> None:
    assert refused("{{ ''.__class__.__mro__ }}").startswith("template not allowed: ")
    assert refused("{{ context.update({'x': 1}) }}").startswith("template not allowed: ")
    assert refused("{{ context['items'].append(2) }}").startswith("template not allowed: ")
    assert refused("{{ range.__init__ }}").startswith("template not allowed: ")


def test_long_reasons_are_cut() -> None:
    reason = refused("{{ {}[input] }}")  # a KeyError naming a 10,000-character key
    assert reason.startswith("template error: ")
    assert len(reason) <= 1_000


def test_oversized_templates_are_refused() -> None:
    assert refused("x" * (MAX_TEMPLATE_CHARS + 1)) == (
        f"template longer than {MAX_TEMPLATE_CHARS} characters"
    )


# -- validation: parsing only -------------------------------------------------------------------


def test_template_problem_parses_without_running() -> None:
    assert template_problem("{{ input }}") is None
    # Valid, though rendering it would be refused: validation never runs a template.
    assert template_problem('{{ "x" | center(1000000000) }}{{ range(10**9) | list }}') is None
    assert template_problem("{% for x in %}") == (
        "template syntax error on line 1: Expected an expression, got 'end of statement block'"
    )
    assert template_problem("x" * (MAX_TEMPLATE_CHARS + 1)) == (
        f"template longer than {MAX_TEMPLATE_CHARS} characters"
    )
    nested = "{{ " + "(" * 20_000 + "1" + ")" * 20_000 + " }}"
    assert template_problem(nested) == "template nested too deeply"


# -- kits ---------------------------------------------------------------------------------------


def test_a_kit_adds_names_and_its_errors_are_reasons() -> None:
    kit = TemplateKit({"inbox": [], "directory": {"s1": "agent-1"}})
    rendered = render_template(
        "{{ remember('k', input | length) }}{{ send('s1', 'hi') }}done", {"input": "abc"}, kit=kit
    )
    assert rendered.output == "done"
    assert rendered.effects == {
        "writes": {"k": 3},
        "messages": [
            {
                "kind": "direct",
                "recipient": "agent-1",
                "body": "hi",
                "correlation_id": None,
                "timeout_seconds": None,
            }
        ],
    }
    with pytest.raises(RenderError, match=r"^send\(\): unknown recipient 'ghost'"):
        render_template("{{ send('ghost', 1) }}", {}, kit=TemplateKit({}))
    with pytest.raises(RenderError, match="not JSON data"):
        render_template("{{ remember('k', 'nan' | float) }}", {}, kit=TemplateKit({}))
    assert issubclass(KitError, Exception)


def test_a_kit_s_effects_are_bounded() -> None:
    with pytest.raises(RenderError, match="a value's text longer than"):
        render_template(
            "{% for i in range(20) %}{{ remember('k' ~ i, input) }}{% endfor %}",
            {"input": "x" * 500_000},
            kit=TemplateKit({}),
        )


# -- the pool -----------------------------------------------------------------------------------


# A time limit no test of the other limits reaches, even with the workers measured by coverage
# on a busy machine (the 2 s default was: a render of 100,000 iterations took longer there).
UNHURRIED = TemplateSettings(timeout_seconds=60)


@pytest.fixture(scope="module")
def shared() -> Iterator[SharedRenderer]:
    renderer = SharedRenderer(UNHURRIED)
    yield renderer
    renderer.shutdown()


@pytest.fixture
async def pool() -> Any:
    """A pool of its own, with a short time limit and no iteration limit to speak of."""
    renderer = TemplateRenderer(
        TemplateSettings(timeout_seconds=0.5, max_iterations=100_000_000, workers=1)
    )
    yield renderer
    await renderer.close()


@pytest.mark.anyio
async def test_the_attacks_fail_in_the_worker_with_their_reasons(shared: SharedRenderer) -> None:
    attacks = {
        "{% for i in range(10**5) %}{% for j in range(10**5) %}{% endfor %}{% endfor %}": (
            "more than 100000 iterations"
        ),
        "{{ range(10**9) | list }}": "more than 100000 iterations",
        "{{ '{:>30000000}'.format(input) }}": "format() wider than",
        "{{ ([input] * 200) | join }}": "join() longer than",
        '{{ "x" | center(10**9) }}': "center() longer than",
    }
    for source, problem in attacks.items():
        with pytest.raises(RenderError, match=re.escape(problem)):
            await shared.render(source, DATA)
    assert (await shared.render("{{ input | length }}", DATA)).output == "10000"


@pytest.mark.anyio
async def test_kit_effects_round_trip(shared: SharedRenderer) -> None:
    inbox = [{"kind": "request", "from": "agent-2", "correlation_id": "c1", "body": "?"}]
    rendered = await shared.render(
        "{% for m in inbox %}{{ reply(m, 'yes') }}{% endfor %}{{ remember('seen', input) }}"
        "{% set cid = ask('s2', 'more?', 30) %}{{ cid | length }}",
        {"input": "in"},
        kit="builtin",
        kit_data={"inbox": inbox, "directory": {"s2": "agent-2"}},
    )
    assert rendered.output == "36"
    assert rendered.effects["writes"] == {"seen": "in"}
    reply, ask = rendered.effects["messages"]
    assert (reply["kind"], reply["recipient"], reply["correlation_id"]) == (
        "response",
        "agent-2",
        "c1",
    )
    assert (ask["kind"], ask["timeout_seconds"], len(ask["correlation_id"])) == (
        "request",
        30.0,
        36,
    )
    with pytest.raises(ValueError, match="unknown template kit"):
        await shared.render("x", {}, kit="shell")


@pytest.mark.anyio
async def test_workers_start_on_first_use_and_close_cleanly() -> None:
    renderer = TemplateRenderer(UNHURRIED.model_copy(update={"workers": 2}))
    assert renderer.pids == []
    assert (await renderer.render("{{ a }}-{{ b }}", {"a": 1, "b": [2]})).output == "1-[2]"
    assert len(renderer.pids) == 1
    slow = "{% for i in range(99999) %}{{ i }}{% endfor %}"
    results = await asyncio.gather(*(renderer.render(slow, {}) for _ in range(4)))
    assert {r.output for r in results} == {"".join(map(str, range(99999)))}
    assert len(renderer.pids) == 2, "at most `workers` processes"
    processes = [worker.process for worker in renderer._live]
    await renderer.close()
    assert renderer.pids == []
    assert [p.returncode for p in processes] == [0, 0], "they exit normally: coverage is saved"
    with pytest.raises(RenderError, match="shutting down"):
        await renderer.render("x", {})


@pytest.mark.anyio
async def test_a_render_past_the_time_limit_is_killed_and_its_worker_replaced(pool: Any) -> None:
    assert (await pool.render("{{ 1 + 1 }}", {})).output == "2"
    [first] = pool.pids
    with pytest.raises(RenderError) as caught:
        await pool.render(SLOW, {})  # a pure-Python loop, within every limit but time
    assert caught.value.reason == "template stopped: rendering took longer than 0.5 s"
    assert pool.pids == []
    assert (await pool.render("{{ 2 + 2 }}", {})).output == "4"
    assert pool.pids != [first]
    assert pool.started == 2


@pytest.mark.anyio
async def test_a_cancelled_render_kills_its_worker(pool: Any) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pool.render(SLOW, {}), timeout=0.2)
    assert pool.pids == []
    assert (await pool.render("ok", {})).output == "ok"


@pytest.mark.anyio
async def test_a_worker_killed_from_outside_is_replaced(pool: Any) -> None:
    assert (await pool.render("one", {})).output == "one"
    [victim] = pool.pids
    os.kill(victim, signal.SIGKILL)
    assert (await pool.render("two", {})).output == "two"
    assert pool.pids != [victim]
    # Killed in the middle of a render: that render fails, the next one works.
    [worker] = pool.pids
    render = asyncio.create_task(pool.render(SLOW, {}))
    await asyncio.sleep(0.2)  # the idle worker has the request at once; it runs for 0.5 s
    os.kill(worker, signal.SIGKILL)
    with pytest.raises(RenderError, match="the renderer crashed"):
        await render
    assert (await pool.render("three", {})).output == "three"


@pytest.mark.anyio
async def test_a_memory_bomb_is_a_memory_error_in_the_worker() -> None:
    renderer = TemplateRenderer(TemplateSettings(memory_mb=64))
    try:
        bomb = (
            "{% set ns = namespace(keep=[]) %}{% for i in range(200) %}"
            "{% set ns.keep = ns.keep + [('x' * 999000) ~ i] %}{% endfor %}{{ ns.keep | length }}"
        )
        with pytest.raises(RenderError) as caught:
            await renderer.render(bomb, {})
        assert caught.value.reason == "template stopped: out of memory"
        assert (await renderer.render("{{ 'still here' }}", {})).output == "still here"
    finally:
        await renderer.close()


@pytest.mark.anyio
async def test_a_worker_that_cannot_start_is_a_render_error() -> None:
    renderer = TemplateRenderer(TemplateSettings(), {"broken": "app.no_such_module:Kit"})
    try:
        with pytest.raises(RenderError, match="the renderer could not start"):
            await renderer.render("x", {})
    finally:
        await renderer.close()


# -- sharing the workers between accounts -------------------------------------------------------


@pytest.mark.anyio
async def test_an_account_holds_at_most_its_share_and_waits_behind_the_others() -> None:
    shares = FairShares(slots=2, per_owner=1)
    order: list[str] = []

    async def take(name: str, owner: str | None) -> None:
        await shares.acquire(owner)
        order.append(name)

    def arrive(*names: str) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(take(name, name[0])) for name in names]

    await take("a1", "a")
    tasks = arrive("a2", "a3", "b1")
    await asyncio.sleep(0)
    # b finds the second slot free although a's renders came first: a is at its share.
    assert (order, shares.held, shares.waiting) == (["a1", "b1"], {"a": 1, "b": 1}, ["a", "a"])
    tasks += arrive("c1")
    await asyncio.sleep(0)
    assert shares.waiting == ["a", "a", "c"]
    shares.release("a")  # the longest-waiting render whose account is under its share: a2
    await asyncio.sleep(0)
    assert (order[-1], shares.waiting) == ("a2", ["a", "c"])
    shares.release("b")  # a3 came before c1, but a is at its share again: c1
    await asyncio.sleep(0)
    assert (order[-1], shares.held, shares.waiting) == ("c1", {"a": 1, "c": 1}, ["a"])
    shares.release("a")  # a2 is done: a is under its share, a3 goes next
    await asyncio.gather(*tasks)
    assert order == ["a1", "b1", "a2", "c1", "a3"]
    assert (shares.free, shares.held, shares.waiting) == (0, {"a": 1, "c": 1}, [])


@pytest.mark.anyio
async def test_renders_without_an_owner_have_no_share_and_cancelled_waits_take_no_slot() -> None:
    shares = FairShares(slots=2, per_owner=1)
    await shares.acquire(None)
    await shares.acquire(None)  # no owner: no share, every slot
    assert (shares.free, shares.held) == (0, {})
    gone = asyncio.create_task(shares.acquire("a"))
    kept = asyncio.create_task(shares.acquire("b"))
    await asyncio.sleep(0)
    gone.cancel()  # cancelled while waiting: it leaves the queue
    await asyncio.gather(gone, return_exceptions=True)
    assert shares.waiting == ["b"]
    shares.release(None)
    await kept
    late = asyncio.create_task(shares.acquire("c"))
    await asyncio.sleep(0)
    shares.release(None)  # c is given the slot ...
    late.cancel()  # ... and cancelled before it could use it: the slot comes back
    await asyncio.gather(late, return_exceptions=True)
    assert (shares.free, shares.held, shares.waiting) == (1, {"b": 1}, [])


@pytest.mark.anyio
async def test_an_account_s_endless_renders_do_not_hold_up_another_account() -> None:
    renderer = TemplateRenderer(
        TemplateSettings(workers=2, timeout_seconds=20, max_iterations=100_000_000)
    )
    hostile = [asyncio.create_task(renderer.render(SLOW, {}, owner="hostile")) for _ in range(4)]
    try:
        await asyncio.sleep(0)
        assert (renderer.shares.held, renderer.shares.waiting) == ({"hostile": 1}, ["hostile"] * 3)
        # The neighbour's render takes the other worker at once: it waits for none of them.
        assert (await renderer.render("{{ 1 + 1 }}", {}, owner="neighbour")).output == "2"
        assert not any(task.done() for task in hostile)
        assert (renderer.shares.held, renderer.shares.waiting) == ({"hostile": 1}, ["hostile"] * 3)
    finally:
        for task in hostile:
            task.cancel()
        await asyncio.gather(*hostile, return_exceptions=True)
        await renderer.close()
    assert all(task.cancelled() for task in hostile)


# -- the worker's process -----------------------------------------------------------------------

CANARY = "canary-secret-0123456789"


def test_a_worker_s_environment_holds_only_what_python_and_coverage_need() -> None:
    environ = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": "/srv/lib",
        "COVERAGE_PROCESS_CONFIG": ":data:{}",
        "COVERAGE_FILE": "/reports/.coverage.unit",
        "RENUM_SECRET_KEY": CANARY,
        "RENUM_DATABASE__URL": f"postgresql://renum:{CANARY}@db/renum",
        "RENUM_PROVIDERS__OPENAI_API_KEY": CANARY,
        "HOME": "/root",
        "AWS_SECRET_ACCESS_KEY": CANARY,
    }
    assert worker_environment(environ) == {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": "/srv/lib",
        "COVERAGE_PROCESS_CONFIG": ":data:{}",
        "COVERAGE_FILE": "/reports/.coverage.unit",
    }


@pytest.mark.anyio
async def test_a_worker_sees_no_secret_and_renders_under_a_cpu_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RENUM_SECRET_KEY", CANARY)
    monkeypatch.setenv("RENUM_DATABASE__URL", f"postgresql://renum:{CANARY}@db/renum")
    monkeypatch.setenv("RENUM_PROVIDERS__OPENAI_API_KEY", CANARY)
    here = str(Path(__file__).parent)  # where the test-only kit is
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.getenv("PYTHONPATH")])))
    renderer = TemplateRenderer(
        TemplateSettings(timeout_seconds=2), {"process": "template_support:ProcessKit"}
    )
    try:
        effects = (await renderer.render("ok", {}, kit="process")).effects
    finally:
        await renderer.close()
    environ = effects["environ"]
    assert [name for name in environ if name.startswith("RENUM_")] == []
    assert not any(CANARY in value for value in environ.values())
    assert environ["PYTHONPATH"].split(os.pathsep)[0] == here
    assert effects["cpu_spent"] < effects["cpu_limit"]
    assert effects["cpu_limit"] <= effects["cpu_spent"] + worker_cpu_seconds(2) + 1


def _worker(cpu_seconds: int) -> subprocess.Popen[bytes]:
    """A render worker started as the pool starts one, with no pool to watch over it."""
    config = {
        "max_output_chars": 1_000_000,
        "max_iterations": 100_000_000,
        "memory_mb": 256,
        "cpu_seconds": cpu_seconds,
        "kits": {},
    }
    worker = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "-m", WORKER_MODULE, json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=worker_environment(os.environ),
    )
    assert worker.stdin is not None
    assert worker.stdout is not None
    ready = worker.stdout.read(int(worker.stdout.readline()))
    assert json.loads(ready) == {"ready": True}
    return worker


def test_a_worker_exits_when_its_stdin_closes_even_mid_request() -> None:
    worker = _worker(cpu_seconds=10)
    assert worker.stdin is not None
    worker.stdin.write(b'100\n{"source": ')  # the server died while sending a request
    worker.stdin.close()
    assert worker.wait(timeout=60) == 0


def test_a_worker_left_rendering_by_a_dead_server_stops_at_its_cpu_limit() -> None:
    worker = _worker(cpu_seconds=1)
    assert worker.stdin is not None
    assert worker.stdout is not None
    worker.stdin.write(encode_frame({"source": SLOW, "data": {}, "kit": None, "kit_data": None}))
    worker.stdin.flush()
    assert worker.stdout.readline() == ACK
    worker.stdin.close()  # nobody will kill it past the time limit: the kernel ends it
    assert worker.wait(timeout=120) == -signal.SIGXCPU
    worker.stdout.close()


def test_rendered_is_plain_data() -> None:
    assert Rendered("out") == Rendered("out", None)


@pytest.mark.anyio
async def test_warm_starts_idle_workers_up_to_the_pool_size() -> None:
    renderer = TemplateRenderer(TemplateSettings(workers=2))
    try:
        await renderer.warm()
        assert (renderer.started, len(renderer.pids)) == (2, 2)
        await renderer.warm()  # already full: nothing more starts
        assert renderer.started == 2
        assert (await renderer.render("{{ 1 + 1 }}", {})).output == "2"
        assert renderer.started == 2  # the render took a warm worker
    finally:
        await renderer.close()
    await renderer.warm()  # closed: starts nothing
    assert renderer.pids == []


@pytest.mark.anyio
async def test_new_limits_apply_to_the_next_render_and_busy_workers_retire_after_theirs() -> None:
    # A generous time limit: the long render must end by itself, however loaded the machine.
    limits = TemplateSettings(workers=2, max_iterations=100_000_000, timeout_seconds=60)
    renderer = TemplateRenderer(limits)
    loop = "{% for i in range(50000) %}{% endfor %}done"
    long = "{% for i in range(500000) %}{% endfor %}long"  # within every limit, not instant
    try:
        assert (await renderer.render(loop, {})).output == "done"
        [first] = renderer.pids
        busy = asyncio.create_task(renderer.render(long, {}))  # takes the idle worker
        await wait_until_async(lambda: renderer._idle == [], what="the render taking the worker")
        renderer.reconfigure(TemplateSettings(workers=8, max_iterations=1_000))
        assert renderer.settings.workers == 2  # the pool's size waits for a restart
        with pytest.raises(RenderError, match="more than 1000 iterations"):
            await renderer.render(loop, {})  # a worker started with the new limit
        assert (await busy).output == "long"  # finished under the limits it began with
        assert first not in renderer.pids  # ... and its worker retired after it
        kept = renderer.pids
        renderer.reconfigure(renderer.settings)  # the same limits: nothing is replaced
        assert set(kept) <= set(renderer.pids)  # (a warm-up may still be adding workers)
    finally:
        await renderer.close()


@pytest.mark.anyio
async def test_a_worker_warming_up_during_a_reconfigure_never_serves_the_old_limits() -> None:
    renderer = TemplateRenderer(TemplateSettings(workers=1))
    loop = "{% for i in range(500) %}{% endfor %}looped"
    try:
        warming = asyncio.create_task(renderer.warm())
        await wait_until_async(lambda: renderer.started == 1, what="the warm-up starting a worker")
        renderer.reconfigure(TemplateSettings(workers=1, max_iterations=100))
        await warming
        with pytest.raises(RenderError, match="more than 100 iterations"):
            await renderer.render(loop, {})
    finally:
        await renderer.close()
