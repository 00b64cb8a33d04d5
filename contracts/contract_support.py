"""What the contract tests share: run profiles (CI and deep), the identities Schemathesis
authenticates as, the Schemathesis configuration, the tenant-isolation check, the hooks that
keep generated data inside the API's business rules, and the run statistics and findings
written under ``reports/contracts/``.

Everything Schemathesis checks is enabled; the few places where the harness steers generation
say why beside the code.
"""

from __future__ import annotations

import json
import random
import shlex
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from schemathesis.config import SchemathesisConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
REPORTS = REPO_ROOT / "reports" / "contracts"
COMMITTED_SCHEMA = Path(__file__).resolve().parent / "openapi.json"
CI_SEED = 20251125


@dataclass(frozen=True)
class Profile:
    """How long Schemathesis explores: a bounded, seeded CI run or a long one for releases."""

    name: str
    seed: int
    max_examples: int  # fuzzing cases per operation and identity
    scenarios: int  # stateful scenarios per identity
    max_steps: int  # longest stateful scenario
    budget_seconds: float  # the whole Schemathesis run; later cases are not sent once it is spent

    @classmethod
    def ci(cls, seed: int | None = None) -> Profile:
        return cls("ci", seed if seed is not None else CI_SEED, 25, 30, 6, 170.0)

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


def schemathesis_config(
    profile: Profile,
    identity: Identity,
    wfc_path: Path,
    *,
    base_url: str,
    skip: list[str] | None = None,
) -> SchemathesisConfig:
    """Every check and phase on; budgets from the profile; auth as ``identity``; the
    operations named in ``skip`` left out."""
    auth: dict[str, Any] = {"path": str(wfc_path), "user": identity.name}
    if identity.peer is not None:
        # Peers drive Schemathesis's `object_level_authorization` check: an object one reads
        # is replayed as the other, who must not get it.
        auth["peers"] = [identity.name, identity.peer]
    operations = [{"include-operation-id": skip, "enabled": False}] if skip else []
    return SchemathesisConfig.from_dict(
        {
            "base-url": base_url,
            "operations": operations,
            "seed": profile.seed,
            "generation": {"max-examples": profile.max_examples, "database": "none"},
            # Every built-in check; `max_response_time` only runs with a limit, so it gets a
            # generous one (argon2 hashing on a loaded 2-core runner stays far below it).
            "checks": {"enabled": True, "max_response_time": 10.0},
            "phases": {
                "examples": {"enabled": True, "fill-missing": True},
                "coverage": {"enabled": True},
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
    """Shared by the hooks, the checks and the report: identities, budget, counters."""

    profile: Profile
    base_url: str = ""
    identities: dict[str, Identity] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    cases: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # identity, op, phase
    not_sent: Counter[str] = field(default_factory=Counter)
    scenarios: Counter[str] = field(default_factory=Counter)
    steps: Counter[str] = field(default_factory=Counter)
    links: Counter[str] = field(default_factory=Counter)
    diverged_replays: Counter[str] = field(default_factory=Counter)
    isolation_probes: int = 0
    operations: set[str] = field(default_factory=set)
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
            "profile": self.profile.name,
            "seed": self.profile.seed,
            "budget_seconds": self.profile.budget_seconds,
            "elapsed_seconds": round(time.monotonic() - self.started, 1),
            "operations_in_schema": len(self.operations),
            "operations_exercised": len(per_operation),
            "requests_per_identity_and_phase": per_identity,
            "requests_per_operation": dict(sorted(per_operation.items())),
            "stateful_scenarios": dict(self.scenarios),
            "stateful_steps": dict(self.steps),
            "links_followed": dict(sorted(self.links.items())),
            "stateful_runs_ended_by_a_diverged_replay": dict(self.diverged_replays),
            "isolation_probes": self.isolation_probes,
            "cases_not_sent_over_budget": dict(self.not_sent),
        }


# Set by the conftest for the whole session; the hooks and checks below read it.
RUN: RunState | None = None


def run_state() -> RunState:
    if RUN is None:
        raise RuntimeError("the contracts conftest sets up the run before any test")
    return RUN


def record_call(identity: str, phase: str, operation: str) -> None:
    state = run_state()
    with state.lock:
        state.cases[(identity, operation, phase)] += 1


def phase_of(case: schemathesis.Case) -> str:
    return case.meta.phase.name.value if case.meta is not None else "explicit"


# Steering generation: only where JSON Schema cannot express a rule --------------------------


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


def prepare(case: schemathesis.Case, identity: Identity) -> None:
    """What the harness does to every generated case before sending it (see below)."""
    keep_identities_usable(case)
    within_business_rules(case, identity)


def within_business_rules(case: schemathesis.Case, identity: Identity) -> None:
    """Adjust schema-valid data that breaks a rule JSON Schema cannot state, so that the
    `positive_data_acceptance` check holds the server to everything else. Each rule is still
    tested directly by the integration suite.

    - ``POST /api/v1/api-keys``: ``expires_at`` must lie in the future (a schema cannot say
      "after now"); a past instant is moved a year ahead.
    - ``POST /api/v1/users`` as an admin: admins must name the account (``account_id``) the
      user joins, others may leave it out; the schema is the same for every caller, so an
      admin's request without one gets the identity's own tenant account.
    """
    body = case.body
    if not isinstance(body, dict):
        return
    path = case.operation.path
    if case.method.upper() == "POST" and path == "/api/v1/api-keys":
        expires = body.get("expires_at")
        if isinstance(expires, str):
            try:
                moment = datetime.fromisoformat(expires.replace("Z", "+00:00"))
            except ValueError:
                return
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            if moment <= datetime.now(UTC) + timedelta(minutes=1):
                body["expires_at"] = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    elif (
        case.method.upper() == "POST"
        and path == "/api/v1/users"
        and identity.name == "admin"
        and body.get("account_id") is None
    ):
        body["account_id"] = run_state().identities["member"].account_id


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
    peer_token = RUN.tokens[owner.peer]
    headers = {
        k: v
        for k, v in request.headers.items()
        if k.lower() not in {"authorization", "content-length", "host"}
    }
    headers["Authorization"] = f"Bearer {peer_token}"
    body = request.body.encode() if isinstance(request.body, str) else request.body
    peer = httpx.request(request.method, request.url, headers=headers, content=body, timeout=30)
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


def write_summary(state: RunState) -> Path:
    path = REPORTS / "summary.json"
    path.write_text(json.dumps(state.summary(), indent=2) + "\n", encoding="utf-8")
    return path


def iter_summary_lines(state: RunState) -> Iterator[str]:
    summary = state.summary()
    yield (
        f"profile {summary['profile']}, seed {summary['seed']}, "
        f"{summary['elapsed_seconds']}s of a {summary['budget_seconds']:.0f}s budget"
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
    if summary["cases_not_sent_over_budget"]:
        yield f"NOT SENT (budget spent): {summary['cases_not_sent_over_budget']}"
