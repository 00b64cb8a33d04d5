"""Start the Renum backend as a real server process, or point at a deployed one.

``LaunchedBackend`` runs uvicorn on a free port against a fresh database (an SQLite file in a
temporary folder, or a new database on the local PostgreSQL), with a bootstrap admin, and waits
until ``/health/ready`` answers. Its platform base URL is the harness's shared fake
OpenAI-compatible server on loopback (``qa.fake_openai.shared_fake``), and its egress
allowlist holds exactly that server's host and port, so agents pointed at it stay valid and
nothing ever resolves a public provider host. The process runs under ``qa.loopback_guard``
(on the stdlib event loop, whose sockets the guard sees): a connection or name lookup outside
loopback is refused there and reported when the backend stops (``BackendFailed`` with the
destinations). It runs in the ``test`` environment, where the backend counts each request's
database statements against its route's query budget: a request over budget (an N+1 pattern)
is logged as ``query_budget_exceeded``, and ``stop`` fails the run naming each such route with
its count and budget (``query_budget_violations``). Coverage is measured inside the server when
the harness itself runs under coverage (``[run] patch = subprocess`` in pyproject.toml);
``stop`` sends SIGTERM so the server shuts down cleanly and saves its data. The server's log
stays readable after ``stop`` (a failure's message quotes its tail) until the process that
launched it exits, which removes its temporary folder.

``RemoteBackend`` is the same interface for a deployment given with ``--target URL``.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import httpx

from qa import services
from qa.fake_openai import shared_fake
from qa.loopback_guard import LOG_ENV, read_violations

REPO_ROOT = Path(__file__).resolve().parent.parent
FLAVOURS = ("sqlite", "postgresql")
ADMIN_EMAIL = "admin@renum.test"
TARGET_EMAIL_ENV = "RENUM_QA_ADMIN_EMAIL"
TARGET_PASSWORD_ENV = "RENUM_QA_ADMIN_PASSWORD"


class BackendFailed(RuntimeError):
    """The backend did not start or stop as expected; the message carries its log's tail."""


QUERY_BUDGET_EVENT = "query_budget_exceeded"
# Every launched backend's working directory (its SQLite file, log and refused destinations):
# kept while the process that launched it runs (tests read the log after a stop), removed when
# it exits, so that runs leave nothing behind in the temporary directory.
_WORKDIRS: list[Path] = []


def remove_workdirs() -> None:
    """Remove the working directories of the backends this process launched."""
    for workdir in _WORKDIRS:
        shutil.rmtree(workdir, ignore_errors=True)
    _WORKDIRS.clear()


atexit.register(remove_workdirs)


def query_budget_violations(log_text: str) -> list[str]:
    """The routes a server's log shows over their query budget, one line each with the highest
    count seen, the budget and how many requests went over (``query_budget_exceeded`` events,
    JSON lines); a line naming the event that is not JSON is quoted as it is, so that a log in
    another format can never pass unnoticed."""
    worst: dict[str, tuple[int, int, int]] = {}  # route -> (highest count, budget, requests)
    unparsed: list[str] = []
    for line in log_text.splitlines():
        if QUERY_BUDGET_EVENT not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            unparsed.append(line.strip()[:300])
            continue
        if entry.get("event") != QUERY_BUDGET_EVENT:
            continue
        route = str(entry.get("route"))
        count, budget = _number(entry.get("count")), _number(entry.get("budget"))
        highest, _, requests = worst.get(route, (-1, budget, 0))
        worst[route] = (max(highest, count), budget, requests + 1)
    found = [
        f"{route}: {count} queries (budget {budget}; {requests} request"
        f"{'' if requests == 1 else 's'} over)"
        for route, (count, budget, requests) in sorted(worst.items())
    ]
    return found + unparsed


def _number(value: object) -> int:
    """A count or budget read from a log line (-1 when it is not a number)."""
    if isinstance(value, int | float):
        return int(value)
    return int(value) if isinstance(value, str) and value.isdigit() else -1


# How many ports a server is started on before its failure to bind one counts.
BIND_ATTEMPTS = 5


# The intrusion detection's thresholds and rate limits raised for the suites that send bursts
# on purpose (the contract tests' fuzzing: unknown emails, random ids, wrong tokens by the
# thousand; the load test's users): what they test is not the throttling, which has its own
# tests (suites/integration/test_security_throttle.py). Other suites keep the defaults.
# Password hashes as cheap as Argon2id allows (1 MiB, one pass, one lane: about a millisecond
# instead of a fifth of a second of processor time): the suites create and log in thousands
# of users, and nothing they check depends on a hash's cost. The timing equaliser uses the same
# cost, so unknown and known emails still answer alike. The load sessions launch with the
# defaults (``qa.load.runner.LAUNCH_ENV``): their figures are the build's own.
TEST_HASHING_ENV = {
    "RENUM_AUTH__PASSWORD_HASH__MEMORY_KIB": "1024",
    "RENUM_AUTH__PASSWORD_HASH__TIME_COST": "1",
    "RENUM_AUTH__PASSWORD_HASH__PARALLELISM": "1",
}


