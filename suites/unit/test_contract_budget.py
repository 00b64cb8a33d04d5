"""The contract run's time budget (``contracts/contract_support.py``): once it is spent, what
was not explored yet is reported as skipped with the reason, never as passed; the cases are
counted as not sent; a failure being shrunk is never cut short. The budget is spent by moving
the run's start back, not by waiting."""

from __future__ import annotations

import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"
sys.path.insert(0, str(CONTRACTS))
import contract_support as support  # noqa: E402 - contracts/ is not a package
from contract_support import Profile, RunState  # noqa: E402

BUDGET = 3600.0


def run_state(planned: int = 3) -> RunState:
    run = RunState(
        Profile("ci", 1, max_examples=1, scenarios=1, max_steps=1, budget_seconds=BUDGET)
    )
    run.planned["admin"] = planned
    return run


def spend(run: RunState) -> None:
    run.started = time.monotonic() - 2 * BUDGET


def test_within_the_budget_nothing_is_skipped() -> None:
    run = run_state()
    support.skip_when_over_budget(run, "admin", "GET /a")
    assert run.not_sent == {}


def test_a_spent_budget_skips_with_how_far_the_run_got() -> None:
    run = run_state(planned=46)
    run.cases[("admin", "GET /a", "examples")] += 3
    run.cases[("admin", "GET /b", "fuzzing")] += 20
    run.cases[("member", "GET /c", "fuzzing")] += 5  # another identity's operations
    spend(run)
    with pytest.raises(pytest.skip.Exception) as skipped:
        support.skip_when_over_budget(run, "admin", "GET /d")
    assert str(skipped.value) == "time budget of 3600s ran out after 2 of 46 operations as admin"
    assert run.not_sent == {"GET /d": 1}  # counted for the run's summary
    summary = list(support.iter_summary_lines(run))
    assert "SKIPPED, the time budget ran out (cases not sent): {'GET /d': 1}" in summary


def test_a_failure_being_shrunk_is_not_cut_short_by_the_budget() -> None:
    run = run_state()
    run.failing.add("GET /a")
    spend(run)
    support.skip_when_over_budget(run, "admin", "GET /a")  # no skip: the failure is reported
    with pytest.raises(pytest.skip.Exception):
        support.skip_when_over_budget(run, "admin", "GET /b")


def test_the_reason_names_the_budget_as_configured() -> None:
    run = RunState(Profile("ci", 1, 1, 1, 1, budget_seconds=0.5))
    reason = support.budget_ran_out(run, 7, 30, "stateful scenarios as owner")
    assert reason == "time budget of 0.5s ran out after 7 of 30 stateful scenarios as owner"


INNER_CONFTEST = """
from _pytest.nodeid import coerce_node_id
from _pytest.nodes import Node

# As contracts/conftest.py does for Schemathesis 4.32 on pytest 9.2.
if not hasattr(Node, "_nodeid"):
    Node._nodeid = property(
        lambda node: str(node._id),
        lambda node, value: setattr(node, "_id", coerce_node_id(value)),
    )
"""

INNER_TEST = """
import time

import contract_support as support
import pytest
import schemathesis
from contract_support import Profile, RunState

RAW = {
    "openapi": "3.0.2",
    "info": {"title": "budget", "version": "1"},
    "paths": {
        path: {"get": {"operationId": path[1:], "responses": {"200": {"description": "ok"}}}}
        for path in ("/a", "/b", "/c")
    },
}
RUN = RunState(Profile("ci", 1, 1, 1, 1, budget_seconds=3600.0))
RUN.planned["admin"] = 3


@pytest.fixture
def api():
    return schemathesis.openapi.from_dict(RAW)


schema = schemathesis.pytest.from_fixture("api")


@schema.parametrize()
def test_operation(case):
    label = case.operation.label
    if label != "GET /a":
        RUN.started = time.monotonic() - 7200  # the first operation spent the whole budget
    support.skip_when_over_budget(RUN, "admin", label)
    RUN.cases[("admin", label, "examples")] += 1  # "sent"
"""


def test_operations_left_when_the_budget_runs_out_are_reported_skipped(
    pytester: pytest.Pytester,
) -> None:
    """In a Schemathesis run (each operation a subtest), the operations the budget left no time
    for are skipped with the reason, in the terminal and in the JUnit report."""
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_budget=INNER_TEST)
    junit = pytester.path / "junit.xml"
    # -q: at the default verbosity pytest 9.2 leaves skipped subtests out of the terminal (the
    # JUnit report has them either way).
    result = pytester.runpytest("-q", "-rs", f"--junitxml={junit}")
    result.assert_outcomes(passed=1, skipped=2)  # the test item, and two operations skipped
    reason = "time budget of 3600s ran out after 1 of 3 operations as admin"
    result.stdout.fnmatch_lines([f"SUBSKIPPED * {reason}"])
    report = ET.parse(junit).getroot()  # noqa: S314 - the report this test just wrote
    cases = {case.get("name"): case for case in report.iter("testcase")}
    assert cases["test_operation[GET /a]"].find("skipped") is None
    for operation in ("GET /b", "GET /c"):
        skipped = cases[f"test_operation[{operation}]"].find("skipped")
        assert skipped is not None, operation
        assert skipped.get("message") == reason
