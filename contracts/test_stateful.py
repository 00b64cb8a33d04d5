"""Stateful sequences that follow the schema's OpenAPI links (create, then read, change,
delete; log in, then refresh, log out), as an admin, an account owner and an ordinary member,
with every check, including the ones that need history: a deleted object must be gone
(`use_after_free`), a created one must be there (`ensure_resource_availability`), and another
account must not see it (`tenant_isolation`, `object_level_authorization`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import contract_support as support
import hypothesis
import pytest
import schemathesis
from contract_support import Identity, RunState
from hypothesis.errors import Flaky, FlakyStrategyDefinition
from schemathesis.core.failures import FailureGroup

# Both databases: the contract is the API's promise on each (see docs/harness.md).
pytestmark = pytest.mark.both_databases


@pytest.mark.parametrize("name", ["admin", "owner", "member"])
def test_linked_sequences(
    name: str,
    identities: dict[str, Identity],
    schema_for: Callable[[str], schemathesis.BaseSchema],
    run: RunState,
    untraced: None,
) -> None:
    planned = run.profile.scenarios
    if run.budget_left <= 0:
        run.not_sent[f"stateful as {name}"] += planned
        pytest.skip(support.budget_ran_out(run, 0, planned, f"stateful scenarios as {name}"))
    base = schema_for(name).as_state_machine()
    found: list[FailureGroup] = []

    class Sequences(base):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            run.scenarios[name] += 1

        def before_call(self, case: schemathesis.Case) -> None:
            support.keep_identities_usable(case)
            support.runnable_sequences(case)
            super().before_call(case)

        def step(self, input: Any) -> Any:
            run.steps[name] += 1
            if input.transition is not None:
                run.links[input.transition.id] += 1
            return super().step(input)

        def validate_response(self, response: Any, case: Any, *args: Any, **kwargs: Any) -> None:
            try:
                super().validate_response(response, case, *args, **kwargs)
            except FailureGroup as failure:
                found.append(failure)
                raise

    settings = hypothesis.settings(
        max_examples=run.profile.scenarios,
        stateful_step_count=run.profile.max_steps,
        deadline=None,
        database=None,
        phases=[hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    # The server's state moves on between scenarios, so Hypothesis replaying a sequence (to
    # confirm a failure, or while walking its tree of choices) need not go the same way again.
    # As in Schemathesis's own runner, the failures seen during the run are what counts; a
    # diverged replay only ends that round early, and the next round starts from the next seed.
    for attempt in range(max(5, run.profile.scenarios // 10)):
        seed = run.profile.seed + attempt
        machine = hypothesis.seed(seed)(Sequences)
        machine.rule_order_seed = seed  # which operation opens each scenario varies with it
        try:
            machine.run(settings=settings)
        except (Flaky, FlakyStrategyDefinition):
            run.diverged_replays[name] += 1
        else:
            break
        if found or run.scenarios[name] >= run.profile.scenarios or run.budget_left <= 0:
            break
    if found:
        raise found[0]
    if run.scenarios[name] < planned and run.budget_left <= 0:
        run.not_sent[f"stateful as {name}"] += planned - run.scenarios[name]
        done = run.scenarios[name]
        pytest.skip(support.budget_ran_out(run, done, planned, f"stateful scenarios as {name}"))