def default_hashing_env() -> dict[str, str]:
    """The settings that give password hashes their default cost (undoing
    ``TEST_HASHING_ENV``)."""
    from app.core.config import PasswordHashSettings

    cost = PasswordHashSettings().model_dump()
    return {
        f"RENUM_AUTH__PASSWORD_HASH__{name.upper()}": str(value) for name, value in cost.items()
    }


BURSTS_ENV = {
    "RENUM_SECURITY__THROTTLE__BRUTE_FORCE__THRESHOLD": "100000",
    "RENUM_SECURITY__THROTTLE__STUFFING__THRESHOLD": "100000",
    "RENUM_SECURITY__THROTTLE__ENUMERATION__THRESHOLD": "100000",
    "RENUM_SECURITY__THROTTLE__DISTRIBUTED__THRESHOLD": "100000",
    "RENUM_SECURITY__THROTTLE__BAD_TOKENS__THRESHOLD": "100000",
    "RENUM_SECURITY__THROTTLE__ID_PROBING__THRESHOLD": "100000",
    "RENUM_SECURITY__THROTTLE__LIMITS__ACCOUNT__PER_SECOND": "100000",
    "RENUM_SECURITY__THROTTLE__LIMITS__ACCOUNT__BURST": "1000000",
    "RENUM_SECURITY__THROTTLE__LIMITS__API_KEY__PER_SECOND": "100000",
    "RENUM_SECURITY__THROTTLE__LIMITS__API_KEY__BURST": "1000000",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Backend:
    """What a test needs to know about a backend, launched or remote."""

    base_url: str
    admin_email: str
    admin_password: str
    flavour: str
    log_path: Path | None = None

    @property
    def launched(self) -> bool:
        return self.log_path is not None

    def log_text(self) -> str:
        if self.log_path is None:
            raise BackendFailed("a remote backend's log is not available to the harness")
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@dataclass
class LaunchedBackend(Backend):
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    database_name: str | None = None
    # What "started" means: ready (the default), or only live for a backend expected to
    # start degraded.
    wait_for: ClassVar[str] = "ready"
    # The application factory uvicorn serves (a subclass may serve the app with additions).
    app_factory: ClassVar[str] = "app.main:create_app"

    @classmethod
    def start(
        cls,
        flavour: str = "sqlite",
        *,
        extra_env: dict[str, str] | None = None,
        ready_timeout: float = 60.0,
        database_url: str | None = None,
        bursts: bool = False,
    ) -> LaunchedBackend:
        """A backend on a new database of ``flavour`` (a file, or a database on the shared
        PostgreSQL server dropped when the backend stops), or on ``database_url``, a database
        the caller made and keeps (a drill's own cluster: nothing touches the shared one).
        ``bursts``: for a suite that sends bursts on purpose, the throttling's thresholds
        raised (``BURSTS_ENV``; ``extra_env`` still wins)."""
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown database flavour {flavour!r}; choose from {FLAVOURS}")
        workdir = Path(tempfile.mkdtemp(prefix=f"renum-{flavour}-"))
        _WORKDIRS.append(workdir)
        database_name = None
        if database_url is None and flavour == "sqlite":
            database_url = f"sqlite+aiosqlite:///{workdir / 'renum.db'}"
        elif database_url is None:
            database_name = f"renum_qa_{uuid.uuid4().hex[:12]}"
            database_url = services.create_postgres_database(database_name)
        password = secrets.token_urlsafe(16)
        fake = shared_fake()
        env = {
            **os.environ,
            "RENUM_ENVIRONMENT": "test",
            "RENUM_SECRET_KEY": secrets.token_urlsafe(48),
            "RENUM_ENCRYPTION_KEYS": f"qa:{base64.b64encode(secrets.token_bytes(32)).decode()}",
            "RENUM_DATABASE__URL": database_url,
            "RENUM_BOOTSTRAP_ADMIN_EMAIL": ADMIN_EMAIL,
            "RENUM_BOOTSTRAP_ADMIN_PASSWORD": password,
            "RENUM_LOG_FORMAT": "json",
            "RENUM_PROVIDERS__OPENAI_BASE_URL": fake.base_url,
            "RENUM_EGRESS__ALLOW": f"{fake.host}:{fake.port}",
            LOG_ENV: str(workdir / "network-violations.jsonl"),
            # The webhook dispatcher off: tests that create webhooks to example hosts must not
            # make the backend resolve them; the webhook tests switch it on.
            "RENUM_DELIVERIES__ENABLED": "false",
            **TEST_HASHING_ENV,
            **(BURSTS_ENV if bursts else {}),
            **(extra_env or {}),
        }
        if env["RENUM_ENVIRONMENT"] in ("staging", "production"):
            # Those refuse cheap hashes (rule password-hash-weak): the default cost, unless
            # the caller chose one.
            env.update(
                {k: v for k, v in default_hashing_env().items() if k not in (extra_env or {})}
            )
        backend = cls(
            base_url="",
            admin_email=env["RENUM_BOOTSTRAP_ADMIN_EMAIL"] or ADMIN_EMAIL,
            admin_password=env["RENUM_BOOTSTRAP_ADMIN_PASSWORD"] or password,
            flavour=flavour,
            log_path=workdir / "server.log",
            env=env,
            workdir=workdir,
            database_name=database_name,
        )
        backend._launch(ready_timeout)
        return backend

    def _launch(self, ready_timeout: float) -> None:
        """Spawn the server on a free port and wait until it is started. A port found free
        can be taken before the server binds it (the kernel hands the same range out as the
        local ports of outgoing connections): a server that failed to bind is started again
        on another port."""
        assert self.log_path is not None
        for attempt in range(1, BIND_ATTEMPTS + 1):
            start = self.log_path.stat().st_size if self.log_path.exists() else 0
            port = free_port()
            self.base_url = f"http://127.0.0.1:{port}"
            self._spawn(port)
            try:
                self.wait_ready(ready_timeout)
                return
            except BackendFailed:
                if attempt == BIND_ATTEMPTS or not self._failed_to_bind(start):
                    raise

    def _failed_to_bind(self, log_offset: int) -> bool:
        """Whether the process just ended said its address was in use (in its log after
        ``log_offset``)."""
        assert self.log_path is not None
        assert self.process is not None
        if self.process.poll() is None:
            return False
        with self.log_path.open("rb") as log:
            log.seek(log_offset)
            return b"address already in use" in log.read()

    def _spawn(self, port: int) -> None:
        assert self.log_path is not None
        command = [
            sys.executable,
            "-m",
            "qa.loopback_guard",
            "uvicorn",
            self.app_factory,
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "info",
            # The stdlib event loop: uvloop's sockets bypass Python's audit hooks, which the
            # loopback guard needs to see every connection and lookup.
            "--loop",
            "asyncio",
            "--no-proxy-headers",  # as `renum serve`: the app reads X-Forwarded-For itself
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def readiness_url(self) -> str:
        """The probe that says the backend started; with the health capability switched off,
        the schema, served once the lifespan's start-up has finished."""
        if self.env.get("RENUM_HEALTH__ENABLED", "true").lower() in ("false", "0"):
            return f"{self.base_url}/openapi.json"
        return f"{self.base_url}/health/{self.wait_for}"

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendFailed(
                    f"the backend exited with code {self.process.returncode} during start-up; "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            try:
                if httpx.get(self.readiness_url(), timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise BackendFailed(
            f"the backend was not {self.wait_for} within {timeout:.0f}s; log {self.log_path}:\n"
            f"{self._log_tail()}"
        )

    @property
    def sqlite_file(self) -> Path:
        """The file of the backend's SQLite database."""
        url = self.env["RENUM_DATABASE__URL"]
        if not url.startswith("sqlite+aiosqlite:///"):
            raise ValueError(f"the backend's database is not an SQLite file: {url}")
        return Path(url.removeprefix("sqlite+aiosqlite:///"))

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: nothing is shut down cleanly."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def respawn(self, extra_env: dict[str, str] | None = None, ready_timeout: float = 60.0) -> None:
        """Start a new server process on the same database (after ``kill`` or ``stop``)."""
        if self.process is not None and self.process.poll() is None:
            raise BackendFailed("the backend is still running; stop or kill it first")
        self.env.update(extra_env or {})
        self._launch(ready_timeout)

    def network_violations(self) -> list[str]:
        """Destinations outside loopback the server tried to reach (refused by the guard)."""
        path = self.env.get(LOG_ENV)
        return read_violations(path) if path else []

    def query_budget_violations(self) -> list[str]:
        """The routes over their query budget in the server's log (``query_budget_violations``)."""
        if self.log_path is None or not self.log_path.exists():
            return []
        return query_budget_violations(self.log_text())

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop the server with SIGTERM (clean shutdown, coverage saved) and drop its database;
        fail when it tried to reach anything outside loopback, or when a request went over its
        route's query budget (``query_budget_violations``)."""
        code = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
        elif self.process is not None:
            code = self.process.returncode
        if self.database_name is not None:
            services.drop_postgres_database(self.database_name)
            self.database_name = None
        problems = []
        violations = self.network_violations()
        if violations:
            problems.append(
                "the backend tried to reach outside loopback (refused): "
                + "; ".join(sorted(set(violations)))
            )
        over_budget = self.query_budget_violations()
        if over_budget:
            problems.append(
                "requests went over their route's query budget (an N+1 pattern? see "
                "RENUM_DATABASE_MANAGER__QUERY_BUDGETS):"
                + "".join(f"\n  {line}" for line in over_budget)
            )
        if problems:
            raise BackendFailed("\n".join(problems))
        return code


def remote_backend(url: str) -> Backend:
    """A deployed backend; the admin's credentials come from the environment."""
    email = os.environ.get(TARGET_EMAIL_ENV)
    password = os.environ.get(TARGET_PASSWORD_ENV)
    if not email or not password:
        raise BackendFailed(
            f"--target needs the admin's credentials in {TARGET_EMAIL_ENV} and "
            f"{TARGET_PASSWORD_ENV}"
        )
    return Backend(
        base_url=url.rstrip("/"), admin_email=email, admin_password=password, flavour="remote"
    )
