"""The harness's pytest plugin: option parsing and fixtures, in inner pytest sessions."""

from __future__ import annotations

import pytest

from qa.launcher import TARGET_EMAIL_ENV, TARGET_PASSWORD_ENV, Backend
from qa.plugin import _flavours

BACKEND_TEST = """
def test_live(client):
    assert client.get("/health/live").json() == {"status": "pass"}
"""

PLAIN_TEST = """
def test_plain():
    assert True
"""


class StubConfig:
    def __init__(self, db: str, target: str | None = None) -> None:
        self.options = {"--db": db, "--target": target}

    def getoption(self, name: str) -> object:
        return self.options[name]


@pytest.mark.parametrize(
    ("db", "expected"),
    [
        ("sqlite", ["sqlite"]),
        ("postgresql", ["postgresql"]),
        ("sqlite,postgresql", ["sqlite", "postgresql"]),
        (" sqlite , postgresql ,", ["sqlite", "postgresql"]),
    ],
)
def test_flavours_parse_the_db_option(db: str, expected: list[str]) -> None:
    assert _flavours(StubConfig(db)) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("db", "message"),
    [
        ("bogus", "got ['bogus']"),
        ("sqlite,mysql,oracle", "got ['mysql', 'oracle']"),
        ("", "got nothing"),
        (" , ", "got nothing"),
    ],
)
def test_flavours_refuse_unknown_or_missing_databases(db: str, message: str) -> None:
    with pytest.raises(pytest.UsageError, match="--db takes sqlite, postgresql") as caught:
        _flavours(StubConfig(db))  # type: ignore[arg-type]
    assert message in str(caught.value)


def test_target_replaces_the_flavours() -> None:
    assert _flavours(StubConfig("bogus", target="https://x.example")) == ["remote"]  # type: ignore[arg-type]


@pytest.mark.parametrize("source", [BACKEND_TEST, PLAIN_TEST], ids=["backend-test", "plain-test"])
def test_bad_db_option_is_a_usage_error(pytester: pytest.Pytester, source: str) -> None:
    """A bad --db is a mistake on the command line: pytest's usage error (exit code 4, an
    "ERROR:" line), whatever tests happen to be collected; not a collection error charged to
    the first test file that uses a backend, and not silently accepted when none does."""
    pytester.makepyfile(source)
    result = pytester.runpytest("--db=bogus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines(["ERROR: --db takes sqlite, postgresql; got ['bogus']"])


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


def test_target_without_credentials_fails_the_setup(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TARGET_EMAIL_ENV, raising=False)
    monkeypatch.delenv(TARGET_PASSWORD_ENV, raising=False)
    pytester.makepyfile(BACKEND_TEST)
    result = pytester.runpytest("--target=http://127.0.0.1:9")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*--target needs the admin's credentials in {TARGET_EMAIL_ENV}*"])


def test_options_are_listed_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*Renum harness*", "*--db=DB*", "*--target=URL*"])
