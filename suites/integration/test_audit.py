"""The audit trail over HTTP (issue 17): the security-relevant actions of real requests are
recorded with their actor, account, target, client address, request id and outcome; owners
read their account's entries and admins every entry, filtered and paged; the export is JSON
lines and is itself audited; and `renum audit verify` finds the server's trail intact, and
broken once an entry is changed in its database."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import teams_support as ts
from integration_support import FreshLogin, MakeUser, assert_problem

from qa.client import API, ApiClient
from qa.factories import Tenant, expect, unique_email
from qa.launcher import REPO_ROOT, Backend, LaunchedBackend

AUDIT = f"{API}/audit"


def entries(client: ApiClient, **params: Any) -> list[dict[str, Any]]:
    page = expect(client.get(AUDIT, params={"limit": 200, **params}), 200)
    return list(page["items"])


def wait_for(client: ApiClient, found: Any, **params: Any) -> list[dict[str, Any]]:
    """The entries ``params`` select once ``found(entries)`` holds (entries recorded after the
    answer, like admins' reads, land a moment later)."""
    deadline = time.monotonic() + 10
    while True:
        listed = entries(client, **params)
        if found(listed) or time.monotonic() > deadline:
            return listed
        time.sleep(0.05)


def test_logins_and_api_keys_are_recorded_with_who_where_and_which_request(
    owner_client: ApiClient,
    make_user: MakeUser,
    fresh_login: FreshLogin,
    backend: Backend,
    tenant: Tenant,
) -> None:
    member = make_user("member")
    with ApiClient(backend.base_url) as anonymous:
        refused = anonymous.post(
            f"{API}/auth/token", data={"username": member.email, "password": "wrong-password-1"}
        )
        assert refused.status_code == 401
        unknown = anonymous.post(
            f"{API}/auth/token",
            data={"username": unique_email("nobody"), "password": "wrong-password-1"},
        )
        assert unknown.status_code == 401
    client = fresh_login(member)
    created = client.post(f"{API}/api-keys", json={"name": "audited"})
    key = expect(created, 201)
    expect(client.delete(f"{API}/api-keys/{key['id']}"), 204)

    logins = [e for e in entries(owner_client, action="auth.login") if e["target"] == member.email]
    assert [(e["outcome"], e["details"].get("reason")) for e in logins] == [
        ("success", None),
        ("failure", "password"),
    ]  # newest first
    assert all(e["account_id"] == tenant.account_id for e in logins)
    assert logins[0]["actor_id"] == member.id
    assert logins[1]["actor_kind"] == "anonymous"
    assert logins[1]["request_id"] == refused.headers["X-Request-ID"]
    assert logins[1]["source"] == "127.0.0.1"
    # A failed login for an email nobody has belongs to no account: owners do not see it.
    assert not [e for e in logins if e["details"].get("reason") == "unknown_user"]

    by_member = entries(owner_client, actor=member.id)
    keys = [e for e in by_member if e["target"] == f"api_key:{key['id']}"]
    assert [e["action"] for e in keys] == ["api_key.revoke", "api_key.create"]
    assert keys[1]["request_id"] == created.headers["X-Request-ID"]
    assert keys[1]["details"] == {"name": "audited", "prefix": key["prefix"], "role": "member"}
    assert key["key"] not in json.dumps(by_member)  # never a secret


def test_user_and_provider_key_changes_are_recorded(
    owner_client: ApiClient, make_user: MakeUser, tenant: Tenant
) -> None:
    member = make_user("viewer")
    expect(owner_client.patch(f"{API}/users/{member.id}", json={"role": "member"}), 200)
    expect(owner_client.delete(f"{API}/users/{member.id}"), 204)
    provider_key = expect(
        owner_client.post(
            f"{API}/provider-keys",
            json={"name": "audited", "provider": "openai", "key": "sk-audit-0123456789abcdef"},
        ),
        201,
    )
    expect(owner_client.delete(f"{API}/provider-keys/{provider_key['id']}"), 204)

    about_user = [e for e in entries(owner_client) if e["target"] == f"user:{member.id}"]
    assert [e["action"] for e in about_user] == ["user.delete", "user.update", "user.create"]
    assert about_user[1]["details"] == {"role_from": "viewer", "role": "member"}
    assert about_user[0]["actor_id"] == tenant.owner.id
    about_key = [
        e for e in entries(owner_client) if e["target"] == f"provider_key:{provider_key['id']}"
    ]
    assert [e["action"] for e in about_key] == ["provider_key.delete", "provider_key.create"]
    assert "sk-audit-0123456789abcdef" not in json.dumps(about_key)


def test_owners_read_their_account_admins_everything_members_nothing(
    owner_client: ApiClient,
    other_owner_client: ApiClient,
    admin_client: ApiClient,
    member_client: ApiClient,
    tenant: Tenant,
    other_tenant: Tenant,
) -> None:
    expect(owner_client.post(f"{API}/api-keys", json={"name": "mine"}), 201)
    expect(other_owner_client.post(f"{API}/api-keys", json={"name": "theirs"}), 201)
    assert {e["account_id"] for e in entries(owner_client)} == {tenant.account_id}
    assert {e["account_id"] for e in entries(other_owner_client)} == {other_tenant.account_id}
    seen = {e["account_id"] for e in entries(admin_client, action="api_key.create")}
    assert {tenant.account_id, other_tenant.account_id} <= seen
    assert_problem(member_client.get(AUDIT), 403)
    assert_problem(member_client.get(f"{AUDIT}/export"), 403)
    assert_problem(owner_client.get(AUDIT, params={"action": "NOT AN ACTION"}), 422)


def test_pages_follow_cursors_and_time_filters(owner_client: ApiClient) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    for n in range(5):
        expect(owner_client.post(f"{API}/api-keys", json={"name": f"paged-{n}"}), 201)
    params = {"action": "api_key.create", "since": before.isoformat()}
    first = expect(owner_client.get(AUDIT, params={**params, "limit": 2}), 200)
    assert first["next_cursor"] is not None
    second = expect(
        owner_client.get(AUDIT, params={**params, "limit": 2, "cursor": first["next_cursor"]}),
        200,
    )
    names = [e["details"]["name"] for e in first["items"] + second["items"]]
    assert names == ["paged-4", "paged-3", "paged-2", "paged-1"]
    assert second["offset"] == 2
    assert entries(owner_client, **params, until=before.isoformat()) == []


def test_the_export_is_json_lines_oldest_first_and_is_audited(
    owner_client: ApiClient, tenant: Tenant
) -> None:
    expect(owner_client.post(f"{API}/api-keys", json={"name": "exported"}), 201)
    response = owner_client.get(f"{AUDIT}/export", params={"action": "api_key.create"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[-1]["details"]["name"] == "exported"
    assert [e["seq"] for e in lines] == sorted(e["seq"] for e in lines)
    assert {e["action"] for e in lines} == {"api_key.create"}
    assert {e["account_id"] for e in lines} == {tenant.account_id}
    exports = entries(owner_client, action="audit.export")
    assert exports[0]["details"]["action"] == "api_key.create"
    assert exports[0]["request_id"] == response.headers["X-Request-ID"]


def test_admin_reads_silences_and_reloads_are_recorded(
    admin_client: ApiClient, owner_client: ApiClient, tenant: Tenant
) -> None:
    team = ts.create_team(owner_client, [ts.echo_agent(owner_client)])
    got = admin_client.get(f"{API}/teams/{team['id']}")
    expect(got, 200)
    listed = admin_client.get(f"{API}/teams", params={"limit": 5})
    expect(listed, 200)

    def read_by(response: Any, client: ApiClient) -> dict[str, Any]:
        request_id = response.headers["X-Request-ID"]
        found = wait_for(
            client,
            lambda entries: any(e["request_id"] == request_id for e in entries),
            action="admin.read",
        )
        return next(e for e in found if e["request_id"] == request_id)

    # The read of the tenant's team is in the tenant's account: its owner sees it.
    read = read_by(got, owner_client)
    assert read["target"] == f"teams:{team['id']}"
    assert read["account_id"] == tenant.account_id
    assert read["details"] == {"method": "GET", "route": "/api/v1/teams/{team_id}"}
    across = read_by(listed, admin_client)
    assert across["target"] == "every account: teams"
    assert across["details"]["route"] == "/api/v1/teams"
    silence = expect(
        admin_client.post(
            f"{API}/ops/silences",
            json={"matchers": {"rule": "audit_test"}, "duration_minutes": 5, "reason": "audit"},
        ),
        201,
    )
    expect(admin_client.delete(f"{API}/ops/silences/{silence['id']}"), 204)
    expect(admin_client.post(f"{API}/ops/config/reload"), 200)
    about = [e for e in entries(admin_client) if e["target"] == f"silence:{silence['id']}"]
    assert [e["action"] for e in about] == ["silence.end", "silence.create"]
    reload = entries(admin_client, action="config.reload")[0]
    assert reload["details"]["trigger"] == "api"
    assert reload["actor_kind"] == "user"


def renum(backend: LaunchedBackend, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - this interpreter, our own module
        [sys.executable, "-m", "app", *args],
        cwd=REPO_ROOT, env=backend.env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def test_renum_audit_verify_checks_the_servers_trail_and_finds_a_changed_entry() -> None:
    backend = LaunchedBackend.start("sqlite")
    try:
        with ApiClient(backend.base_url) as client:
            client.login(backend.admin_email, backend.admin_password)
            for n in range(3):
                expect(client.post(f"{API}/api-keys", json={"name": f"verify-{n}"}), 201)
        intact = renum(backend, "audit", "verify", "--json")
        assert intact.returncode == 0, intact.stderr
        verdict = json.loads(intact.stdout)
        assert verdict["intact"]
        assert verdict["entries"] >= 4  # the admin's login and three keys
        path = backend.env["RENUM_DATABASE__URL"].split("///", 1)[1]
        with sqlite3.connect(path) as db:
            db.execute("UPDATE audit_entries SET outcome = 'failure' WHERE seq = 2")
        broken = renum(backend, "audit", "verify")
        assert broken.returncode == 1
        assert "broken at entry 2" in broken.stderr
        assert "was changed" in broken.stderr
    finally:
        backend.stop()


@pytest.mark.parametrize("flag", ["RENUM_SECURITY__AUDIT__ENABLED", "RENUM_SECURITY__ENABLED"])
def test_the_switch_records_nothing_and_removes_the_routes(flag: str) -> None:
    backend = LaunchedBackend.start("sqlite", extra_env={flag: "false"})
    try:
        with ApiClient(backend.base_url) as client:
            client.login(backend.admin_email, backend.admin_password)
            expect(client.post(f"{API}/api-keys", json={"name": "unaudited"}), 201)
            assert_problem(client.get(AUDIT), 404)
        path = backend.env["RENUM_DATABASE__URL"].split("///", 1)[1]
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT count(*) FROM audit_entries").fetchone() == (0,)
    finally:
        backend.stop()


def test_refusals_for_a_role_and_a_wrong_current_password_are_recorded(
    owner_client: ApiClient, make_user: MakeUser, fresh_login: FreshLogin
) -> None:
    viewer = make_user("viewer")
    client = fresh_login(viewer)
    refused = client.post(f"{API}/api-keys", json={"name": "not allowed"})
    assert_problem(refused, 403)
    wrong = client.post(
        f"{API}/users/me/password",
        json={"current_password": "not-the-password-1", "new_password": "a-new-password-1"},
    )
    assert_problem(wrong, 422)
    request_id = refused.headers["X-Request-ID"]
    denied = wait_for(
        owner_client,
        lambda found: any(e["request_id"] == request_id for e in found),
        action="access.denied",
    )
    entry = next(e for e in denied if e["request_id"] == request_id)
    assert (entry["actor_id"], entry["outcome"]) == (viewer.id, "denied")
    assert entry["target"] == "POST /api/v1/api-keys"
    changes = entries(owner_client, actor=viewer.id, action="user.password_change")
    assert [(e["outcome"], e["details"]["reason"]) for e in changes] == [
        ("failure", "wrong_current_password")
    ]
