"""``renum doctor`` end to end: a real subprocess of the console script against SQLite and
PostgreSQL, its table, its JSON and its exit codes (0 pass, 1 warn, 2 fail)."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from integration_support import Cli, cli_env

from qa import services


class DoctorCli(Cli):
    """The console script, with ``renum doctor --json`` read back."""

    def doctor_json(self, **extra_env: str) -> tuple[int, dict[str, Any]]:
        result = self("doctor", "--json", **extra_env)
        return result.returncode, json.loads(result.stdout)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def database_url(db_flavour: str, tmp_path: Path) -> Iterator[str]:
    if db_flavour == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'doctor.db'}"
        return
    name = f"renum_doctor_{uuid.uuid4().hex[:12]}"
    url = services.create_postgres_database(name)
    try:
        yield url
    finally:
        services.drop_postgres_database(name)


@pytest.fixture
def cli(tmp_path: Path, database_url: str, fake_openai: Any) -> DoctorCli:
    env = cli_env(
        RENUM_ENVIRONMENT="test",
        RENUM_SECRET_KEY="doctor-test-secret-key-0123456789abcdefghijkl",
        RENUM_DATABASE__URL=database_url,
        RENUM_PROVIDERS__OPENAI_BASE_URL=fake_openai.base_url,
    )
    return DoctorCli(env=env, cwd=tmp_path)


def entries(report: dict[str, Any], check: str) -> list[dict[str, Any]]:
    return [entry for entry in report["entries"] if entry["check"] == check]


@pytest.mark.both_databases  # the database check of each flavour
def test_healthy_installation_passes_with_exit_code_0(cli: DoctorCli, db_flavour: str) -> None:
    assert cli("db", "upgrade").returncode == 0
    code, report = cli.doctor_json()
    assert code == 0, report
    assert report["status"] == "pass"
    [database] = entries(report, "database")
    assert database["component"] == db_flavour
    assert database["observed_unit"] == "ms"
    assert entries(report, "schema")[0]["status"] == "pass"
    assert entries(report, "providers")[0]["message"] == "reachable (HTTP 200)"
    assert {e["component"] for e in entries(report, "packages")} >= {"fastapi", "pydantic"}

    table = cli("doctor")
    assert table.returncode == 0
    assert "dependencies (pass)" in table.stdout
    assert "SQLite" in table.stdout or "PostgreSQL" in table.stdout


@pytest.mark.both_databases  # the database check of each flavour
def test_pending_migrations_fail_with_exit_code_2_and_the_fix(
    cli: DoctorCli, database_url: str
) -> None:
    if database_url.startswith("sqlite"):  # an empty database: doctor never creates one
        sqlite3.connect(database_url.split("///", 1)[1]).close()
    code, report = cli.doctor_json()
    assert code == 2
    assert report["status"] == "fail"
    [schema] = entries(report, "schema")
    assert schema["status"] == "fail"
    assert schema["fix"] == "renum db upgrade"
    table = cli("doctor")
    assert table.returncode == 2
    assert "fix: renum db upgrade" in table.stdout


def test_unreachable_optional_redis_warns_with_exit_code_1(cli: DoctorCli) -> None:
    assert cli("db", "upgrade").returncode == 0
    code, report = cli.doctor_json(RENUM_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    assert code == 1
    assert report["status"] == "warn"
    [redis] = entries(report, "redis")
    assert (redis["status"], redis["critical"]) == ("fail", False)
    assert redis["affected_endpoints"]


class _WebPage(BaseHTTPRequestHandler):
    """A web site, not an API: every path answers an HTML page."""

    def do_GET(self) -> None:
        body = b"<!doctype html><html><body>Welcome</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web_page() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WebPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_provider_answering_html_is_a_clear_entry_and_a_warning(
    cli: DoctorCli, web_page: str
) -> None:
    assert cli("db", "upgrade").returncode == 0
    code, report = cli.doctor_json(RENUM_PROVIDERS__OPENAI_BASE_URL=web_page)
    assert code == 1
    [provider] = entries(report, "providers")
    assert provider["status"] == "fail"
    assert "answered HTML (HTTP 200), not an OpenAI-compatible API" in provider["message"]
    assert "/v1" in provider["fix"]


@pytest.mark.both_databases  # the database check of each flavour
def test_unreachable_database_fails_without_showing_its_password(cli: DoctorCli) -> None:
    url = f"postgresql+asyncpg://renum:s3cret-pass@127.0.0.1:{closed_port()}/renum"
    result = cli("doctor", "--json", RENUM_DATABASE__URL=url)
    assert result.returncode == 2
    assert "s3cret-pass" not in result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert entries(report, "database")[0]["message"].startswith("cannot connect to ")


def test_invalid_configuration_exits_2_with_the_variable(cli: DoctorCli) -> None:
    result = cli("doctor", RENUM_HEALTH__PROBE_TOKEN="short")
    assert result.returncode == 2
    assert "RENUM_HEALTH__PROBE_TOKEN" in result.stderr


def test_a_missing_sqlite_file_is_named_and_never_created(cli: DoctorCli, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    looking = DoctorCli(env=cli.env, cwd=elsewhere)
    for url, missing in (
        ("sqlite+aiosqlite:///./renum.db", elsewhere / "renum.db"),
        ("sqlite+aiosqlite:///./data/renum.db", elsewhere / "data" / "renum.db"),
    ):
        code, report = looking.doctor_json(RENUM_DATABASE__URL=url)
        assert code == 2
        [database] = entries(report, "database")
        assert database["message"].startswith(f"no SQLite database at {missing} ")
        assert "nothing was created" in database["message"]
        assert "absolute path" in database["fix"]
    assert list(elsewhere.iterdir()) == [], "looking created a database or its directory"


def test_documentation_links_point_at_the_docs_site(cli: DoctorCli) -> None:
    _, report = cli.doctor_json()
    [schema] = entries(report, "schema")
    assert schema["docs"] == "http://127.0.0.1:8001/troubleshooting/#schema"

    _, report = cli.doctor_json(RENUM_DOCS__SITE_URL="https://docs.example.org/renum")
    [schema] = entries(report, "schema")
    assert schema["docs"] == "https://docs.example.org/renum/troubleshooting/#schema"
    table = cli("doctor", RENUM_DOCS__SITE_URL="https://docs.example.org/renum")
    assert "docs: https://docs.example.org/renum/troubleshooting/#schema" in table.stdout
