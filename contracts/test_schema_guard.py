"""The breaking-change guard: the schema the backend serves now against the promise committed in
``contracts/openapi.json`` (the comparison itself is ``qa.schema_diff``).

Any difference fails until it is accepted: additive ones with ``nox -s contracts -- --accept``,
breaking ones only with ``--accept --accept-breaking`` (an intended, announced break). The
difference is also written to ``reports/contracts/schema-diff.txt``.
"""

from __future__ import annotations

import httpx
import pytest
from contract_support import COMMITTED_SCHEMA, REPORTS

from qa import schema_diff
from qa.factories import expect
from qa.launcher import Backend

# Both databases: the contract is the API's promise on each (see docs/harness.md).
pytestmark = pytest.mark.both_databases

ACCEPT = "nox -s contracts -- --accept"


def test_served_schema_keeps_the_committed_contract(
    backend: Backend, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    served = expect(httpx.get(f"{backend.base_url}/openapi.json", timeout=30), 200)
    accept = request.config.getoption("--accept")
    if accept and request.config.getoption("--target"):
        pytest.fail("--accept records the schema of the code under test; drop --target")
    if not COMMITTED_SCHEMA.exists():
        if not accept:
            pytest.fail(f"{COMMITTED_SCHEMA} is missing; record the current schema with: {ACCEPT}")
        schema_diff.dump(served, COMMITTED_SCHEMA)
        return

    diff = schema_diff.compare(schema_diff.load(COMMITTED_SCHEMA), served)
    report = diff.report()
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "schema-diff.txt").write_text(report + "\n", encoding="utf-8")

    if accept:
        if diff.breaking and not request.config.getoption("--accept-breaking"):
            pytest.fail(
                f"Not accepted: the served schema breaks the committed contract.\n\n{report}\n\n"
                "If the break is intended (and announced to clients), accept it with: "
                f"{ACCEPT} --accept-breaking"
            )
        schema_diff.dump(served, COMMITTED_SCHEMA)
        with capsys.disabled():
            print(f"\n{report}\nAccepted into {COMMITTED_SCHEMA}.")
        return

    if diff.breaking:
        pytest.fail(
            f"The served schema breaks the committed contract ({COMMITTED_SCHEMA}).\n\n"
            f"{report}\n\nRestore what clients rely on, or, for an intended and announced break: "
            f"{ACCEPT} --accept-breaking"
        )
    if diff.additive:
        pytest.fail(
            f"The served schema has changes not yet in {COMMITTED_SCHEMA}.\n\n{report}\n\n"
            f"None of them breaks a client; accept them with: {ACCEPT}"
        )
