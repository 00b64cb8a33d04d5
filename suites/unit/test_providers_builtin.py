"""Builtin local agents: echo and sandboxed templates (rendered by the bounded renderer's
workers, shared by this module's tests), their context writes and their errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from template_support import SharedRenderer

from app.core.config import TemplateSettings
from app.services.providers import (
    BUILTIN_KINDS,
    BuiltinAgentError,
    BuiltinResult,
    ProviderError,
    builtin,
    run_builtin,
    validate_builtin,
)

pytestmark = pytest.mark.anyio

_SHARED: list[SharedRenderer] = []


@pytest.fixture(scope="module", autouse=True)
def templates() -> Iterator[SharedRenderer]:
    renderer = SharedRenderer()
    _SHARED.append(renderer)
    yield renderer
    _SHARED.remove(renderer)
    renderer.shutdown()


async def run(kind: str, parameters: Any, **kwargs: Any) -> BuiltinResult:
    return await run_builtin(kind, parameters, templates=_SHARED[0], **kwargs)


async def render(template: str, *, input: str = "the input", **parameters: Any) -> BuiltinResult:
    return await run(
        "template",
        {"template": template, **parameters},
        input=input,
        context={"topic": "tides", "facts": ["moon", "sun"], "score": 7},
        variables={"audience": "children", "limit": 3},
    )


async def refused(template: str) -> str:
    with pytest.raises(BuiltinAgentError) as caught:
        await render(template)
    assert caught.value.kind == "bad_request"
    assert not caught.value.retryable
    return caught.value.message


async def test_kinds() -> None:
    assert BUILTIN_KINDS == ("echo", "template", "wait")  # wait: test_providers_builtin_wait
    assert issubclass(BuiltinAgentError, ProviderError)


async def test_echo_returns_its_input() -> None:
    result = await run_builtin("echo", {}, input="same words back", context={"a": 1}, variables={})
    assert result == BuiltinResult(output="same words back", context_writes={})


async def test_echo_honours_output_key() -> None:
    result = await run("echo", {"output_key": "said"}, input="hi", context={}, variables={})
    assert result.context_writes == {"said": "hi"}


async def test_template_sees_input_context_and_variables() -> None:
    result = await render(
        "Explain {{ context.topic }} to {{ variables.audience }} "
        "({{ context.facts | join(', ') }}; score {{ context.score + variables.limit }}): "
        "{{ input | upper }}"
    )
    assert result.output == "Explain tides to children (moon, sun; score 10): THE INPUT"
    assert result.context_writes == {}


async def test_template_output_is_not_html_escaped() -> None:
    assert (await render("{{ input }}", input="<b>&</b>")).output == "<b>&</b>"


async def test_remember_records_context_writes_and_renders_nothing() -> None:
    result = await render(
        "{{ remember('summary', input | title) }}"
        "{% set _ = remember('count', context.facts | length) %}"
        "{{ remember('facts', context.facts + ['stars']) }}done"
    )
    assert result.output == "done"
    assert result.context_writes == {
        "summary": "The Input",
        "count": 2,
        "facts": ["moon", "sun", "stars"],
    }


async def test_the_last_write_to_a_key_wins_and_output_key_wins_over_remember() -> None:
    result = await render(
        "{{ remember('k', 1) }}{{ remember('k', 2) }}{{ remember('out', 'early') }}final",
        output_key="out",
    )
    assert result.context_writes == {"k": 2, "out": "final"}


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{{ remember('', 1) }}", "non-empty string key"),
        ("{{ remember(3, 1) }}", "non-empty string key"),
        ("{{ remember('k', range) }}", "not JSON data"),
        ("{{ remember('k', 'inf' | float) }}", "not JSON data"),
    ],
)
async def test_remember_refuses_bad_writes(template: str, problem: str) -> None:
    assert problem in await refused(template)


async def test_undefined_names_are_errors_not_blanks() -> None:
    assert await refused("Hello {{ nobody }}") == "template error: 'nobody' is undefined"
    message = await refused("{{ context.missing_key }}")
    assert "missing_key" in message


async def test_sandbox_violations_are_refused() -> None:
    message = await refused("{{ ''.__class__ }}")
    assert message.startswith("template not allowed:")
    assert "__class__" in message
    assert "unsafe" in await refused("{{ ''.__class__.__mro__[1].__subclasses__() }}")


async def test_context_cannot_be_changed_in_place() -> None:
    context: dict[str, Any] = {"items": [1]}
    for template in ("{{ context.update({'x': 1}) }}", "{{ context['items'].append(2) }}"):
        with pytest.raises(BuiltinAgentError, match="not allowed"):
            await run("template", {"template": template}, input="", context=context, variables={})
    assert context == {"items": [1]}


async def test_syntax_errors_name_the_line() -> None:
    assert await refused("line one\n{% if %}") == (
        "template syntax error on line 2: Expected an expression, got 'end of statement block'"
    )


async def test_python_errors_inside_expressions_are_reported() -> None:
    assert await refused("{{ 1 / 0 }}") == "template error: ZeroDivisionError: division by zero"
    assert (await refused("{{ 'a' + 1 }}")).startswith("template error: TypeError: ")
    assert await refused("{{ [1] | map('nope') | list }}") == (
        "template error: No filter named 'nope'."
    )
    assert "no loader" in await refused("{% include 'other.txt' %}")  # no file system access


async def test_unknown_kind_is_refused() -> None:
    with pytest.raises(BuiltinAgentError, match="unknown builtin kind 'shell'"):
        await run("shell", {}, input="", context={}, variables={})


@pytest.mark.parametrize("parameters", [{}, {"template": 42}])
async def test_template_parameter_is_required(parameters: dict[str, Any]) -> None:
    with pytest.raises(BuiltinAgentError, match=r"parameters\.template"):
        await run("template", parameters, input="", context={}, variables={})


async def test_a_template_agent_needs_the_renderer() -> None:
    with pytest.raises(RuntimeError, match="needs the template renderer"):
        await run_builtin("template", {"template": "x"}, input="", context={}, variables={})


async def test_bad_output_key_is_refused() -> None:
    with pytest.raises(BuiltinAgentError, match="output_key"):
        await run("echo", {"output_key": ""}, input="", context={}, variables={})


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{{ 'x' * 10000000 }}", "repetition longer than"),
        ("{{ [1, 2] * 900000 }}", "repetition longer than"),
        ("{{ 10 ** 100000 }}", "a number larger than"),
        (
            "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
            "more than 100000 iterations",
        ),
        ("{% for i in range(90000) %}{{ 'x' * 20 }}{% endfor %}", "output longer than"),
    ],
)
async def test_renders_are_bounded(template: str, problem: str) -> None:
    message = await refused(template)
    assert message.startswith("template stopped: ")
    assert problem in message


async def test_small_arithmetic_still_works() -> None:
    rendered = await render("{{ 2 ** 10 }} {{ 3 * 4 }} {{ 'ab' * 3 }} {{ range(3) | list }}")
    assert rendered.output == "1024 12 ababab [0, 1, 2]"


async def test_slow_renders_stop() -> None:
    renderer = SharedRenderer(TemplateSettings(timeout_seconds=0.3, max_iterations=10**8))
    try:
        with pytest.raises(BuiltinAgentError) as caught:
            await run_builtin(
                "template",
                {
                    "template": "{% for i in range(10**5) %}{% for j in range(10**5) %}"
                    "{% endfor %}{% endfor %}"
                },
                input="",
                context={},
                variables={},
                templates=renderer,
            )
        assert caught.value.message == "template stopped: rendering took longer than 0.3 s"
    finally:
        renderer.shutdown()


async def test_oversized_templates_are_refused() -> None:
    huge = "x" * (builtin.MAX_TEMPLATE_CHARS + 1)
    assert "longer than" in await refused(huge)
    assert validate_builtin("template", {"template": huge}) == [
        f"parameters.template: template longer than {builtin.MAX_TEMPLATE_CHARS} characters"
    ]


# -- validation at agent-create time ----------------------------------------------------------


def test_validation_never_runs_the_template() -> None:
    assert validate_builtin("template", {"template": '{{ "x" | center(1000000000) }}'}) == []


def test_valid_definitions_have_no_problems() -> None:
    assert validate_builtin("echo", {}) == []
    assert validate_builtin("echo", {"temperature": 0.3, "output_key": "said"}) == []
    assert validate_builtin("template", {"template": "{{ input }}", "output_key": "k"}) == []


@pytest.mark.parametrize(
    ("kind", "parameters", "problems"),
    [
        (
            "shell",
            {},
            ["kind: unknown builtin kind 'shell'; expected one of: echo, template, wait"],
        ),
        (None, {}, ["kind: unknown builtin kind None; expected one of: echo, template, wait"]),
        ("echo", ["not", "a", "mapping"], ["parameters: must be an object"]),
        ("template", {}, ["parameters.template: required for the template kind"]),
        ("template", {"template": ["x"]}, ["parameters.template: must be a string"]),
        (
            "template",
            {"template": "{% for x in %}", "output_key": 5},
            [
                "parameters.output_key: must be a non-empty string",
                "parameters.template: template syntax error on line 1: "
                "Expected an expression, got 'end of statement block'",
            ],
        ),
    ],
)
def test_validation_names_each_problem(kind: Any, parameters: Any, problems: list[str]) -> None:
    assert validate_builtin(kind, parameters) == problems
