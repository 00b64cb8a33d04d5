"""What the contract tests share: run profiles (CI and deep), the identities Schemathesis
authenticates as, the Schemathesis configuration, the tenant-isolation and input-limit checks,
the hooks that keep generated data inside the API's business rules or add hostile numbers, and
the run statistics and findings written under ``reports/contracts/``.

Everything Schemathesis checks is enabled; the few places where the harness steers generation
say why beside the code. A 422 to schema-valid input fails the run unless every error in it is
a rule the served schema documents on that operation (``x-server-rules`` on its 422 response),
or an input limit the request really broke: Schemathesis's default NUL characters in strings,
and the non-finite numbers ``flatmap_body`` puts where the schema allows numbers.
"""

from __future__ import annotations

import json
import math
import random
import shlex
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.core import NotSet
from schemathesis.transport import register_serializer

REPO_ROOT = Path(__file__).resolve().parent.parent
REPORTS = REPO_ROOT / "reports" / "contracts"
COMMITTED_SCHEMA = Path(__file__).resolve().parent / "openapi.json"
CI_SEED = 20251125
# Schemathesis 4.32's expected statuses for these two checks (schemathesis.config._checks).
POSITIVE_EXPECTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
NEGATIVE_EXPECTED = [
    *("400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429", "5xx"),
]


@dataclass(frozen=True)
class Profile:
    """How long Schemathesis explores: a bounded, seeded CI run or a long one for releases."""

    name: str
    seed: int
    max_examples: int  # fuzzing cases per operation and identity
    scenarios: int  # stateful scenarios per identity
    max_steps: int  # longest stateful scenario
    # The whole Schemathesis run; once it is spent, what was not explored yet is reported as
    # skipped with that reason (never as passed), and counted in the summary as not sent.
    budget_seconds: float

    @classmethod
    def ci(cls, seed: int | None = None) -> Profile:
        return cls("ci", seed if seed is not None else CI_SEED, 14, 30, 8, 180.0)

    @classmethod
    def deep(cls, seed: int | None = None) -> Profile:
        seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
        return cls("deep", seed, 1000, 400, 12, 3600.0)


@dataclass(frozen=True)
class Identity:
    """A user Schemathesis authenticates as."""

    name: str
    email: str
    password: str
    user_id: str
    account_id: str
    peer: str | None = None  # the same role in another account: must never see this one's objects


def wfc_document(identities: list[Identity]) -> dict[str, Any]:
    """A Web Fuzzing Commons auth document: each identity logs in with the password flow."""
    return {
        "auth": [
            {
                "name": identity.name,
                "loginEndpointAuth": {
                    "endpoint": "/api/v1/auth/token",
                    "verb": "POST",
                    "contentType": "application/x-www-form-urlencoded",
                    "payloadUserPwd": {
                        "username": identity.email,
                        "password": identity.password,
                        "usernameField": "username",
                        "passwordField": "password",
                    },
                    "token": {
                        "extractFrom": "body",
                        "extractSelector": "/access_token",
                        "sendIn": "header",
                        "sendName": "Authorization",
                        "sendTemplate": "Bearer {token}",
                    },
                },
            }
            for identity in identities
        ]
    }


def public_operation_ids(raw_schema: dict[str, Any]) -> list[str]:
    """Operations that require no credentials: they answer every caller alike."""
    default = raw_schema.get("security") or []
    found = []
    for item in (raw_schema.get("paths") or {}).values():
        for operation in item.values():
            if isinstance(operation, dict) and "operationId" in operation:
                requirements = operation.get("security", default)
                if not requirements or {} in requirements:
                    found.append(operation["operationId"])
    return found


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


