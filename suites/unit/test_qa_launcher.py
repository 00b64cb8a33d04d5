"""The harness's launcher, services and API client, without launching anything: refusals
before a process starts, stopping stubborn or exited processes, remote backends, services.

The tests that launch servers (or use the plugin's ``backend``) are in
``suites/integration/test_harness.py``.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from qa import launcher, services
from qa.factories import (
    expect,
    unique,
    unique_email,
    unique_name,
)
from qa.launcher import (
    ADMIN_EMAIL,
    TARGET_EMAIL_ENV,
    TARGET_PASSWORD_ENV,
    Backend,
    BackendFailed,
    LaunchedBackend,
    free_port,
    query_budget_violations,
    remote_backend,
)
from qa.services import Service, ServiceUnavailable

# --- free_port --------------------------------------------------------------------------


def test_free_port_can_be_bound() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


# --- starting and stopping --------------------------------------------------------------


def test_unknown_flavour_is_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="unknown database flavour 'mysql'"):
        LaunchedBackend.start("mysql")


def test_postgresql_flavour_says_how_to_start_a_missing_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed = free_port()
    monkeypatch.setenv(
        services.POSTGRES_URL_ENV, f"postgresql+asyncpg://postgres@127.0.0.1:{closed}/test"
    )
    with pytest.raises(ServiceUnavailable) as caught:
        LaunchedBackend.start("postgresql")
    assert f"127.0.0.1:{closed}" in str(caught.value)
    assert "pg_ctlcluster" in str(caught.value)


class StubbornProcess:
    """A process that ignores SIGTERM until killed (stands in for a hung server)."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        self.killed = False
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)

    def wait(self, timeout: float | None = None) -> int:
        if not self.killed:
            raise subprocess.TimeoutExpired("uvicorn", timeout or 0)
        self.returncode = -9
        return -9

    def kill(self) -> None:
        self.killed = True


def _backend(**fields: object) -> LaunchedBackend:
    values: dict[str, object] = {
        "base_url": "http://127.0.0.1:1",
        "admin_email": ADMIN_EMAIL,
        "admin_password": "pw",
        "flavour": "sqlite",
        "log_path": None,
    }
    values.update(fields)
    return LaunchedBackend(**values)  # type: ignore[arg-type]


def test_stop_kills_a_server_that_ignores_sigterm() -> None:
    import signal

    process = StubbornProcess()
    backend = _backend(process=process)
    assert backend.stop(timeout=0.01) == -9
    assert process.signals == [signal.SIGTERM]
    assert process.killed


def test_stop_of_an_exited_server_returns_its_code_and_drops_its_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dropped: list[str] = []
    monkeypatch.setattr(services, "drop_postgres_database", dropped.append)
    process = StubbornProcess()
    process.returncode = 3
    backend = _backend(process=process, database_name="renum_qa_x", flavour="postgresql")
    assert backend.stop() == 3
    assert dropped == ["renum_qa_x"]
    assert process.signals == []
    assert backend.stop() == 3
    assert dropped == ["renum_qa_x"]  # dropped once


def test_stop_without_a_process() -> None:
    assert _backend().stop() is None


def test_log_tail_without_a_log(tmp_path: Path) -> None:
    backend = _backend(log_path=tmp_path / "missing.log")
    assert backend._log_tail() == "(no log)"
    (tmp_path / "missing.log").write_text("\n".join(f"line {i}" for i in range(100)))
    tail = backend._log_tail(lines=3)
    assert tail == "line 97\nline 98\nline 99"


# --- the query budget gate --------------------------------------------------------------


def _budget_line(route: str, count: int, budget: int) -> str:
    return json.dumps(
        {
            "route": route,
            "count": count,
            "budget": budget,
            "event": "query_budget_exceeded",
            "request_id": "r1",
            "level": "warning",
            "logger": "app.database_manager",
        }
    )


def test_query_budget_violations_name_each_route_with_its_count_and_budget() -> None:
    log = "\n".join(
        [
            "INFO:     Started server process [123]",
            json.dumps({"event": "request", "path": "/api/v1/teams", "status": 200}),
            _budget_line("GET /api/v1/teams", 52, 40),
            _budget_line("GET /api/v1/teams/{team_id}", 12, 10),
            _budget_line("GET /api/v1/teams", 61, 40),
            # Another event that mentions the name (a settings dump, say) is not a violation.
            json.dumps({"event": "startup_complete", "note": "query_budget_exceeded"}),
        ]
    )
    assert query_budget_violations(log) == [
        "GET /api/v1/teams: 61 queries (budget 40; 2 requests over)",
        "GET /api/v1/teams/{team_id}: 12 queries (budget 10; 1 request over)",
    ]


