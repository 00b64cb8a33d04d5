"""Fixtures and options of the contract tests.

Options: ``--deep`` (long exploration with a fresh seed, for release candidates),
``--contract-seed N`` (replay a run), ``--accept`` (write the schema the backend serves now to
``contracts/openapi.json`` when nothing in it is breaking) and ``--accept-breaking`` (also
when something is). The plugin's ``--target URL`` points every test at a deployment.

The identities: the platform ``admin`` and, from two fresh accounts made through the API, an
``owner`` and a ``member`` each; tenant identities name their counterpart in the other account
as their peer, which must never see their objects.

Databases: the plugin's ``--db`` (``--db=sqlite,postgresql``) runs everything once per
database, one database after the other, each with its own backend, identities and time budget.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import contract_support as support
import coverage
import httpx
import pytest
import schemathesis
from _pytest.nodeid import coerce_node_id
from _pytest.nodes import Node
from contract_support import Identity, Profile, RunState
from coverage.exceptions import CoverageWarning
from schemathesis.core.result import Ok

from qa.client import API, ApiClient
from qa.factories import Member, Tenant, expect
from qa.launcher import Backend
from qa.plugin import SENDS_BURSTS, flavours_for

# Schemathesis 4.32 renames the running item through `Node._nodeid` while it tests a lazily
# loaded schema (`schemathesis.pytest.from_fixture`); pytest 9.2 replaced that attribute with
# `Node._id`. Give it back as a view of `_id` until Schemathesis follows; a no-op before 9.2.
if not hasattr(Node, "_nodeid"):
    Node._nodeid = property(  # type: ignore[attr-defined]
        lambda node: str(node._id),
        lambda node, value: setattr(node, "_id", coerce_node_id(value)),
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("contracts", "Renum contract tests")
    group.addoption(
        "--deep",
        action="store_true",
        help="Explore for long (release candidates): larger budgets and a fresh seed.",
    )
    group.addoption(
        "--contract-seed", type=int, default=None, help="Schemathesis seed (replays a run)."
    )
    group.addoption(
        "--accept",
        action="store_true",
        help="Accept the served schema into contracts/openapi.json if nothing is breaking.",
    )
    group.addoption(
        "--accept-breaking",
        action="store_true",
        help="With --accept: accept breaking changes too (an intended, announced break).",
    )


def pytest_configure(config: pytest.Config) -> None:
    seed = config.getoption("--contract-seed", None)
    deep = config.getoption("--deep", False)
    support.PROFILE = Profile.deep(seed) if deep else Profile.ci(seed)
    support.RUN = None
    support.RUNS.clear()
    support.reset_reports()
    config.stash[SENDS_BURSTS] = True  # fuzzing: thousands of 401s, 404s and unknown emails


# The guard, the flows and the stateful sequences first; the per-operation exploration, which
# the time budget may cut short on a slow machine, last.
ORDER = ("test_schema_guard.py", "test_flows.py", "test_stateful.py", "test_operations.py")


def _database(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    return str(callspec.params.get("db_flavour", "")) if callspec is not None else ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # One database after the other (each backend is started once), in ORDER within each.
    databases = {name: index for index, name in enumerate(str(config.getoption("--db")).split(","))}
    items.sort(
        key=lambda item: (
            databases.get(_database(item), -1),
            ORDER.index(item.path.name) if item.path.name in ORDER else 0,
        )
    )


def pytest_report_header(config: pytest.Config) -> str:
    profile = support.run_profile()
    return (
        f"contracts: profile {profile.name}, seed {profile.seed}, "
        f"{profile.max_examples} fuzzing cases per operation (half on a second database), "
        f"{profile.scenarios} stateful scenarios, budget {profile.budget_seconds:.0f}s per "
        "database"
    )


_written: set[str] = set()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # A failing operation is reported twice (its subtest, then the test); write it once.
    text = report.longreprtext
    if report.failed and support.RUN is not None and text not in _written:
        _written.add(text)
        support.write_failure(report.nodeid, text, support.RUN.profile)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    runs = [state for state in support.RUNS if state.cases]
    if not runs:
        return
    summary = support.write_summary(runs)
    terminalreporter.write_sep("=", "Contract run")
    for state in runs:
        for line in support.iter_summary_lines(state):
            terminalreporter.write_line(f"  {line}")
    terminalreporter.write_line(f"  summary: {summary}")
    failures = support.REPORTS / "failures.md"
    if failures.exists():
        terminalreporter.write_line(f"  failures with reproductions: {failures}", red=True)


def profile_for(config: pytest.Config, flavour: str) -> Profile:
    """The run's profile on the first database of ``--db``; in CI, half the fuzzing cases per
    operation on the next ones (the stateful scenarios and every operation stay whole): how
    the API refuses invalid input does not depend on the database, what it stores does."""
    profile = support.run_profile()
    if profile.name != "ci" or flavour == flavours_for(config, marked=False)[0]:
        return profile
    return replace(profile, max_examples=max(5, profile.max_examples // 2))


def _identity(name: str, member: Member, client: ApiClient, peer: str | None = None) -> Identity:
    me = expect(client.get(f"{API}/users/me"), 200)
    return Identity(name, member.email, member.password, me["id"], me["account_id"], peer)


@pytest.fixture(scope="session")
def identities(
    request: pytest.FixtureRequest,
    backend: Backend,
    admin_client: ApiClient,
    tenant: Tenant,
    other_tenant: Tenant,
    login: Callable[[str, str], ApiClient],
) -> dict[str, Identity]:
    """Every identity of the run, logged in once for the harness's own probes."""
    admin = Member("", backend.admin_email, backend.admin_password, "admin")
    people = [
        ("admin", admin, None),
        ("owner", tenant.owner, "other-owner"),
        ("member", tenant.member, "other-member"),
        ("other-owner", other_tenant.owner, None),
        ("other-member", other_tenant.member, None),
    ]
    state = support.start_run(profile_for(request.config, backend.flavour), backend.flavour)
    state.base_url = backend.base_url
    for name, member, peer in people:
        client = admin_client if name == "admin" else login(member.email, member.password)
        state.identities[name] = _identity(name, member, client, peer)
        state.tokens[name] = str(client.headers["Authorization"]).removeprefix("Bearer ")
    return state.identities


