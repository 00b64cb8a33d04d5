"""Assertions shared by the integration tests: problem documents, 401s, bearer headers.

The module has a distinctive name because test directories without ``__init__.py`` share one
import namespace; a generic ``support.py`` elsewhere would shadow it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from qa.client import ApiClient
from qa.factories import Member
from qa.launcher import REPO_ROOT, Backend, LaunchedBackend
from qa.polling import wait_until

FreshLogin = Callable[[Member], ApiClient]  # the ``fresh_login`` fixture
MakeUser = Callable[..., Member]  # the ``make_user`` fixture
Forge = Callable[..., str]  # the ``forge`` fixture

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance", "request_id"}
GENERATED_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
API_KEY_SHAPE = re.compile(r"^rk_[A-Za-z0-9_-]{43,}$")

# Text that must never reach a client: stack traces, driver and ORM names, SQL.
LEAK_MARKERS = (
    "Traceback",
    'File "',
    "sqlalchemy",
    "sqlite3",
    "asyncpg",
    "aiosqlite",
    "SELECT ",
    "INSERT INTO",
    "UPDATE ",
    "DELETE FROM",
    "OperationalError",
    "IntegrityError",
)


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def assert_no_leak(text: str) -> None:
    for marker in LEAK_MARKERS:
        assert marker not in text, f"{marker!r} leaked into a response: {text}"


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Check ``response`` is an RFC 9457 problem document with ``status``; return its body."""
    where = f"{response.request.method} {response.request.url.path}"
    assert response.status_code == status, (
        f"{where}: expected {status}, got {response.status_code}: {response.text}"
    )
    content_type = response.headers.get("content-type", "")
    assert content_type.split(";")[0].strip() == "application/problem+json", (
        f"{where}: content-type {content_type!r}"
    )
    body = response.json()
    assert body.keys() >= PROBLEM_KEYS, f"{where}: keys {sorted(body)}"
    assert body["status"] == status
    for key in ("type", "title", "detail"):
        assert isinstance(body[key], str), f"{where}: {key} is {body[key]!r}"
        assert body[key].strip(), f"{where}: empty {key}"
    assert body["instance"] == response.request.url.path
    assert body["request_id"], f"{where}: no request_id"
    assert body["request_id"] == response.headers.get("x-request-id")
    assert_no_leak(response.text)
    return body


def assert_unauthorized(response: httpx.Response) -> dict[str, Any]:
    body = assert_problem(response, 401)
    challenge = response.headers.get("www-authenticate", "")
    assert challenge.split(" ")[0] == "Bearer", f"WWW-Authenticate is {challenge!r}"
    return body


def pointers(problem: dict[str, Any]) -> set[str]:
    """The JSON pointers of a validation problem's field errors."""
    errors = problem.get("errors") or []
    for error in errors:
        assert {"pointer", "location", "type", "message"} <= error.keys(), error
    return {error["pointer"] for error in errors}


def log_events(backend: Backend, *request_ids: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The JSON events of a launched server's log, once the ``request`` events of all
    ``request_ids`` are in it (the server writes a request's line after sending the response,
    so a test reading the log at once could race it); fails when they do not come within
    ``timeout``. Non-JSON lines are left out."""

    def events() -> list[dict[str, Any]]:
        text = backend.log_text()
        complete = text[: text.rfind("\n") + 1]  # a line still being written is not read
        return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]

    def with_requests() -> list[dict[str, Any]] | None:
        found = events()
        logged = {e.get("request_id") for e in found if e.get("event") == "request"}
        return found if set(request_ids) <= logged else None

    if not request_ids:
        return events()
    return wait_until(
        with_requests,
        timeout=timeout,
        what=f"the log lines of requests {', '.join(request_ids)}",
        interval=0.05,
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def jwt_payload(token: str) -> dict[str, Any]:
    """The unverified payload of a JWT."""
    segment = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


# -- the ``renum`` console script -------------------------------------------------------------

RENUM = Path(sys.executable).parent / "renum"


@dataclass
class Cli:
    """The installed ``renum`` console script, run as a subprocess with ``env`` in ``cwd``."""

    env: dict[str, str]
    cwd: Path
    timeout: float = 60

    def __call__(self, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our own console script, fixed arguments
            [str(RENUM), *args],
            env={**self.env, **extra_env},
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=self.timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )


def cli_env(**settings: str) -> dict[str, str]:
    """A ``renum`` subprocess's environment: none of the caller's ``RENUM_*`` variables, the
    checkout under test on the path (whichever way the package was installed), a wide plain
    console, and ``settings``."""
    assert RENUM.exists(), f"the renum console script is not installed next to {sys.executable}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("RENUM_")}
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return {**env, "PYTHONPATH": pythonpath, "COLUMNS": "200", "NO_COLOR": "1", **settings}


class ServedWithWorkers(LaunchedBackend):
    """The backend as operators run it: ``renum serve --workers 2`` (each worker spawned by
    the supervisor; coverage is not measured inside the workers)."""

    def _spawn(self, port: int) -> None:
        assert self.log_path is not None
        command = [sys.executable, "-m", "app", "serve", "--port", str(port), "--workers", "2"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
                command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