def test_query_budget_violations_of_a_clean_log() -> None:
    assert query_budget_violations("") == []
    assert query_budget_violations('{"event": "request", "status": 200}\nplain text') == []


def test_query_budget_violations_quote_a_line_that_is_not_json() -> None:
    line = "2026-12-04 [warning] query_budget_exceeded budget=40 count=55 route=GET /api/v1/x"
    assert query_budget_violations(line) == [line]
    odd = json.dumps({"event": "query_budget_exceeded", "route": "GET /x", "count": "many"})
    assert query_budget_violations(odd) == ["GET /x: -1 queries (budget -1; 1 request over)"]


def test_stop_fails_naming_the_routes_over_their_query_budget(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    log_path.write_text(_budget_line("POST /api/v1/teams/{team_id}/executions", 45, 40) + "\n")
    backend = _backend(log_path=log_path)
    with pytest.raises(BackendFailed) as caught:
        backend.stop()
    message = str(caught.value)
    assert "query budget" in message
    assert "POST /api/v1/teams/{team_id}/executions: 45 queries (budget 40" in message


def test_stop_reports_loopback_violations_and_query_budgets_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_path = tmp_path / "server.log"
    log_path.write_text(_budget_line("GET /api/v1/agents", 41, 40) + "\n")
    backend = _backend(log_path=log_path)
    monkeypatch.setattr(backend, "network_violations", lambda: ["example.com:443"])
    with pytest.raises(BackendFailed) as caught:
        backend.stop()
    assert str(caught.value).splitlines() == [
        "the backend tried to reach outside loopback (refused): example.com:443",
        "requests went over their route's query budget (an N+1 pattern? see "
        "RENUM_DATABASE_MANAGER__QUERY_BUDGETS):",
        "  GET /api/v1/agents: 41 queries (budget 40; 1 request over)",
    ]


def test_stop_with_a_clean_or_missing_log(tmp_path: Path) -> None:
    assert _backend(log_path=tmp_path / "missing.log").stop() is None
    (tmp_path / "server.log").write_text('{"event": "request", "status": 200}\n')
    assert _backend(log_path=tmp_path / "server.log").stop() is None


def test_launched_backends_run_in_the_test_environment() -> None:
    """The query budget is counted in development and test only: the gate needs ``test``."""
    source = Path(launcher.__file__).read_text(encoding="utf-8")
    assert '"RENUM_ENVIRONMENT": "test"' in source


# --- a port taken before the server binds it -------------------------------------------

# A stand-in for uvicorn: serves 200 on its port, or says the address is in use and exits 3.
STUB_SERVER = """
import http.server, sys
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
try:
    server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Ok)
except OSError as error:
    print(f"{error}: address already in use" if error.errno == 98 else error, flush=True)
    sys.exit(3)
server.serve_forever()
"""


class StubServer(LaunchedBackend):
    script = STUB_SERVER
    spawned_ports: list[int]

    def _spawn(self, port: int) -> None:
        assert self.log_path is not None
        self.spawned_ports.append(port)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - this interpreter, the test's script
                [sys.executable, "-c", self.script, str(port)], stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip


def stub_backend(tmp_path: Path, script: str = STUB_SERVER) -> StubServer:
    backend = StubServer(
        base_url="", admin_email=ADMIN_EMAIL, admin_password="-", flavour="sqlite",
        log_path=tmp_path / "server.log", workdir=tmp_path,
    )  # fmt: skip
    backend.script = script
    backend.spawned_ports = []
    return backend


def test_a_server_whose_port_was_taken_starts_again_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: nothing answers there
        taken_port = taken.getsockname()[1]
        ports = iter([taken_port, taken_port])
        monkeypatch.setattr(launcher, "free_port", lambda: next(ports, None) or free_port())
        backend = stub_backend(tmp_path)
        try:
            backend._launch(ready_timeout=30)
            assert backend.spawned_ports[:2] == [taken_port, taken_port]
            assert len(backend.spawned_ports) == 3
            assert backend.base_url == f"http://127.0.0.1:{backend.spawned_ports[2]}"
            assert httpx.get(backend.readiness_url()).status_code == 200
        finally:
            backend.kill()


def test_a_port_taken_every_time_fails_after_the_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        monkeypatch.setattr(launcher, "free_port", lambda: taken.getsockname()[1])
        backend = stub_backend(tmp_path)
        with pytest.raises(BackendFailed, match="exited with code 3"):
            backend._launch(ready_timeout=30)
    assert len(backend.spawned_ports) == launcher.BIND_ATTEMPTS


def test_a_start_that_fails_otherwise_is_not_tried_again(tmp_path: Path) -> None:
    backend = stub_backend(tmp_path, script="import sys; print('no such table'); sys.exit(3)")
    with pytest.raises(BackendFailed, match="no such table"):
        backend._launch(ready_timeout=30)
    assert len(backend.spawned_ports) == 1


# --- remote backends --------------------------------------------------------------------


def test_remote_backend_needs_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TARGET_EMAIL_ENV, raising=False)
    monkeypatch.delenv(TARGET_PASSWORD_ENV, raising=False)
    with pytest.raises(BackendFailed, match=TARGET_EMAIL_ENV):
        remote_backend("https://staging.example")
    monkeypatch.setenv(TARGET_EMAIL_ENV, "ops@example.com")
    with pytest.raises(BackendFailed, match=TARGET_PASSWORD_ENV):
        remote_backend("https://staging.example")