@pytest.fixture(scope="session")
def wfc_path(identities: dict[str, Identity], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The identities' logins as a WFC document; kept out of reports/ (it holds passwords)."""
    path = tmp_path_factory.mktemp("contracts") / "identities.json"
    path.write_text(json.dumps(support.wfc_document(list(identities.values()))))
    return path


SchemaFor = Callable[..., schemathesis.BaseSchema]


@pytest.fixture(scope="session")
def schema_for(backend: Backend, identities: dict[str, Identity], wfc_path: Path) -> SchemaFor:
    """``schema_for(identity, public=True, coverage=True, negative=True)``: the schema the
    backend serves, loaded fresh and authenticated as ``identity``. ``public=False`` leaves out
    the operations that need no credentials, ``coverage=False`` the coverage phase (boundary
    values of every input), ``negative=False`` invalid input: all three test what every caller
    meets alike, so one identity's run covers them."""
    state = support.run_state()

    def load(
        name: str, *, public: bool = True, coverage: bool = True, negative: bool = True
    ) -> schemathesis.BaseSchema:
        identity = identities[name]
        raw = expect(httpx.get(f"{backend.base_url}/openapi.json", timeout=30), 200)
        skip = [] if public else support.public_operation_ids(raw)
        # Schemathesis 4.32 takes about 25 s per operation to build the coverage phase's cases
        # for input that nests itself through a `oneOf` (workflow guards): a third of the CI
        # budget for two operations. CI leaves that phase to `--deep` for such operations;
        # examples, fuzzing, the flows and the stateful phase still test them.
        recursive = support.recursive_operation_ids(raw) if state.profile.name == "ci" else []
        if coverage:
            state.coverage_skipped.update(recursive)
        config = support.schemathesis_config(
            state.profile,
            identity,
            wfc_path,
            base_url=backend.base_url,
            skip=skip,
            coverage=coverage,
            negative=negative,
            no_coverage=recursive,
        )
        schema = schemathesis.openapi.from_dict(raw, config=config)
        # The rules only the server can judge, as the schema documents them per operation.
        state.rules = support.documented_rules(raw)

        @schema.hook
        def after_call(context: Any, case: schemathesis.Case, response: Any) -> None:
            support.record_call(name, support.phase_of(case), case.operation.label)

        schema.hook(support.filter_failure)
        schema.hook(support.flatmap_body)  # non-finite numbers, now and then

        labels = {
            result.ok().label for result in schema.get_all_operations() if isinstance(result, Ok)
        }
        state.operations |= labels
        state.planned[name] = len(labels)  # for "ran out after k of these" when time runs out
        return schema

    return load


@pytest.fixture(scope="session", params=["admin", "member"])
def contract_identity(request: pytest.FixtureRequest, identities: dict[str, Identity]) -> Identity:
    """The identity the per-operation tests run as: a platform admin, an ordinary member."""
    return identities[request.param]


@pytest.fixture(scope="session")
def contract_schema(contract_identity: Identity, schema_for: SchemaFor) -> schemathesis.BaseSchema:
    # The admin run covers, for everyone, the public operations (log in, refresh, probes), the
    # coverage phase's boundary values and invalid input: validation runs before the caller
    # matters. The member's run is about what a member may do, with valid input.
    admin = contract_identity.name == "admin"
    return schema_for(contract_identity.name, public=admin, coverage=admin, negative=admin)


@pytest.fixture(scope="session")
def run(identities: dict[str, Identity]) -> RunState:
    """The run of the database under test (it starts with its identities)."""
    return support.run_state()


@pytest.fixture
def untraced() -> Iterator[None]:
    """Pause coverage measurement of this (the test) process while Schemathesis works.

    Under ``nox -s contracts`` both processes are measured; the server's data is what counts
    for ``app``, while tracing Hypothesis's data generation here measures nothing of ``app`` or
    ``qa`` and made the session about half again as slow.
    """
    measuring = coverage.Coverage.current()
    if measuring is None:
        yield
        return
    measuring.stop()
    try:
        yield
    finally:
        with warnings.catch_warnings():
            # Restarting notes every measured module imported meanwhile; nothing to act on.
            warnings.simplefilter("ignore", CoverageWarning)
            measuring.start()
