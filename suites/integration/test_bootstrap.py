"""First start on an empty database: the admin is created from the settings, or with a generated
password printed once on stderr; a later start on the same database creates nobody.

Each test launches private servers; they run on the flavours given with ``--db``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from integration_support import assert_unauthorized

from qa.client import API, ApiClient
from qa.factories import expect
from qa.launcher import ADMIN_EMAIL, FLAVOURS, Backend
from qa.plugin import LaunchBackend

# Both databases: migrations and the first admin on an empty database of each flavour.
pytestmark = pytest.mark.both_databases

NO_PASSWORD = {"RENUM_BOOTSTRAP_ADMIN_PASSWORD": ""}
GENERATED = re.compile(r"generated password[^:\n]*:\s*(\S+)", re.IGNORECASE)


def launchable(flavour: str) -> str:
    """The flavour to launch private servers on (``--target`` runs still launch SQLite)."""
    return flavour if flavour in FLAVOURS else "sqlite"


def generated_passwords(server: Backend) -> list[str]:
    return GENERATED.findall(server.log_text())


def token_response(server: Backend, email: str, password: str) -> Any:
    with ApiClient(server.base_url) as anonymous:
        return anonymous.post(f"{API}/auth/token", data={"username": email, "password": password})


def admins(server: Backend, email: str, password: str) -> list[dict[str, Any]]:
    with ApiClient(server.base_url) as admin:
        admin.login(email, password)
        users = expect(admin.get(f"{API}/users", params={"limit": 200}), 200)
    assert users["total"] <= 200
    return [user for user in users["items"] if user["role"] == "admin"]


@pytest.mark.drill  # a long scenario: run by `nox -s drills`
def test_generated_password_then_a_second_start_creates_no_admin(
    launch_backend: LaunchBackend, db_flavour: str
) -> None:
    flavour = launchable(db_flavour)
    first = launch_backend(flavour, extra_env=NO_PASSWORD)
    printed = generated_passwords(first)
    assert len(printed) == 1, f"expected one generated password in the log:\n{first.log_text()}"
    password = printed[0]
    assert len(password) >= 16
    # Printed once: the structured log lines do not repeat it.
    assert first.log_text().count(password) == 1
    assert ADMIN_EMAIL in first.log_text()

    tokens = expect(token_response(first, ADMIN_EMAIL, password), 200)
    with ApiClient(first.base_url) as admin:
        me = expect(admin.use_credential(tokens["access_token"]).get(f"{API}/users/me"), 200)
    assert me["email"] == ADMIN_EMAIL
    assert me["role"] == "admin"
    # The password the launcher would have configured was not used.
    assert_unauthorized(token_response(first, ADMIN_EMAIL, first.admin_password))

    # Start again on the same, no longer empty, database.
    same_database = {**NO_PASSWORD, "RENUM_DATABASE__URL": first.env["RENUM_DATABASE__URL"]}
    if flavour == "sqlite":
        # A real restart: stop the first server (its SQLite file stays) and start again.
        first.stop()
        assert "shutdown_complete" in first.log_text()
    # On PostgreSQL the launcher's stop() drops the database, so the second server starts
    # beside the first one instead; for bootstrapping that is the same: a non-empty database.
    second = launch_backend(flavour, extra_env=same_database)
    assert generated_passwords(second) == [], second.log_text()
    assert "bootstrap_admin_created" not in second.log_text()
    found = admins(second, ADMIN_EMAIL, password)
    assert [admin["email"] for admin in found] == [ADMIN_EMAIL]


def test_configured_password_is_used_and_never_printed(backend: Backend) -> None:
    if not backend.launched:
        pytest.skip("the server log is only readable for a backend the harness launched")
    log = backend.log_text()
    assert generated_passwords(backend) == []
    assert backend.admin_password not in log
    expect(token_response(backend, backend.admin_email, backend.admin_password), 200)
