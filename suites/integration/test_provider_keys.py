"""Users' provider keys over HTTP: stored once, shown masked, never returned or logged; scoped
to their owner (and the account's owners); not deletable while an agent pays with them; and
actually sent to the provider when an agent runs."""

from __future__ import annotations

from typing import Any

import pytest
import teams_support as ts
from integration_support import assert_problem, pointers

from qa.client import ApiClient
from qa.factories import Tenant, expect
from qa.fake_openai import Fail, FakeOpenAI, Reply
from qa.launcher import Backend

KEYS = ts.PROVIDER_KEYS


def listed_keys(client: ApiClient) -> tuple[dict[str, dict[str, Any]], str]:
    response = client.get(KEYS, params={"limit": 200})
    page = expect(response, 200)
    assert page["total"] <= 200
    return {k["id"]: k for k in page["items"]}, response.text


def test_create_returns_only_a_masked_key(owner_client: ApiClient, tenant: Tenant) -> None:
    secret = ts.new_secret()
    response = owner_client.post(KEYS, json={"name": "mine", "key": secret})
    created = expect(response, 201)
    assert secret not in response.text
    assert "key" not in created
    assert created["provider"] == "openai"
    assert created["user_id"] == tenant.owner.id
    masked = created["masked_key"]
    assert masked.startswith(secret[:3])
    assert masked.endswith(secret[-4:])
    assert len(masked) < len(secret) // 2, "the mask shows too much"

    keys, text = listed_keys(owner_client)
    assert secret not in text
    assert keys[created["id"]] == created


def test_the_secret_never_comes_back(owner_client: ApiClient) -> None:
    secret = ts.new_secret()
    key = ts.create_key(owner_client, secret)
    agent = ts.create_agent(
        owner_client, provider="openai", model="gpt-4o-mini", provider_key_id=key["id"]
    )
    for url in (KEYS, ts.AGENTS, f"{ts.AGENTS}/{agent['id']}"):
        response = owner_client.get(url)
        assert response.status_code == 200
        assert secret not in response.text, url
        assert secret[8:] not in response.text, url


def test_members_see_their_own_keys_owners_see_all(
    owner_client: ApiClient, member_client: ApiClient, tenant: Tenant
) -> None:
    owners = ts.create_key(owner_client, ts.new_secret())
    members = ts.create_key(member_client, ts.new_secret())
    assert members["user_id"] == tenant.member.id

    seen_by_member, _ = listed_keys(member_client)
    assert members["id"] in seen_by_member
    assert owners["id"] not in seen_by_member
    assert {k["user_id"] for k in seen_by_member.values()} == {tenant.member.id}

    seen_by_owner, _ = listed_keys(owner_client)
    assert {owners["id"], members["id"]} <= seen_by_owner.keys()

    # A member cannot delete the owner's key (it does not exist for them) ...
    assert_problem(member_client.delete(f"{KEYS}/{owners['id']}"), 404)
    # ... but an owner can delete a member's.
    expect(owner_client.delete(f"{KEYS}/{members['id']}"), 204)
    assert members["id"] not in listed_keys(member_client)[0]


def test_viewer_cannot_store_or_delete_keys(
    owner_client: ApiClient, viewer_client: ApiClient
) -> None:
    assert_problem(viewer_client.post(KEYS, json={"name": "v", "key": ts.new_secret()}), 403)
    key = ts.create_key(owner_client, ts.new_secret())
    assert_problem(viewer_client.delete(f"{KEYS}/{key['id']}"), 403)
    assert key["id"] in listed_keys(owner_client)[0]


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"name": "short", "key": "sk-1"}, "/body/key"),
        ({"name": "no key"}, "/body/key"),
        ({"key": "sk-long-enough-key"}, "/body/name"),
        ({"name": "p", "key": "sk-long-enough-key", "provider": "anthropic"}, "/body/provider"),
    ],
)
def test_invalid_keys_are_refused(
    owner_client: ApiClient, body: dict[str, Any], pointer: str
) -> None:
    response = owner_client.post(KEYS, json=body)
    assert pointer in pointers(assert_problem(response, 422))
    if "key" in body:
        assert body["key"] not in response.text, "the refused key is echoed back"


@pytest.mark.both_databases  # a key in use
def test_delete_and_delete_while_in_use(owner_client: ApiClient) -> None:
    key = ts.create_key(owner_client, ts.new_secret())
    agent = ts.create_agent(
        owner_client, provider="openai", model="gpt-4o-mini", provider_key_id=key["id"]
    )
    problem = assert_problem(owner_client.delete(f"{KEYS}/{key['id']}"), 409)
    assert "agent" in problem["detail"].lower()
    assert key["id"] in listed_keys(owner_client)[0]

    # Point the agent at no key, and the key can go.
    changed = expect(
        owner_client.patch(f"{ts.AGENTS}/{agent['id']}", json={"provider_key_id": None}), 200
    )
    assert changed["provider_key_id"] is None
    expect(owner_client.delete(f"{KEYS}/{key['id']}"), 204)
    assert key["id"] not in listed_keys(owner_client)[0]
    assert_problem(owner_client.delete(f"{KEYS}/{key['id']}"), 404)


def test_other_accounts_cannot_touch_a_key(
    owner_client: ApiClient, other_owner_client: ApiClient
) -> None:
    key = ts.create_key(owner_client, ts.new_secret())
    assert_problem(other_owner_client.delete(f"{KEYS}/{key['id']}"), 404)
    assert key["id"] not in listed_keys(other_owner_client)[0]
    assert key["id"] in listed_keys(owner_client)[0]


def test_the_key_reaches_the_provider_and_nowhere_else(
    backend: Backend, owner_client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    secret = ts.new_secret()
    key = ts.create_key(owner_client, secret)
    agent = ts.model_agent(owner_client, fake_openai.base_url, provider_key_id=key["id"])
    team = ts.create_team(owner_client, [agent])
    fake_openai.require_key(secret)
    fake_openai.script(Reply("paid by the user", input_tokens=4, output_tokens=3))

    execution = ts.run_to_end(owner_client, team, "who pays?")
    assert execution["status"] == "completed", execution
    assert execution["result"] == "paid by the user"
    [request] = fake_openai.completions
    assert request.headers["authorization"] == f"Bearer {secret}"

    # A provider that echoes the key in its error message: the failure is recorded, the key
    # is not.
    fake_openai.require_key(None)
    fake_openai.script(
        Fail(401, body={"error": {"message": f"Incorrect API key provided: {secret}"}})
    )
    failed = ts.run_to_end(owner_client, team, "again")
    assert failed["status"] == "failed"
    [step] = failed["steps"]
    assert step["status"] == "failed"
    assert "auth" in step["error"]
    for url in (
        f"{ts.EXECUTIONS}/{failed['id']}",
        f"{ts.EXECUTIONS}/{failed['id']}/events",
        f"{ts.EXECUTIONS}/{failed['id']}/steps",
    ):
        text = owner_client.get(url).text
        assert secret not in text, url

    if not backend.launched:
        pytest.skip("the server's log is only readable for a launched backend")
    log = backend.log_text()
    assert secret not in log
    assert secret[8:] not in log
