"""The harness against real servers: the launcher's start-up failures, the launched backend and
the API client and factories on it, and the plugin's fixtures in inner pytest sessions that
launch a backend or point ``--target`` at one. (Everything of the harness that needs no server
is in ``suites/unit/test_qa_launcher.py``, ``test_qa_plugin.py`` and ``test_polling.py``.)"""

from __future__ import annotations

import httpx
import pytest

from qa.client import API, ApiClient
from qa.factories import (
    DEFAULT_PASSWORD,
    Tenant,
    create_agent,
    create_tenant,
    create_user,
    expect,
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
)

pytest_plugins = ["pytester"]

BACKEND_TEST = """
def test_live(client):
    assert client.get("/health/live").json() == {"status": "pass"}
"""


# --- starting -------------------------------------------------------------------------------


def test_backend_that_exits_at_start_up_fails_with_its_log_tail() -> None:
    with pytest.raises(BackendFailed) as caught:
        LaunchedBackend.start("sqlite", extra_env={"RENUM_DATABASE__URL": "mysql://nope"})
    message = str(caught.value)
    assert "exited with code" in message
    assert "during start-up" in message
    assert "server.log" in message
    # The tail of the server's log says why: the settings refused the URL.
    assert "sqlite+aiosqlite:// or postgresql+asyncpg://" in message


def test_backend_not_ready_in_time_is_stopped_and_reported() -> None:
    with pytest.raises(BackendFailed, match="not ready within 0s"):
        LaunchedBackend.start("sqlite", ready_timeout=0)


# --- the launched backend, the client and the factories -------------------------------------


def test_launched_backend_describes_itself(backend: Backend, db_flavour: str) -> None:
    if not backend.launched:
        pytest.skip("a deployment is not launched by the harness")
    assert backend.flavour == db_flavour
    assert backend.admin_email == ADMIN_EMAIL
    assert backend.base_url.startswith("http://127.0.0.1:")
    assert httpx.get(f"{backend.base_url}/health/ready").json() == {"status": "pass"}
    log = backend.log_text()
    assert '"event": "startup_complete"' in log
    assert backend.admin_password not in log  # the bootstrap password is never logged


def test_login_failure_raises_assertion_error(backend: Backend) -> None:
    with ApiClient(backend.base_url) as client:
        with pytest.raises(AssertionError, match=r"login as nobody@example\.com failed: 401"):
            client.login("nobody@example.com", "wrong-password")
        assert "Authorization" not in client.headers


def test_login_success_sends_the_bearer_token(backend: Backend) -> None:
    with ApiClient(backend.base_url) as client:
        assert client.login(backend.admin_email, backend.admin_password) is client
        assert client.tokens["token_type"] == "bearer"
        assert client.headers["Authorization"] == f"Bearer {client.tokens['access_token']}"
        assert client.get(f"{API}/users/me").json()["email"] == backend.admin_email
        anonymous = client.anonymous()
        with anonymous:
            assert "Authorization" not in anonymous.headers
            assert str(anonymous.base_url) == str(client.base_url)
            assert anonymous.get(f"{API}/users/me").status_code == 401
        assert client.timeout.read == 30.0


def test_use_credential(backend: Backend) -> None:
    with ApiClient(backend.base_url) as client:
        client.use_credential("rk_not-a-real-key-0123456789")
        response = client.get(f"{API}/users/me")
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"


def test_factories_build_a_real_tenant(backend: Backend, admin_client: ApiClient) -> None:
    tenant = create_tenant(admin_client, name=unique_name("Factory"))
    assert isinstance(tenant, Tenant)
    assert tenant.name.startswith("Factory ")
    assert {tenant.owner.role, tenant.member.role, tenant.viewer.role} == {
        "owner",
        "member",
        "viewer",
    }
    with ApiClient(backend.base_url) as viewer:
        viewer.login(tenant.viewer.email, DEFAULT_PASSWORD)
        me = expect(viewer.get(f"{API}/users/me"), 200)
        assert me["account_id"] == tenant.account_id
        assert me["role"] == "viewer"
    with ApiClient(backend.base_url) as owner:
        owner.login(tenant.owner.email, DEFAULT_PASSWORD)
        extra = create_user(owner, "member", email=unique_email("extra"), full_name="Extra")
        assert expect(owner.get(f"{API}/users/{extra.id}"), 200)["full_name"] == "Extra"

        echo = create_agent(owner)
        assert (echo["provider"], echo["model"]) == ("builtin", "echo")
        assert echo["name"].startswith("agent-")
        named = create_agent(owner, "reviewer", model="template", parameters={"template": "x"})
        assert named["name"].startswith("reviewer-")
        assert named["name"] != create_agent(owner, "reviewer")["name"]
        assert (named["model"], named["parameters"]["template"]) == ("template", "x")