def test_remote_backend_with_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TARGET_EMAIL_ENV, "ops@example.com")
    monkeypatch.setenv(TARGET_PASSWORD_ENV, "s3cret-pass")
    backend = remote_backend("https://staging.example/")
    assert backend == Backend(
        base_url="https://staging.example",
        admin_email="ops@example.com",
        admin_password="s3cret-pass",
        flavour="remote",
    )
    assert not backend.launched
    with pytest.raises(BackendFailed, match="log is not available"):
        backend.log_text()


# --- services ---------------------------------------------------------------------------


def test_service_require_on_a_closed_port_says_how_to_start_it() -> None:
    port = free_port()
    service = Service("Thing", f"thing://127.0.0.1:{port}/", "thing-server --start")
    with pytest.raises(ServiceUnavailable) as caught:
        service.require(timeout=0.5)
    message = str(caught.value)
    assert f"Thing is not reachable at 127.0.0.1:{port}" in message
    assert "Start it with: thing-server --start" in message


def test_service_require_on_an_open_port_returns() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert Service("Open", f"x://127.0.0.1:{port}", "-").require() is None


def test_service_address_defaults() -> None:
    assert Service("a", "redis://cache.internal", "-").address == ("cache.internal", 0)
    assert Service("b", "redis:///0", "-").address == ("127.0.0.1", 0)
    assert Service("c", "postgresql+asyncpg://u@db:6543/x", "-").address == ("db", 6543)


def test_postgres_and_redis_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(services.POSTGRES_URL_ENV, raising=False)
    monkeypatch.delenv(services.REDIS_URL_ENV, raising=False)
    postgres, redis = services.postgres(), services.redis()
    assert postgres.url == services.DEFAULT_POSTGRES_URL
    assert postgres.address == ("127.0.0.1", 5432)
    assert "pg_ctlcluster" in postgres.start_command
    assert redis.url == services.DEFAULT_REDIS_URL
    assert redis.address == ("127.0.0.1", 6379)
    assert redis.start_command.startswith("redis-server --daemonize yes")


def test_postgres_and_redis_read_their_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(services.POSTGRES_URL_ENV, "postgresql+asyncpg://qa@pg.internal:6000/t")
    monkeypatch.setenv(services.REDIS_URL_ENV, "redis://redis.internal:7000/2")
    assert services.postgres().address == ("pg.internal", 6000)
    assert services.redis().address == ("redis.internal", 7000)


def test_asyncpg_dsn_drops_the_driver() -> None:
    assert services._asyncpg_dsn("postgresql+asyncpg://u@h:5432/db") == "postgresql://u@h:5432/db"


def test_expect_returns_none_for_an_empty_body() -> None:
    request = httpx.Request("DELETE", "http://x/y")
    assert expect(httpx.Response(204, request=request), 204) is None


def test_unique_names() -> None:
    assert unique_email("p") != unique_email("p")
    assert unique_email("p").startswith("p-")
    assert unique_email().endswith("@example.com")
    assert unique_name() != unique_name()
    assert unique("agent") != unique("agent")
    assert re.fullmatch(r"agent-[0-9a-f]{8}", unique("agent"))


def test_launcher_module_paths() -> None:
    assert (launcher.REPO_ROOT / "app" / "main.py").exists()
    assert launcher.FLAVOURS == ("sqlite", "postgresql")


def test_a_launching_process_removes_its_backends_workdirs_when_it_exits() -> None:
    """A backend's working directory outlives its stop (tests read its log afterwards) but
    not the process that launched it."""
    script = (
        "import pathlib, tempfile\n"
        "from qa import launcher\n"
        "workdir = pathlib.Path(tempfile.mkdtemp(prefix='renum-sqlite-'))\n"
        "(workdir / 'server.log').write_text('started')\n"
        "launcher._WORKDIRS.append(workdir)\n"
        "print(workdir)\n"
    )
    done = subprocess.run(  # noqa: S603 - this interpreter on a fixed script
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=launcher.REPO_ROOT,
    )
    workdir = Path(done.stdout.strip())
    assert workdir.name.startswith("renum-sqlite-")
    assert not workdir.exists()
