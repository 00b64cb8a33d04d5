"""Unit tests of conditional guards (``app.services.conditions``) and of the four strategies'
decision function (``app.services.engine.strategies.decide``): edge cases of paths, operators
and types; who runs next, who waits, who is skipped or cancelled, and how an execution ends;
and of ``render_input``, which renders a planned step's input template when it runs.

The JSON-semantics and bounded-pattern tests pin fixes of defects these tests first found
(booleans compared as numbers, a boolean accepted by ordering operators, an absent value
reported as invalid, unbounded backtracking in ``matches``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest
from template_support import OwnerRecorder, SharedRenderer

from app.core.errors import ValidationFailed
from app.models import ExecutionStatus, StepStatus
from app.schemas.workflows import Guard, WorkflowDefinition
from app.services.conditions import _MISSING, ConditionTimeout, check, evaluate, resolve
from app.services.engine.strategies import (
    Decision,
    PlannedStep,
    StepInputError,
    StepState,
    decide,
    render_input,
)
from app.services.workflows import validate_workflow

S = StepStatus
AGENTS = [uuid.UUID(int=i + 1) for i in range(6)]


def guard(**fields: Any) -> Guard:
    return Guard.model_validate(fields)


def cond(path: str, op: str, value: Any = None) -> Guard:
    return guard(path=path, op=op, value=value)


# -- resolve -------------------------------------------------------------------------------

CONTEXT: dict[str, Any] = {
    "review": {"score": 4, "tags": ["ok", "long"], "notes": None},
    "items": [{"name": "a"}, {"name": "b", "sizes": [1, 2, 3]}],
    "flag": False,
    "empty": "",
    "zero": 0,
    "3": "a key that looks like an index",
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("review.score", 4),
        ("review.tags.1", "long"),
        ("review.notes", None),
        ("items.0.name", "a"),
        ("items.1.sizes.2", 3),
        ("flag", False),
        ("zero", 0),
        ("3", "a key that looks like an index"),
        ("review", CONTEXT["review"]),
    ],
)
def test_resolve_finds_keys_and_list_indexes(path: str, expected: Any) -> None:
    assert resolve(CONTEXT, path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "missing",
        "review.missing",
        "review.score.deeper",  # through a number
        "items.2",  # index past the end
        "items.-1",  # no negative indexes
        "items.first",  # a list has no keys
        "review.tags.1.0",  # a string is not indexed
        "review.notes.x",  # through null
        "empty.0",
        "",
    ],
)
def test_resolve_reports_missing_paths(path: str) -> None:
    assert resolve(CONTEXT, path) is _MISSING


# -- check: one condition ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("exists", None, False),
        ("not_exists", None, True),
        ("equals", None, False),  # a missing value is not null
        ("not_equals", None, True),
        ("equals", "x", False),
        ("not_equals", "x", True),
        ("contains", "x", False),
        ("not_contains", "x", True),
        ("gt", 0, False),
        ("gte", 0, False),
        ("lt", 0, False),
        ("lte", 0, False),
        ("matches", ".*", False),
    ],
)
def test_a_missing_value_equals_nothing_contains_nothing_orders_with_nothing(
    op: str, value: Any, expected: bool
) -> None:
    assert check(cond("nowhere.to.be.found", op, value), CONTEXT) is expected


def test_exists_is_about_presence_not_truth() -> None:
    for path in ("review.notes", "flag", "empty", "zero"):
        assert check(cond(path, "exists"), CONTEXT)
        assert not check(cond(path, "not_exists"), CONTEXT)


@pytest.mark.parametrize(
    ("context", "op", "value", "expected"),
    [
        ({"a": 3}, "equals", 3, True),
        ({"a": 3}, "equals", 3.0, True),
        ({"a": 3}, "equals", "3", False),
        ({"a": None}, "equals", None, True),
        ({"a": [1, {"b": 2}]}, "equals", [1, {"b": 2}], True),
        ({"a": {"b": 1}}, "not_equals", {"b": 2}, True),
        ({"a": "x"}, "not_equals", "x", False),
    ],
)
def test_equality(context: dict[str, Any], op: str, value: Any, expected: bool) -> None:
    assert check(cond("a", op, value), context) is expected


@pytest.mark.parametrize(
    ("actual", "value", "expected"),
    [
        ("hello world", "lo w", True),
        ("hello", "", True),
        ("hello", "xyz", False),
        ("123", 2, False),  # a string contains strings only
        (["a", 1, None], 1, True),
        (["a", 1, None], None, True),
        (["a", 1, None], "b", False),
        ([[1, 2]], [1, 2], True),
        ({"key": 1}, "key", True),  # a mapping contains its keys
        ({"key": 1}, 1, False),
        ({"1": 1}, 1, False),
        (42, 4, False),  # numbers, booleans and null contain nothing
        (None, None, False),
        (True, True, False),
    ],
)
def test_contains(actual: Any, value: Any, expected: bool) -> None:
    context = {"a": actual}
    assert check(cond("a", "contains", value), context) is expected
    assert check(cond("a", "not_contains", value), context) is (not expected)


@pytest.mark.parametrize(
    ("actual", "op", "value", "expected"),
    [
        (5, "gt", 4, True),
        (5, "gt", 5, False),
        (5, "gte", 5, True),
        (5, "lt", 5.5, True),
        (5.5, "lte", 5.5, True),
        (-1, "lt", 0, True),
        ("b", "gt", "a", True),  # strings order lexicographically
        ("10", "lt", "9", True),
        ("abc", "lte", "abd", True),
    ],
)
def test_ordering(actual: Any, op: str, value: Any, expected: bool) -> None:
    assert check(cond("a", op, value), {"a": actual}) is expected


@pytest.mark.parametrize("op", ["gt", "gte", "lt", "lte"])
@pytest.mark.parametrize(
    ("actual", "value"),
    [("5", 4), (5, "4"), (None, 0), (0, None), ([1], 0), ({"x": 1}, 0), ({"x": 1}, {"x": 1})],
)
def test_ordering_across_types_is_false(op: str, actual: Any, value: Any) -> None:
    assert check(cond("a", op, value), {"a": actual}) is False


@pytest.mark.parametrize(
    ("actual", "pattern", "expected"),
    [
        ("order-1234", r"\d{4}$", True),
        ("order-1234", r"^\d", False),  # search, not fullmatch
        ("Yes", r"(?i)^yes$", True),
        ("", r"^$", True),
    ],
)
def test_matches_on_strings(actual: str, pattern: str, expected: bool) -> None:
    assert check(cond("a", "matches", pattern), {"a": actual}) is expected


@pytest.mark.parametrize("actual", [1234, 12.5, True, None, ["1234"], {"k": "1234"}])
def test_matches_on_non_strings_is_false(actual: Any) -> None:
    assert check(cond("a", "matches", r".*"), {"a": actual}) is False


# -- evaluate: groups ------------------------------------------------------------------------


def test_no_guard_always_runs() -> None:
    assert evaluate(None, {}) is True


def test_all_and_any_groups_nest() -> None:
    yes, no = cond("review.score", "gte", 3), cond("review.score", "lt", 3)
    assert evaluate(guard(all=[yes, yes]), CONTEXT)
    assert not evaluate(guard(all=[yes, no]), CONTEXT)
    assert evaluate(guard(any=[no, yes]), CONTEXT)
    assert not evaluate(guard(any=[no, no]), CONTEXT)
    nested = guard(all=[yes, guard(any=[no, guard(all=[yes, cond("flag", "equals", False)])])])
    assert evaluate(nested, CONTEXT)
    assert not evaluate(guard(any=[no, guard(all=[yes, no])]), CONTEXT)


def test_groups_short_circuit() -> None:
    # Short-circuiting means a later member is never looked at: this one would raise.
    never = cond("a", "matches", "^(a|a)*$")
    context = {"a": "a" * 40 + "!", "ok": 1}
    assert not evaluate(guard(all=[cond("ok", "equals", 2), never]), context)
    assert evaluate(guard(any=[cond("ok", "equals", 1), never]), context)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"path": "a"},
        {"op": "equals"},
        {"all": [{"path": "a", "op": "exists"}], "any": [{"path": "a", "op": "exists"}]},
        {"all": [{"path": "a", "op": "exists"}], "path": "a"},
        {"all": []},
        {"path": "a..b", "op": "exists"},
        {"path": "a", "op": "between"},
    ],
)
def test_malformed_guards_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        Guard.model_validate(fields)


# -- JSON semantics and bounded patterns (once defects, found by these tests) ------------------


@pytest.mark.parametrize(
    ("actual", "op", "value"),
    [
        (True, "equals", 1),
        (False, "equals", 0),
        (1, "equals", True),
        ([True], "equals", [1]),
        ({"k": 0}, "equals", {"k": False}),
        ([False, "x"], "contains", 0),
        ([1], "contains", True),
        (True, "gt", 0),
        (0, "lt", True),
        (True, "gte", False),
    ],
)
def test_a_boolean_is_not_a_number(actual: Any, op: str, value: Any) -> None:
    assert check(cond("a", op, value), {"a": actual}) is False


@pytest.mark.parametrize(
    ("actual", "op", "value"),
    [
        (True, "not_equals", 1),
        ([0], "not_contains", False),
        (True, "equals", True),
        ([1, {"k": True}], "equals", [1.0, {"k": True}]),
        ([True, 1], "contains", True),
    ],
)
def test_booleans_still_compare_with_booleans(actual: Any, op: str, value: Any) -> None:
    assert check(cond("a", op, value), {"a": actual}) is True


def definition_with(when: dict[str, Any]) -> WorkflowDefinition:
    return WorkflowDefinition.model_validate(
        {
            "strategy": "conditional",
            "steps": [{"id": "s", "agent_id": str(AGENTS[0]), "when": when}],
        }
    )


@pytest.mark.parametrize("op", ["gt", "gte", "lt", "lte"])
def test_ordering_with_a_boolean_is_refused(op: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        validate_workflow(definition_with({"path": "x", "op": op, "value": True}), AGENTS, "/w")
    assert raised.value.errors == [
        {
            "pointer": "/w/steps/0/when/value",
            "location": "w",
            "type": "invalid",
            "message": f"`{op}` compares with a number or a string",
        }
    ]


@pytest.mark.parametrize("op", ["matches", "gt", "lte"])
def test_a_condition_without_its_value_is_refused_as_missing(op: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        validate_workflow(definition_with({"path": "x", "op": op}), AGENTS, "/w")
    (error,) = raised.value.errors or []
    assert (error["pointer"], error["type"]) == ("/w/steps/0/when/value", "missing")


@pytest.mark.parametrize(
    ("value", "message"),
    [(3, "`matches` takes a regular expression"), ("(unclosed", "invalid regular expression")],
)
def test_matches_needs_a_valid_pattern(value: Any, message: str) -> None:
    with pytest.raises(ValidationFailed, match=re.escape(message)):
        validate_workflow(
            definition_with({"path": "x", "op": "matches", "value": value}), AGENTS, "/w"
        )


def test_a_catastrophic_pattern_is_fast_or_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    import regex

    from app.services import conditions

    limits: list[object] = []
    search = regex.search

    def limited_search(*args: Any, **kwargs: Any) -> Any:
        limits.append(kwargs.get("timeout"))
        return search(*args, **kwargs)

    monkeypatch.setattr(conditions.regex, "search", limited_search)
    assert check(cond("a", "matches", "^(a+)+$"), {"a": "a" * 40 + "!"}) is False
    with pytest.raises(ConditionTimeout, match="took longer than"):
        check(cond("a", "matches", "^(a|a)*$"), {"a": "a" * 40 + "!"})
    # Every match ran under the engine's time limit: no pattern can stall the process.
    assert limits == [conditions.MATCH_TIMEOUT_SECONDS] * 2


def test_a_stopped_pattern_fails_its_step_instead_of_skipping_it() -> None:
    flow = conditional(None, {"path": "text", "op": "matches", "value": "^(a|a)*$"})
    with pytest.raises(StepInputError, match="its condition failed") as raised:
        run(flow, {"s0": done()}, context={"text": "a" * 40 + "!"})
    assert raised.value.step_key == "s1"


# -- render_input --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def templates() -> Iterator[SharedRenderer]:
    renderer = SharedRenderer()
    yield renderer
    renderer.shutdown()


def planned(template: str | None, step_id: str = "s", input: str = "") -> PlannedStep:
    return PlannedStep(step_id, str(AGENTS[0]), input, template)


@pytest.mark.anyio
async def test_render_input_without_a_template_is_the_input(templates: SharedRenderer) -> None:
    step = planned(None, input="in")
    assert await render_input(templates, step, prompt="p", context={}, variables={}) == "in"


@pytest.mark.anyio
async def test_render_input_sees_input_prompt_context_and_variables(
    templates: SharedRenderer,
) -> None:
    template = "{{ input }}|{{ prompt }}|{{ context.review.score }}|{{ variables.lang }}"
    rendered = await render_input(
        templates,
        planned(template, input="in"),
        prompt="p",
        context={"review": {"score": 4}},
        variables={"lang": "en"},
    )
    assert rendered == "in|p|4|en"


@pytest.mark.anyio
async def test_render_input_renders_as_the_owner_it_is_given() -> None:
    recorder = OwnerRecorder()
    owner = uuid.uuid4()
    step = planned("{{ input }}", input="in")
    await render_input(recorder, step, prompt="p", context={}, variables={}, owner=owner)
    await render_input(recorder, step, prompt="p", context={}, variables={})
    assert recorder.renders == [("{{ input }}", owner), ("{{ input }}", None)]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "template",
    [
        "{{ missing }}",  # undefined names are errors, not blanks
        "{{ context.nope }}",
        "{{ input.__class__.__mro__ }}",  # the sandbox refuses internals
        "{{ 1 / 0 if false else undefined_thing }}",
        "{% for %}",  # not even a template
        "{{ range(10**9) | list }}",  # too many iterations: no longer an uncaught error
        "{{ '{:>30000000}'.format(input) }}",  # too wide
    ],
)
async def test_render_input_failures_are_step_input_errors(
    templates: SharedRenderer, template: str
) -> None:
    with pytest.raises(StepInputError) as raised:
        await render_input(
            templates, planned(template, "broken"), prompt="p", context={}, variables={}
        )
    assert raised.value.step_key == "broken"
    assert str(raised.value).startswith("step 'broken': input template failed: template ")


# -- decide ----------------------------------------------------------------------------------


def workflow(strategy: str, count: int = 3, **fields: Any) -> WorkflowDefinition:
    steps = fields.pop("steps", None) or [
        {"id": f"s{i}", "agent_id": str(AGENTS[i])} for i in range(count)
    ]
    return WorkflowDefinition.model_validate({"strategy": strategy, "steps": steps, **fields})


def run(
    flow: WorkflowDefinition,
    states: dict[str, StepState] | None = None,
    *,
    prompt: str = "the prompt",
    context: dict[str, Any] | None = None,
    variables: dict[str, Any] | None = None,
) -> Decision:
    return decide(
        flow, states or {}, prompt=prompt, context=context or {}, variables=variables or {}
    )


def done(output: str | None = "out") -> StepState:
    return StepState(S.completed, output)


def failed(error: str = "boom") -> StepState:
    return StepState(S.failed, error=error)


RUNNING = StepState(S.running)
SKIPPED = StepState(S.skipped)
CANCELLED = StepState(S.cancelled)


@pytest.mark.parametrize("strategy", ["sequential", "pipeline", "conditional"])
def test_one_at_a_time_strategies_start_with_the_first_step_on_the_prompt(strategy: str) -> None:
    decision = run(workflow(strategy))
    assert decision == Decision(run=[PlannedStep("s0", str(AGENTS[0]), "the prompt")])


@pytest.mark.parametrize("strategy", ["sequential", "pipeline", "conditional"])
def test_one_at_a_time_strategies_wait_for_a_running_step(strategy: str) -> None:
    assert run(workflow(strategy), {"s0": RUNNING}) == Decision()


def test_sequential_steps_all_see_the_prompt() -> None:
    decision = run(workflow("sequential"), {"s0": done("first output")})
    assert decision.run == [PlannedStep("s1", str(AGENTS[1]), "the prompt")]


def test_sequential_ends_with_the_last_completed_output() -> None:
    states = {"s0": done("a"), "s1": done("b"), "s2": done("c")}
    decision = run(workflow("sequential"), states)
    assert decision == Decision(finish=ExecutionStatus.completed, result="c")


def test_a_failed_step_ends_the_run_and_cancels_the_pending_ones() -> None:
    decision = run(workflow("sequential", 4), {"s0": done(), "s1": failed("bad reply")})
    assert decision.finish is ExecutionStatus.failed
    assert decision.cancel == ["s2", "s3"]
    assert decision.error == "step 's1' failed: bad reply"
    assert decision.run == []


def test_pipeline_passes_the_previous_output_as_input() -> None:
    flow = workflow("pipeline")
    assert run(flow, {"s0": done("one")}).run == [PlannedStep("s1", str(AGENTS[1]), "one")]
    states = {"s0": done("one"), "s1": done("two")}
    assert run(flow, states).run == [PlannedStep("s2", str(AGENTS[2]), "two")]
    assert run(flow, {**states, "s2": done("three")}).result == "three"


def test_pipeline_passes_an_empty_output_as_an_empty_input() -> None:
    assert run(workflow("pipeline"), {"s0": done(None)}).run[0].input == ""


def test_pipeline_input_template_wraps_the_previous_output() -> None:
    flow = workflow(
        "pipeline",
        steps=[
            {"id": "a", "agent_id": str(AGENTS[0])},
            {
                "id": "b",
                "agent_id": str(AGENTS[1]),
                "input_template": "[{{ input }}] for {{ prompt }} in {{ variables.lang }}",
            },
        ],
    )
    decision = run(flow, {"a": done("draft")}, variables={"lang": "fr"})
    template = "[{{ input }}] for {{ prompt }} in {{ variables.lang }}"
    # Planned with its template unrendered: it renders when the step runs.
    assert decision.run == [PlannedStep("b", str(AGENTS[1]), "draft", template)]


def test_a_failing_input_template_is_not_rendered_when_deciding() -> None:
    flow = workflow(
        "sequential",
        steps=[
            {"id": "a", "agent_id": str(AGENTS[0])},
            {"id": "b", "agent_id": str(AGENTS[1]), "input_template": "{{ context.absent }}"},
        ],
    )
    assert run(flow).run[0].key == "a"
    assert run(flow, {"a": done()}).run == [
        PlannedStep("b", str(AGENTS[1]), "the prompt", "{{ context.absent }}")
    ]


def conditional(*whens: dict[str, Any] | None) -> WorkflowDefinition:
    steps = []
    for index, when in enumerate(whens):
        step: dict[str, Any] = {"id": f"s{index}", "agent_id": str(AGENTS[index])}
        if when is not None:
            step["when"] = when
        steps.append(step)
    return WorkflowDefinition.model_validate({"strategy": "conditional", "steps": steps})


def test_conditional_skips_a_step_whose_guard_is_false() -> None:
    flow = conditional(None, {"path": "score", "op": "gte", "value": 3}, None)
    assert run(flow, {"s0": done()}, context={"score": 2}) == Decision(skip=["s1"])
    assert run(flow, {"s0": done()}, context={"score": 3}).run[0].key == "s1"
    # After the skip the next step runs, and the result is the last completed output.
    assert run(flow, {"s0": done("x"), "s1": SKIPPED}).run[0].key == "s2"
    finished = run(flow, {"s0": done("x"), "s1": SKIPPED, "s2": done("z")})
    assert finished == Decision(finish=ExecutionStatus.completed, result="z")
    last_skipped = run(flow, {"s0": done("x"), "s1": done("y"), "s2": SKIPPED})
    assert last_skipped.result == "y"


def test_conditional_on_a_missing_path_skips() -> None:
    flow = conditional({"path": "review.score", "op": "gt", "value": 0})
    assert run(flow, context={}) == Decision(skip=["s0"])


def test_conditional_with_every_step_skipped_completes_with_no_result() -> None:
    flow = conditional({"path": "x", "op": "exists"}, {"path": "y", "op": "exists"})
    assert run(flow) == Decision(skip=["s0"])
    assert run(flow, {"s0": SKIPPED}) == Decision(skip=["s1"])
    assert run(flow, {"s0": SKIPPED, "s1": SKIPPED}) == Decision(
        finish=ExecutionStatus.completed, result=None
    )


def test_conditional_steps_see_the_prompt_not_the_previous_output() -> None:
    flow = conditional(None, {"path": "go", "op": "equals", "value": True})
    decision = run(flow, {"s0": done("first")}, context={"go": True})
    assert decision.run == [PlannedStep("s1", str(AGENTS[1]), "the prompt")]


# parallel


def test_parallel_starts_every_pending_step_at_once() -> None:
    flow = workflow("parallel", 4, max_concurrency=2)  # the engine applies the limit
    decision = run(flow)
    assert [p.key for p in decision.run] == ["s0", "s1", "s2", "s3"]
    assert all(p.input == "the prompt" for p in decision.run)


def test_parallel_starts_the_pending_steps_beside_running_ones() -> None:
    decision = run(workflow("parallel"), {"s0": RUNNING, "s1": done()})
    assert [p.key for p in decision.run] == ["s2"]


def test_parallel_waits_while_steps_run() -> None:
    assert run(workflow("parallel"), {"s0": RUNNING, "s1": done(), "s2": RUNNING}) == Decision()


def test_parallel_gathers_the_outputs() -> None:
    states = {"s0": done("a"), "s1": done("b"), "s2": done("c")}
    decision = run(workflow("parallel"), states)
    assert decision == Decision(
        finish=ExecutionStatus.completed,
        result={"outputs": {"s0": "a", "s1": "b", "s2": "c"}, "failed": []},
    )


def test_parallel_fail_fast_waits_for_in_flight_steps() -> None:
    flow = workflow("parallel", 4)
    states = {"s0": failed(), "s1": RUNNING, "s2": done()}
    assert run(flow, states) == Decision()  # no new start, no finish yet


def test_parallel_fail_fast_finishes_once_nothing_runs() -> None:
    flow = workflow("parallel", 4)
    states = {"s0": done(), "s1": failed("rate limited"), "s2": CANCELLED}
    decision = run(flow, states)
    assert decision.finish is ExecutionStatus.failed
    assert decision.cancel == ["s3"]
    assert decision.error == "step 's1' failed: rate limited"
    assert decision.run == []


def test_parallel_continue_runs_the_rest_and_reports_the_failures() -> None:
    flow = workflow("parallel", 3, failure_policy="continue")
    assert [p.key for p in run(flow, {"s0": failed()}).run] == ["s1", "s2"]
    assert run(flow, {"s0": failed(), "s1": RUNNING, "s2": done()}) == Decision()
    decision = run(flow, {"s0": failed(), "s1": done("b"), "s2": CANCELLED})
    assert decision.finish is ExecutionStatus.completed
    assert decision.result == {"outputs": {"s0": None, "s1": "b", "s2": None}, "failed": ["s0"]}


def test_parallel_continue_fails_when_every_step_failed() -> None:
    flow = workflow("parallel", 2, failure_policy="continue")
    decision = run(flow, {"s0": failed(), "s1": failed()})
    assert decision.finish is ExecutionStatus.failed
    assert decision.error == "every step failed"
    assert decision.result == {"outputs": {"s0": None, "s1": None}, "failed": ["s0", "s1"]}


def test_parallel_input_templates_render_for_each_step() -> None:
    flow = workflow(
        "parallel",
        steps=[
            {"id": "en", "agent_id": str(AGENTS[0]), "input_template": "{{ prompt }} (en)"},
            {"id": "fr", "agent_id": str(AGENTS[1]), "input_template": "{{ input }} (fr)"},
        ],
    )
    assert [(p.input, p.template) for p in run(flow).run] == [
        ("the prompt", "{{ prompt }} (en)"),
        ("the prompt", "{{ input }} (fr)"),
    ]
