"""Every operation of the served schema, as an admin and as an ordinary member, through
Schemathesis's explicit examples, coverage-style boundary values and fuzzing, with every check.

New routes are covered as soon as the backend serves them: the schema is read from the running
server, not listed here. Each operation is a subtest; once the run's time budget is spent, the
operations (or the rest of one) not explored yet are reported as skipped, with the reason.
"""

from __future__ import annotations

import contract_support as support
import pytest
import schemathesis
from contract_support import Identity, RunState

pytestmark = pytest.mark.both_databases

schema = schemathesis.pytest.from_fixture("contract_schema")


@schema.parametrize()
def test_operation(
    case: schemathesis.Case, run: RunState, contract_identity: Identity, untraced: None
) -> None:
    label = case.operation.label
    support.skip_when_over_budget(run, contract_identity.name, label)
    support.keep_identities_usable(case)
    try:
        case.call_and_validate()
    except Exception:
        run.failing.add(label)  # Hypothesis shrinks it now: the budget must not hide it
        raise