def recursive_operation_ids(raw_schema: dict[str, Any]) -> list[str]:
    """Operations whose input reaches a schema that contains itself (e.g. nested guards)."""
    components = (raw_schema.get("components") or {}).get("schemas") or {}
    prefix = "#/components/schemas/"
    graph = {
        prefix + name: {ref for ref in _refs(schema) if ref.startswith(prefix)}
        for name, schema in components.items()
    }

    def reachable(start: set[str]) -> set[str]:
        seen: set[str] = set()
        todo = list(start)
        while todo:
            ref = todo.pop()
            if ref not in seen:
                seen.add(ref)
                todo.extend(graph.get(ref, ()))
        return seen

    cyclic = {ref for ref in graph if ref in reachable(graph[ref])}
    found = []
    for item in (raw_schema.get("paths") or {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or "operationId" not in operation:
                continue
            inputs = {"body": operation.get("requestBody"), "params": operation.get("parameters")}
            if reachable(_refs(inputs)) & cyclic:
                found.append(operation["operationId"])
    return found


def schemathesis_config(
    profile: Profile,
    identity: Identity,
    wfc_path: Path,
    *,
    base_url: str,
    skip: list[str] | None = None,
    coverage: bool = True,
    negative: bool = True,
    no_coverage: list[str] | None = None,
) -> SchemathesisConfig:
    """Every check and phase on (``coverage=False``: all but the coverage phase); valid and
    invalid input (``negative=False``: valid only); budgets from the profile; auth as
    ``identity``; the operations named in ``skip`` left out, those in ``no_coverage`` without
    the coverage phase."""
    auth: dict[str, Any] = {"path": str(wfc_path), "user": identity.name}
    if identity.peer is not None:
        # Peers drive Schemathesis's `object_level_authorization` check: an object one reads
        # is replayed as the other, who must not get it.
        auth["peers"] = [identity.name, identity.peer]
    operations: list[dict[str, Any]] = []
    if skip:
        operations.append({"include-operation-id": skip, "enabled": False})
    if no_coverage:
        operations.append(
            {"include-operation-id": no_coverage, "phases": {"coverage": {"enabled": False}}}
        )
    return SchemathesisConfig.from_dict(
        {
            "base-url": base_url,
            "operations": operations,
            "seed": profile.seed,
            "generation": {
                "max-examples": profile.max_examples,
                "database": "none",
                "mode": "all" if negative else "positive",
                # NUL characters in generated strings (Schemathesis's default, said here so it
                # stays on): the backend must refuse them with 422 on every database.
                "allow-x00": True,
            },
            # Every built-in check; `max_response_time` only runs with a limit, so it gets a
            # generous one (argon2 hashing on a loaded 2-core runner stays far below it).
            "checks": {
                "enabled": True,
                "max_response_time": 10.0,
                # Schemathesis's defaults plus 413: the body-size limit (RENUM_MAX_BODY_BYTES,
                # a deployment setting) refuses a request that is too large, valid or not,
                # before anything reads it; the schema documents the 413 on every operation
                # with a body.
                "positive_data_acceptance": {
                    "expected-statuses": [*POSITIVE_EXPECTED, "413"],
                },
                "negative_data_rejection": {
                    "expected-statuses": [*NEGATIVE_EXPECTED, "413"],
                },
            },
            "phases": {
                "examples": {"enabled": True, "fill-missing": True},
                "coverage": {"enabled": coverage},
                "fuzzing": {"enabled": True},
                # Sequences follow the links the schema declares, which are part of the product;
                # links Schemathesis would infer mostly lead from any `user_id` in a response to
                # deleting that user, which for the harness's own identities is defused anyway.
                "stateful": {
                    "enabled": True,
                    "max-steps": profile.max_steps,
                    "inference": {"algorithms": []},
                },
            },
            "request-timeout": 30.0,
            "auth": {"wfc": auth},
            "output": {"sanitization": {"enabled": True}},
        }
    )


# The run ----------------------------------------------------------------------------------


@dataclass
class RunState:
    """One database's run, shared by the hooks, the checks and the report: identities,
    budget, the rules the served schema documents, counters."""

    profile: Profile
    database: str = ""
    base_url: str = ""
    identities: dict[str, Identity] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None  # when the next database's run started
    cases: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # identity, op, phase
    not_sent: Counter[str] = field(default_factory=Counter)
    scenarios: Counter[str] = field(default_factory=Counter)
    steps: Counter[str] = field(default_factory=Counter)
    links: Counter[str] = field(default_factory=Counter)
    forgiven: Counter[str] = field(default_factory=Counter)
    diverged_replays: Counter[str] = field(default_factory=Counter)
    isolation_probes: int = 0
    coverage_skipped: set[str] = field(default_factory=set)
    operations: set[str] = field(default_factory=set)
    planned: dict[str, int] = field(default_factory=dict)  # operations per identity's schema
    failing: set[str] = field(default_factory=set)  # operations with a failure, being shrunk
    rules: dict[str, list[Rule]] = field(default_factory=dict)  # by operation label
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def budget_left(self) -> float:
        return self.profile.budget_seconds - (time.monotonic() - self.started)

    def protected_user_ids(self) -> set[str]:
        return {identity.user_id for identity in self.identities.values()}

    def summary(self) -> dict[str, Any]:
        per_identity: dict[str, dict[str, int]] = {}
        per_operation: dict[str, int] = {}
        for (identity, operation, phase), count in self.cases.items():
            per_identity.setdefault(identity, {}).setdefault(phase, 0)
            per_identity[identity][phase] += count
            per_operation[operation] = per_operation.get(operation, 0) + count
        return {
            "database": self.database,
            "profile": self.profile.name,
            "seed": self.profile.seed,
            "budget_seconds": self.profile.budget_seconds,
            "elapsed_seconds": round((self.ended or time.monotonic()) - self.started, 1),
            "operations_in_schema": len(self.operations),
            "operations_exercised": len(per_operation),
            "requests_per_identity_and_phase": per_identity,
            "requests_per_operation": dict(sorted(per_operation.items())),
            "stateful_scenarios": dict(self.scenarios),
            "stateful_steps": dict(self.steps),
            "links_followed": dict(sorted(self.links.items())),
            "stateful_runs_ended_by_a_diverged_replay": dict(self.diverged_replays),
            "isolation_probes": self.isolation_probes,
            "schema_valid_input_refused_as_documented": dict(self.forgiven),
            "cases_not_sent_over_budget": dict(self.not_sent),
            "coverage_phase_skipped_in_ci_for_recursive_input": sorted(self.coverage_skipped),
        }


# The run of the database under test now (the conftest starts one per database, in turn);
# the hooks and checks below read it. RUNS keeps every run of the session, for the report.
PROFILE: Profile | None = None
RUN: RunState | None = None
RUNS: list[RunState] = []


def run_profile() -> Profile:
    if PROFILE is None:
        raise RuntimeError("the contracts conftest picks the profile when pytest starts")
    return PROFILE


def start_run(profile: Profile, database: str) -> RunState:
    """A fresh run (budget, identities, counters) for the next database."""
    global RUN
    if RUN is not None:
        RUN.ended = time.monotonic()
    RUN = RunState(profile, database=database)
    RUNS.append(RUN)
    return RUN


def run_state() -> RunState:
    if RUN is None:
        raise RuntimeError("the contracts conftest sets up the run before any test")
    return RUN


def budget_ran_out(run: RunState, done: int, planned: int, what: str) -> str:
    """The reason a test skips the exploration its time budget left no time for."""
    budget = run.profile.budget_seconds
    return f"time budget of {budget:g}s ran out after {done} of {planned} {what}"


def skip_when_over_budget(run: RunState, identity: str, operation: str) -> None:
    """Before a case is sent: once the run's time budget is spent, the rest of this operation
    is skipped (pytest.skip, with how far the run got) and the case counted as not sent.
    Not while Hypothesis shrinks a failure of this operation: a failure is always reported."""
    if run.budget_left > 0 or operation in run.failing:
        return
    with run.lock:
        run.not_sent[operation] += 1
        explored = len({op for (who, op, _) in run.cases if who == identity})
    planned = run.planned.get(identity, len(run.operations))
    pytest.skip(budget_ran_out(run, explored, planned, f"operations as {identity}"))


def record_call(identity: str, phase: str, operation: str) -> None:
    state = run_state()
    with state.lock:
        state.cases[(identity, operation, phase)] += 1


def phase_of(case: schemathesis.Case) -> str:
    return case.meta.phase.name.value if case.meta is not None else "explicit"


# Requests aimed at the run's own identities ------------------------------------------------

CREDENTIAL_FIELDS = {"password", "role", "is_active"}


def keep_identities_usable(case: schemathesis.Case) -> None:
    """Requests aimed at the run's own identities are defused before they are sent.

    The run must not lock itself (or, with ``--target``, a deployment's real admin) out: an
    admin can change anyone's password, role or activity and delete anyone. A change of those
    fields on a harness identity is dropped; a delete of one is aimed at an unknown id instead
    (the server then answers 404, which every check accepts). Other users are fair game.
    """
    user_id = (case.path_parameters or {}).get("user_id")
    if str(user_id) not in run_state().protected_user_ids():
        return
    if case.method.upper() == "PATCH" and isinstance(case.body, dict):
        case.body = {k: v for k, v in case.body.items() if k not in CREDENTIAL_FIELDS}
    elif case.method.upper() == "DELETE":
        case.path_parameters = {**case.path_parameters, "user_id": str(uuid.uuid4())}


def runnable_sequences(case: schemathesis.Case) -> None:
    """Stateful sequences only: start from objects that can run.

    A random agent is almost never a valid builtin one (the fuzzing phases test those shapes),
    so a sequence could not get past it to the flows the links describe: create an agent, make
    a team of it, run the team, read the execution, cancel it, delete the team. In sequences an
    agent is therefore created as a builtin `echo` agent (keeping its generated name), and a
    team made of linked agents gets the default workflow.
    """
    if case.method.upper() != "POST" or not isinstance(case.body, dict):
        return
    if case.operation.path == "/api/v1/agents":
        case.body = {"name": case.body.get("name", "echo"), "provider": "builtin", "model": "echo"}
    elif case.operation.path == "/api/v1/teams" and case.body.get("agent_ids"):
        case.body.pop("workflow", None)


# Rules a JSON Schema cannot state, and the input limits ------------------------------------

# The error types of the input limits every operation applies (app.core.input_limits): NUL
# characters, unpaired surrogates, non-finite numbers, nesting too deep, numbers too long.
INPUT_LIMIT_TYPES = frozenset(
    {"nul_character", "unpaired_surrogate", "non_finite_number", "too_deep", "number_too_long"}
)
SERVER_RULES = "x-server-rules"


@dataclass(frozen=True)
class Rule:
    """A rule the served schema documents on an operation's 422 (``x-server-rules``): schema-
    valid input it refuses is expected, for errors of this type at this input or below it."""

    pointer: str
    type: str

    def matches(self, error: dict[str, Any]) -> bool:
        pointer = str(error.get("pointer", ""))
        at = pointer == self.pointer or pointer.startswith(self.pointer + "/")
        return at and error.get("type") == self.type


def documented_rules(raw_schema: dict[str, Any]) -> dict[str, list[Rule]]:
    """Each operation's documented rules, by its label ("POST /api/v1/api-keys")."""
    found: dict[str, list[Rule]] = {}
    for path, item in (raw_schema.get("paths") or {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict):
                continue
            response = (operation.get("responses") or {}).get("422") or {}
            rules = [Rule(r["pointer"], r["type"]) for r in response.get(SERVER_RULES, ())]
            if rules:
                found[f"{method.upper()} {path}"] = rules
    return found


def _hostile(value: Any, *, numbers: bool = True) -> bool:
    """Whether ``value`` holds what an input limit refuses (a NUL, an unpaired surrogate, a
    non-finite number if ``numbers``: JSON only, elsewhere it travels as text) anywhere, keys
    included."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item or any(0xD800 <= ord(c) <= 0xDFFF for c in item):
                return True
        elif isinstance(item, float):
            if numbers and not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def _inputs(case: schemathesis.Case) -> dict[str, Any]:
    """The inputs the operation takes (the backend reads no others), by location."""
    body = None if isinstance(case.body, NotSet) else case.body
    declared = case.operation.definition.raw.get("parameters", ())
    query = {p["name"] for p in declared if p.get("in") == "query"}
    return {
        "body": body,
        "query": {k: v for k, v in (case.query or {}).items() if k in query},
        "path": case.path_parameters or {},
        "header": case.headers or {},
    }


def _is_json(case: schemathesis.Case) -> bool:
    return "json" in str(case.media_type or "")


def hostile_inputs(case: schemathesis.Case) -> list[str]:
    """The request's parts (body, query, path, header) that carry a hostile value."""
    return [
        where
        for where, value in _inputs(case).items()
        if value and _hostile(value, numbers=where == "body" and _is_json(case))
    ]


def _at(case: schemathesis.Case, pointer: str) -> tuple[bool, Any, str]:
    """The value ``pointer`` names in the case's inputs: (found, value, last token)."""
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]
    if not tokens:
        return False, None, ""
    node: Any = _inputs(case).get(tokens[0])
    for token in tokens[1:]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False, None, ""
    return True, node, tokens[-1]


def refused_by_an_input_limit(case: schemathesis.Case, error: dict[str, Any]) -> bool:
    """The error names an input limit, at a place where the case really holds what it
    refuses (a NUL in a value or a key, a non-finite number, nesting)."""
    if error.get("type") not in INPUT_LIMIT_TYPES:
        return False
    found, value, key = _at(case, str(error.get("pointer", "")))
    if not found:
        return False
    if error["type"] == "too_deep":
        return isinstance(value, dict | list)
    numbers = str(error["pointer"]).startswith("/body/") and _is_json(case)
    return _hostile(value, numbers=numbers) or _hostile(key, numbers=False)


def expected_refusal(case: schemathesis.Case, response: Any) -> str | None:
    """Why a 422 to schema-valid input is expected, if it is: every error it lists is a rule
    the schema documents on this operation, or an input limit the case broke."""
    if response.status_code != 422:
        return None
    try:
        errors = response.json().get("errors") or []
    except ValueError:
        return None
    rules = run_state().rules.get(case.operation.label, [])
    reasons = set()
    for error in errors:
        rule = next((r for r in rules if r.matches(error)), None)
        if rule is not None:
            reasons.add(f"{rule.type} at {rule.pointer}")
        elif refused_by_an_input_limit(case, error):
            reasons.add(f"input limit: {error['type']}")
        else:
            return None
    return ", ".join(sorted(reasons)) if reasons else None


def filter_failure(context: Any, failure: Any, case: schemathesis.Case, response: Any) -> bool:
    """Schemathesis `filter_failure` hook: drop only a refusal of schema-valid input that the
    schema documents on the operation (or an input limit the request broke)."""
    from schemathesis.openapi.checks import RejectedPositiveData

    if not isinstance(failure, RejectedPositiveData):
        return True
    reason = expected_refusal(case, response)
    if reason is None:
        return True
    state = run_state()
    with state.lock:
        state.forgiven[reason] += 1
    return False


@schemathesis.check
def input_limits(ctx: schemathesis.CheckContext, response: Any, case: Any) -> bool | None:
    """A request carrying a NUL character, an unpaired surrogate or a non-finite number is
    refused with 422 (the backend's input limits), whatever the operation: never stored (2xx),
    never a server error."""
    if RUN is None:
        return None
    parts = hostile_inputs(case)
    if not parts:
        return None
    status = response.status_code
    if status in (413, 422) or (status == 404 and parts == ["path"]):
        return None  # too large anyway; a path no route matches
    raise AssertionError(
        f"The request carries a NUL character, an unpaired surrogate or a non-finite number "
        f"(in its {', '.join(parts)}); expected 422, got {status}."
    )


# Non-finite numbers where the schema allows numbers ------------------------------------------

NON_FINITE = (math.nan, math.inf, -math.inf)


def _number_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _number_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _number_paths(v, (*path, i))]
    return []


def _put(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy: Any = list(value) if isinstance(value, list) else dict(value)
    copy[path[0]] = _put(copy[path[0]], path[1:], new)
    return copy


def flatmap_body(context: Any, body: Any) -> Any:
    """Schemathesis `flatmap_body` hook: about one body in eight that has numbers gets NaN,
    Infinity or -Infinity in one of them (Schemathesis has no setting for non-finite
    numbers); the backend must refuse it with 422 (``input_limits``)."""
    from hypothesis import strategies as st

    operation = context.operation
    raw = operation.definition.raw if operation is not None else {}
    content = raw.get("requestBody", {}).get("content", {})
    paths = _number_paths(body) if "application/json" in content else []
    if not paths:
        return st.just(body)
    hostile = st.tuples(st.sampled_from(paths), st.sampled_from(NON_FINITE)).map(
        lambda choice: _put(body, *choice)
    )
    return st.integers(0, 7).flatmap(lambda n: hostile if n == 7 else st.just(body))


def json_with_non_finite(context: Any, value: Any) -> dict[str, Any]:
    """JSON bodies as Schemathesis sends them, except that a body with a non-finite number
    goes out as the text Python writes (``NaN``, ``Infinity``), which the client library
    would otherwise refuse to send."""
    from schemathesis.transport.serialization import serialize_json

    if isinstance(value, dict | list) and _hostile_numbers(value):
        return {"data": json.dumps(value).encode()}
    return serialize_json(value)


# Replaces Schemathesis's own JSON serializer for this process (the contract tests).
register_serializer(json_with_non_finite, "application/json")


def _hostile_numbers(value: Any) -> bool:
    return any(isinstance(item, float) and not math.isfinite(item) for item in _leaves(value))


def _leaves(value: Any) -> Iterator[Any]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            yield item


# The tenant-isolation check ------------------------------------------------------------------

SAFE_TO_REPLAY = {"GET", "HEAD", "PATCH", "PUT"}


def _curl(method: str, url: str, headers: dict[str, str], body: bytes | None) -> str:
    parts = ["curl", "-X", method]
    for name, value in headers.items():
        if name.lower() == "authorization":
            value = "Bearer <token of the peer identity>"
        parts += ["-H", f"{name}: {value}"]
    if body:
        parts += ["-d", body.decode("utf-8", "replace")]
    return shlex.join([*parts, url])


def log_in(base_url: str, identity: Identity) -> str:
    """A fresh access token for ``identity``."""
    response = httpx.post(
        f"{base_url}/api/v1/auth/token",
        data={"username": identity.email, "password": identity.password},
        timeout=30,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


@schemathesis.check
def tenant_isolation(ctx: schemathesis.CheckContext, response: Any, case: Any) -> bool | None:
    """One account never sees another's objects.

    A request a tenant identity (member, owner) made successfully on a specific object (a
    path with parameters) is replayed by the same role of another account, which must get
    403 or 404. Deletes are not replayed: after a successful delete nothing is left to see.
    """
    if RUN is None or not case.path_parameters or not 200 <= response.status_code < 300:
        return None
    request = response.request
    owner = RUN.identities.get(case.auth_identity or "")
    if request.method not in SAFE_TO_REPLAY or owner is None or owner.peer is None:
        return None
    headers = {
        k: v
        for k, v in request.headers.items()
        if k.lower() not in {"authorization", "content-length", "host"}
    }
    body = request.body.encode() if isinstance(request.body, str) else request.body
    for attempt in range(2):
        headers["Authorization"] = f"Bearer {RUN.tokens[owner.peer]}"
        peer = httpx.request(request.method, request.url, headers=headers, content=body, timeout=30)
        if peer.status_code != 401 or attempt:
            break
        # The peer's access token expired (a long run against a deployment): log in again.
        RUN.tokens[owner.peer] = log_in(RUN.base_url, RUN.identities[owner.peer])
    with RUN.lock:
        RUN.isolation_probes += 1
    if peer.status_code in (403, 404):
        return None
    raise AssertionError(
        f"`{owner.peer}` (another account) got {peer.status_code} for the object "
        f"`{owner.name}` just used with {request.method} {case.formatted_path} "
        f"({response.status_code}); expected 403 or 404.\n\n"
        f"Reproduce as the peer with:\n\n    "
        f"{_curl(request.method, str(request.url), headers, body)}"
    )


# Findings ---------------------------------------------------------------------------------


def reset_reports() -> None:
    REPORTS.mkdir(parents=True, exist_ok=True)
    for stale in ("failures.md", "summary.json"):
        (REPORTS / stale).unlink(missing_ok=True)


def write_failure(nodeid: str, text: str, profile: Profile) -> Path:
    """Append one finding, with its reproduction, to ``reports/contracts/failures.md``."""
    path = REPORTS / "failures.md"
    new = not path.exists()
    with path.open("a", encoding="utf-8") as out:
        if new:
            out.write(
                "# Contract test failures\n\n"
                f"Profile `{profile.name}`, seed `{profile.seed}`: rerun with "
                f"`nox -s contracts -- --contract-seed={profile.seed}`"
                f"{' --deep' if profile.name == 'deep' else ''}.\n"
                "Each finding below carries a cURL reproduction (credentials filtered).\n\n"
            )
        out.write(f"## {nodeid}\n\n```\n{text.strip()}\n```\n\n")
    return path


def write_summary(runs: list[RunState]) -> Path:
    """``summary.json``: the profile, and each database's run."""
    path = REPORTS / "summary.json"
    profile = runs[0].profile
    document = {
        "profile": profile.name,
        "seed": profile.seed,
        "runs": [state.summary() for state in runs],
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def iter_summary_lines(state: RunState) -> Iterator[str]:
    summary = state.summary()
    yield (
        f"{summary['database'] or 'backend'}: profile {summary['profile']}, seed "
        f"{summary['seed']}, {summary['elapsed_seconds']}s of a "
        f"{summary['budget_seconds']:.0f}s budget"
    )
    yield (
        f"operations: {summary['operations_exercised']} exercised of "
        f"{summary['operations_in_schema']} in the schema"
    )
    for identity, phases in summary["requests_per_identity_and_phase"].items():
        detail = ", ".join(f"{phase} {count}" for phase, count in sorted(phases.items()))
        yield f"requests as {identity}: {sum(phases.values())} ({detail})"
    for identity, count in summary["stateful_scenarios"].items():
        yield (
            f"stateful as {identity}: {count} scenarios, "
            f"{summary['stateful_steps'].get(identity, 0)} steps"
        )
    yield f"links followed: {len(summary['links_followed'])} distinct"
    yield f"tenant-isolation probes: {summary['isolation_probes']}"
    forgiven = summary["schema_valid_input_refused_as_documented"]
    if forgiven:
        yield f"schema-valid input refused as documented (not failures): {forgiven}"
    if summary["coverage_phase_skipped_in_ci_for_recursive_input"]:
        skipped = ", ".join(summary["coverage_phase_skipped_in_ci_for_recursive_input"])
        yield f"coverage phase left to --deep (recursive input): {skipped}"
    if summary["cases_not_sent_over_budget"]:
        yield (
            "SKIPPED, the time budget ran out (cases not sent): "
            f"{summary['cases_not_sent_over_budget']}"
        )