def test_expect_reports_the_unexpected_status(admin_client: ApiClient) -> None:
    with pytest.raises(AssertionError, match=r"GET /api/v1/users/.*: expected 200, got 404"):
        expect(admin_client.get(f"{API}/users/00000000-0000-0000-0000-000000000000"), 200)
    assert expect(admin_client.get("/health/live"), 200) == {"status": "pass"}


# --- the plugin's fixtures in inner sessions ------------------------------------------------


def test_inner_session_on_sqlite_uses_the_client_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        BACKEND_TEST
        + """

def test_admin(backend, admin_client, db_flavour):
    assert db_flavour == "sqlite"
    assert backend.launched
    me = admin_client.get("/api/v1/users/me").json()
    assert me["email"] == backend.admin_email
    assert me["role"] == "admin"
"""
    )
    result = pytester.runpytest("--db=sqlite", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_live?sqlite? PASSED*", "*test_admin?sqlite? PASSED*"])


def test_inner_session_against_a_target(
    pytester: pytest.Pytester, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--target runs the same fixtures against a deployment: here, this suite's backend."""
    monkeypatch.setenv(TARGET_EMAIL_ENV, backend.admin_email)
    monkeypatch.setenv(TARGET_PASSWORD_ENV, backend.admin_password)
    pytester.makepyfile(
        """
import pytest

def test_remote(backend, db_flavour, client):
    assert db_flavour == "remote"
    assert backend.flavour == "remote"
    assert not backend.launched
    assert client.get("/health/live").status_code == 200

def test_role_clients(admin_client, owner_client, member_client, viewer_client,
                      other_owner_client):
    roles = [c.get("/api/v1/users/me").json()["role"] for c in
             (admin_client, owner_client, member_client, viewer_client, other_owner_client)]
    assert roles == ["admin", "owner", "member", "viewer", "owner"]

def test_tenants_are_different(tenant, other_tenant, owner_client, other_owner_client):
    assert tenant.account_id != other_tenant.account_id
    mine = owner_client.get("/api/v1/users/me").json()["account_id"]
    theirs = other_owner_client.get("/api/v1/users/me").json()["account_id"]
    assert (mine, theirs) == (tenant.account_id, other_tenant.account_id)

def test_login_fixture(login, tenant):
    member = login(tenant.member.email, tenant.member.password)
    assert member.get("/api/v1/users/me").json()["email"] == tenant.member.email
"""
    )
    result = pytester.runpytest(f"--target={backend.base_url}", "--db=ignored-with-target")
    result.assert_outcomes(passed=4)


def test_backend_fixtures_can_be_requested_dynamically(
    pytester: pytest.Pytester, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``request.getfixturevalue("admin_client")`` (the usual way to parametrize a test over
    role clients) must work like naming the fixture in the signature. Today it fails with
    "fixture 'db_flavour' not found": db_flavour exists only through pytest_generate_tests,
    which sees the signature's fixtures alone."""
    monkeypatch.setenv(TARGET_EMAIL_ENV, backend.admin_email)
    monkeypatch.setenv(TARGET_PASSWORD_ENV, backend.admin_password)
    pytester.makepyfile(
        """
import pytest

@pytest.mark.parametrize("fixture", ["admin_client", "owner_client"])
def test_dynamic(request, fixture):
    assert request.getfixturevalue(fixture).get("/api/v1/users/me").status_code == 200
"""
    )
    result = pytester.runpytest(f"--target={backend.base_url}")
    result.assert_outcomes(passed=2)
