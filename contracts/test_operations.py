"""Every operation of the served schema, as an admin and as an ordinary member, through
Schemathesis's explicit examples, coverage-style boundary values and fuzzing, with every check.

New routes are covered as soon as the backend serves them: the schema is read from the running
server, not listed here.
"""

from __future__ import annotations

import contract_support as support
import schemathesis
from contract_support import RunState

schema = schemathesis.pytest.from_fixture("contract_schema")


@schema.parametrize()
def test_operation(case: schemathesis.Case, run: RunState, untraced: None) -> None:
    if run.budget_left <= 0:
        # The run's time budget is spent: the case is counted, not sent, and the summary says so.
        run.not_sent[case.operation.label] += 1
        return
    support.keep_identities_usable(case)
    case.call_and_validate()
