"""Tenant webhooks over HTTP, delivered by the real backend to a receiver on loopback.

One private backend per database flavour, whose egress allowlist holds the receiver
(``qa.webhook_receiver``) besides the fake model server, and whose dispatcher retries fast.
Each test registers its own webhook on its own receiver path in an account of its own, and
waits for what the receiver records (never for a fixed time). Signatures are checked with
the receiver-side ``verify_signature`` the docs describe.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import teams_support as ts
from integration_support import assert_problem, pointers

from app.services.delivery import InvalidSignature, verify_signature
from qa.client import API, ApiClient
from qa.factories import expect
from qa.fake_openai import FakeOpenAI, Held, Reply, shared_fake
from qa.launcher import LaunchedBackend
from qa.polling import wait_until
from qa.webhook_receiver import ReceivedRequest, WebhookReceiver

WEBHOOKS = f"{API}/webhooks"
DEAD_LETTERS = f"{API}/ops/deliveries/dead"
MAX_ATTEMPTS = 3
EVENTS = [
    "execution.completed",
    "execution.failed",
    "execution.cancelled",
    "execution.budget_exceeded",
]


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as started:
        yield started


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, db_flavour: str, receiver: WebhookReceiver
) -> Iterator[ts.PrivateServer]:
    """A backend that may reach the receiver, retrying fast; tests open accounts on it."""
    if request.config.getoption("--target"):
        pytest.skip("needs a private server with its own settings; --target cannot launch one")
    fake = shared_fake()
    env = {
        "RENUM_EGRESS__ALLOW": f"{fake.host}:{fake.port},{receiver.allow_entry}",
        "RENUM_DELIVERIES__ENABLED": "true",
        "RENUM_DELIVERIES__INTERVAL_SECONDS": "0.1",
        "RENUM_DELIVERIES__BACKOFF_BASE_SECONDS": "0.05",
        "RENUM_DELIVERIES__BACKOFF_MAX_SECONDS": "0.2",
        "RENUM_DELIVERIES__MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "RENUM_DELIVERIES__TIMEOUT_SECONDS": "5",
        "RENUM_DELIVERIES__WEBHOOKS_PER_ACCOUNT": "3",
    }
    backend = LaunchedBackend.start(db_flavour, extra_env=env)
    admin = ApiClient(backend.base_url)
    try:
        admin.login(backend.admin_email, backend.admin_password)
        yield ts.PrivateServer(backend, admin)
    finally:
        admin.close()
        backend.stop()


@pytest.fixture
def account(server: ts.PrivateServer) -> Iterator[ts.Account]:
    opened = server.account()
    yield opened
    opened.close()


def new_path() -> str:
    return f"/hooks/{uuid.uuid4().hex}"


def register(
    client: ApiClient, receiver: WebhookReceiver, path: str, **fields: Any
) -> dict[str, Any]:
    body = {"url": receiver.url(path), **fields}
    return expect(client.post(WEBHOOKS, json=body), 201)


def received(receiver: WebhookReceiver, path: str, count: int = 1) -> list[ReceivedRequest]:
    return wait_until(
        lambda: (found := receiver.requests_for(path)) and len(found) >= count and found,
        timeout=20,
        what=f"{count} POST(s) to {path}",
    )


def deliveries(client: ApiClient, webhook_id: str, **params: Any) -> dict[str, Any]:
    return expect(client.get(f"{WEBHOOKS}/{webhook_id}/deliveries", params=params), 200)


def settled(client: ApiClient, webhook_id: str, status: str) -> dict[str, Any]:
    """The webhook's only delivery once it reached ``status``."""

    def look() -> dict[str, Any] | None:
        page = deliveries(client, webhook_id)
        items = page["items"]
        return items[0] if len(items) == 1 and items[0]["status"] == status else None

    found: dict[str, Any] = wait_until(look, timeout=20, what=f"a delivery {status}")
    return found


def assert_signed(request: ReceivedRequest, secret: str) -> dict[str, Any]:
    """The request verifies with ``secret`` (and not with another); its JSON body."""
    header = request.headers["renum-signature"]
    verify_signature(secret, request.body, header)
    with pytest.raises(InvalidSignature):
        verify_signature("whsec_not-the-secret", request.body, header)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["renum-delivery"]
    body: dict[str, Any] = request.json()
    assert body["id"] == request.headers["renum-delivery"]
    assert body["type"] == request.headers["renum-event"]
    return body


# -- execution events -------------------------------------------------------------------------


@pytest.mark.both_databases
def test_a_completed_execution_delivers_a_signed_webhook(
    account: ts.Account, receiver: WebhookReceiver
) -> None:
    path = new_path()
    hook = register(account.owner, receiver, path)
    assert hook["events"] == EVENTS
    assert hook["enabled"] is True
    team = ts.create_team(account.owner, [ts.echo_agent(account.owner)])
    execution = ts.run_to_end(account.owner, team, "secret prompt text")
    assert execution["status"] == "completed"

    (request,) = received(receiver, path)
    body = assert_signed(request, hook["secret"])
    assert request.headers["renum-event"] == "execution.completed"
    assert request.headers["renum-attempt"] == "1"
    assert request.headers["user-agent"].startswith("Renum-Deliveries/")
    data = body["data"]
    assert data == {
        "execution_id": execution["id"],
        "team_id": team["id"],
        "account_id": account.id,
        "status": "completed",
        "reason": "completed",
        "error": None,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": "0",
        "started_at": data["started_at"],
        "finished_at": data["finished_at"],
    }
    assert data["started_at"].endswith("Z")
    assert data["finished_at"].endswith("Z")
    assert "secret prompt text" not in request.body.decode()  # no prompt, no output

    delivery = settled(account.owner, hook["id"], "delivered")
    assert delivery["id"] == body["id"]
    assert delivery["event"] == "execution.completed"
    assert delivery["attempts"] == 1
    assert delivery["last_status_code"] == 200
    assert delivery["last_error"] is None
    assert delivery["next_attempt_at"] is None
    assert delivery["payload"] == body
    assert delivery["finished_at"] is not None


def test_failed_cancelled_and_over_budget_executions_are_delivered_to_their_subscribers(
    account: ts.Account, receiver: WebhookReceiver, fake_openai: FakeOpenAI
) -> None:
    everything_path, failed_path = new_path(), new_path()
    everything = register(account.owner, receiver, everything_path)
    only_failed = register(account.owner, receiver, failed_path, events=["execution.failed"])
    owner = account.owner

    broken = ts.create_team(owner, [ts.template_agent(owner, "{{ undefined_name }}")])
    failed = ts.run_to_end(owner, broken)
    assert failed["status"] == "failed"

    model = ts.model_agent(owner, fake_openai.base_url, timeout_seconds=30)
    model_team = ts.create_team(owner, [model])
    fake_openai.script(Held(threading.Event()))
    running = ts.start(owner, model_team, wait=None)
    wait_until(lambda: len(fake_openai.completions) == 1, what="the model call")
    cancel = owner.post(
        f"{ts.EXECUTIONS}/{running['id']}/cancel", params={"wait": 10}, json={"mode": "immediate"}
    )
    assert expect(cancel, 202)["status"] == "cancelled"

    fake_openai.script(Reply("spent", input_tokens=1000, output_tokens=1000))
    over = ts.run_to_end(owner, model_team, budget={"max_tokens": 10})
    assert (over["status"], over["status_reason"]) == ("cancelled", "budget_exceeded")

    requests = received(receiver, everything_path, 3)
    by_event = {r.headers["renum-event"]: assert_signed(r, everything["secret"]) for r in requests}
    assert set(by_event) == {"execution.failed", "execution.cancelled", "execution.budget_exceeded"}
    assert by_event["execution.failed"]["data"]["execution_id"] == failed["id"]
    assert by_event["execution.failed"]["data"]["error"]
    cancelled = by_event["execution.cancelled"]["data"]
    assert (cancelled["execution_id"], cancelled["status"]) == (running["id"], "cancelled")
    budget = by_event["execution.budget_exceeded"]["data"]
    assert budget["execution_id"] == over["id"]
    assert (budget["status"], budget["reason"]) == ("cancelled", "budget_exceeded")
    assert (budget["input_tokens"], budget["output_tokens"]) == (1000, 1000)

    # The webhook that subscribed to failures only got the failure: its log is final, since
    # deliveries are queued in the transaction that ends the execution.
    (request,) = received(receiver, failed_path)
    assert request.headers["renum-event"] == "execution.failed"
    assert deliveries(owner, only_failed["id"])["total"] == 1


def test_a_disabled_webhook_gets_no_events_but_can_be_tested(
    account: ts.Account, receiver: WebhookReceiver
) -> None:
    path = new_path()
    hook = register(account.owner, receiver, path, enabled=False)
    team = ts.create_team(account.owner, [ts.echo_agent(account.owner)])
    ts.run_to_end(account.owner, team)
    assert deliveries(account.owner, hook["id"])["total"] == 0

    queued = expect(account.owner.post(f"{WEBHOOKS}/{hook['id']}/test"), 202)
    (request,) = received(receiver, path)
    assert assert_signed(request, hook["secret"])["type"] == "webhook.test"
    assert queued["event"] == "webhook.test"


# -- retries and dead letters ------------------------------------------------------------------


@pytest.mark.both_databases
def test_a_failing_receiver_is_retried_with_the_same_delivery_until_it_answers(
    account: ts.Account, receiver: WebhookReceiver
) -> None:
    path = new_path()
    receiver.script(path, 500, 500)  # then 200
    hook = register(account.owner, receiver, path)
    expect(account.owner.post(f"{WEBHOOKS}/{hook['id']}/test"), 202)

    requests = received(receiver, path, 3)
    assert [r.status for r in requests] == [500, 500, 200]
    assert [r.headers["renum-attempt"] for r in requests] == ["1", "2", "3"]
    assert len({r.headers["renum-delivery"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1  # the same body, signed afresh each time
    for request in requests:
        assert_signed(request, hook["secret"])
    delivery = settled(account.owner, hook["id"], "delivered")
    assert delivery["attempts"] == 3
    assert (delivery["last_status_code"], delivery["last_error"]) == (200, None)


@pytest.mark.both_databases
def test_a_receiver_that_keeps_failing_ends_in_the_dead_letters_admins_see(
    server: ts.PrivateServer, account: ts.Account, receiver: WebhookReceiver
) -> None:
    path = new_path()
    receiver.always(path, 503)
    hook = register(account.owner, receiver, path)
    queued = expect(account.owner.post(f"{WEBHOOKS}/{hook['id']}/test"), 202)

    dead = settled(account.owner, hook["id"], "dead")
    assert dead["id"] == queued["id"]
    assert dead["attempts"] == MAX_ATTEMPTS
    assert (dead["last_status_code"], dead["last_error"]) == (503, "HTTP 503")
    assert len(receiver.requests_for(path)) == MAX_ATTEMPTS
    assert deliveries(account.owner, hook["id"], status="dead")["total"] == 1
    assert deliveries(account.owner, hook["id"], status="pending")["total"] == 0

    letters = expect(server.admin.get(DEAD_LETTERS, params={"limit": 200}), 200)["items"]
    letter = next(item for item in letters if item["id"] == dead["id"])
    assert letter["account_id"] == account.id
    assert letter["kind"] == "webhook"
    assert letter["destination"] == f"http://{receiver.allow_entry}"  # no path: it may hold a token
    assert letter["last_error"] == "HTTP 503"
    assert_problem(account.owner.get(DEAD_LETTERS), 403)


def test_a_destination_the_guard_refuses_when_sending_is_dead_at_once(
    account: ts.Account,
) -> None:
    # A name passes the check at registration (its addresses are not known yet); it resolves
    # to loopback on port 80, which the operator did not allow: refused before connecting.
    body = {"url": "http://localhost/hooks/refused"}
    hook = expect(account.owner.post(WEBHOOKS, json=body), 201)
    expect(account.owner.post(f"{WEBHOOKS}/{hook['id']}/test"), 202)
    dead = settled(account.owner, hook["id"], "dead")
    assert dead["attempts"] == 1
    assert dead["last_status_code"] is None
    assert dead["last_error"] == "refused by the egress policy"


# -- the API -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1/hooks",  # loopback, a port the operator did not allow
        "http://10.0.0.7/hooks",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:192.168.0.1]/hooks",
        "http://0x7f000001/hooks",
        "http://localhost:1/hooks",
    ],
)
def test_a_private_or_loopback_destination_is_refused_at_registration(
    account: ts.Account, url: str
) -> None:
    problem = assert_problem(account.owner.post(WEBHOOKS, json={"url": url}), 422)
    assert pointers(problem) == {"/body/url"}
    assert problem["errors"][0]["type"] == "egress_refused"
    assert problem["detail"].startswith("refused by the egress policy")
    assert expect(account.owner.get(WEBHOOKS), 200)["total"] == 0


def test_a_webhook_cannot_be_moved_to_a_refused_destination(
    account: ts.Account, receiver: WebhookReceiver
) -> None:
    hook = register(account.owner, receiver, new_path())
    moved = account.owner.patch(f"{WEBHOOKS}/{hook['id']}", json={"url": "http://10.1.2.3/x"})
    assert pointers(assert_problem(moved, 422)) == {"/body/url"}
    assert expect(account.owner.get(f"{WEBHOOKS}/{hook['id']}"), 200)["url"] == hook["url"]


def test_change_a_webhook(account: ts.Account, receiver: WebhookReceiver) -> None:
    hook = register(account.owner, receiver, new_path(), description="first")
    other_url = receiver.url(new_path())
    changed = expect(
        account.owner.patch(
            f"{WEBHOOKS}/{hook['id']}",
            json={"url": other_url, "events": ["execution.failed"], "enabled": False},
        ),
        200,
    )
    assert changed["url"] == other_url
    assert changed["events"] == ["execution.failed"]
    assert changed["enabled"] is False
    assert changed["description"] == "first"
    assert "secret" not in changed
    for field in ("url", "events", "enabled"):
        nulled = account.owner.patch(f"{WEBHOOKS}/{hook['id']}", json={field: None})
        assert pointers(assert_problem(nulled, 422)) == {f"/body/{field}"}
    unknown = account.owner.patch(f"{WEBHOOKS}/{hook['id']}", json={"events": ["step_started"]})
    assert_problem(unknown, 422)


def test_the_secret_is_shown_once_rotates_and_is_never_logged(
    server: ts.PrivateServer, account: ts.Account, receiver: WebhookReceiver
) -> None:
    path = new_path()
    hook = register(account.owner, receiver, path)
    first = hook["secret"]
    assert first.startswith("whsec_")
    assert len(first) >= 40
    assert "secret" not in expect(account.owner.get(f"{WEBHOOKS}/{hook['id']}"), 200)
    listed = expect(account.owner.get(WEBHOOKS), 200)["items"]
    assert [item["id"] for item in listed] == [hook["id"]]
    assert "secret" not in listed[0]

    rotated = expect(account.owner.post(f"{WEBHOOKS}/{hook['id']}/rotate-secret"), 200)
    second = rotated["secret"]
    assert second != first
    assert rotated["id"] == hook["id"]
    expect(account.owner.post(f"{WEBHOOKS}/{hook['id']}/test"), 202)
    (request,) = received(receiver, path)
    assert_signed(request, second)
    with pytest.raises(InvalidSignature):
        verify_signature(first, request.body, request.headers["renum-signature"])

    settled(account.owner, hook["id"], "delivered")
    log = server.backend.log_text()
    assert first not in log
    assert second not in log
    assert receiver.url(path) not in log  # deliveries are logged by id, not by URL


def test_the_test_action_and_the_delivery_log(
    account: ts.Account, receiver: WebhookReceiver
) -> None:
    path = new_path()
    hook = register(account.owner, receiver, path)
    queued = expect(account.owner.post(f"{WEBHOOKS}/{hook['id']}/test"), 202)
    assert queued["status"] == "pending"
    assert queued["webhook_id"] == hook["id"]
    assert queued["payload"]["type"] == "webhook.test"
    assert queued["payload"]["data"]["webhook_id"] == hook["id"]

    (request,) = received(receiver, path)
    assert assert_signed(request, hook["secret"]) == queued["payload"]
    done = wait_until(
        lambda: (
            (
                found := expect(
                    account.owner.get(f"{WEBHOOKS}/{hook['id']}/deliveries/{queued['id']}"), 200
                )
            )["status"]
            == "delivered"
            and found
        ),
        what="the test delivery delivered",
    )
    assert done["attempts"] == 1

    expect(account.owner.post(f"{WEBHOOKS}/{hook['id']}/test"), 202)
    received(receiver, path, 2)
    page = deliveries(account.owner, hook["id"], limit=1)
    assert (page["total"], page["limit"], len(page["items"])) == (2, 1, 1)
    assert page["items"][0]["id"] != queued["id"]  # newest first
    assert deliveries(account.owner, hook["id"], offset=1)["items"][0]["id"] == queued["id"]
    # The next page by cursor is the one by offset; the last page has no cursor.
    last = deliveries(account.owner, hook["id"], limit=1, cursor=page["next_cursor"])
    assert ([d["id"] for d in last["items"]], last["offset"]) == ([queued["id"]], 1)
    assert last["next_cursor"] is None
    # A cursor is a position: sent for another webhook of the account, it reads that log only.
    other_hook = register(account.owner, receiver, new_path())
    elsewhere = account.owner.get(
        f"{WEBHOOKS}/{other_hook['id']}/deliveries", params={"cursor": page["next_cursor"]}
    )
    assert expect(elsewhere, 200)["items"] == []
    missing = account.owner.get(f"{WEBHOOKS}/{hook['id']}/deliveries/{uuid.uuid4()}")
    assert_problem(missing, 404)

    expect(account.owner.delete(f"{WEBHOOKS}/{hook['id']}"), 204)
    assert_problem(account.owner.get(f"{WEBHOOKS}/{hook['id']}/deliveries"), 404)


def test_members_and_viewers_read_webhooks_only_owners_manage_them(
    account: ts.Account, receiver: WebhookReceiver
) -> None:
    hook = register(account.owner, receiver, new_path())
    url = f"{WEBHOOKS}/{hook['id']}"
    for reader in (account.member, account.viewer):
        assert expect(reader.get(url), 200)["id"] == hook["id"]
        assert expect(reader.get(WEBHOOKS), 200)["total"] == 1
        assert expect(reader.get(f"{url}/deliveries"), 200)["total"] == 0
        for method, path, body in (
            ("POST", WEBHOOKS, {"url": receiver.url(new_path())}),
            ("PATCH", url, {"enabled": False}),
            ("DELETE", url, None),
            ("POST", f"{url}/test", None),
            ("POST", f"{url}/rotate-secret", None),
        ):
            refused = assert_problem(reader.request(method, path, json=body), 403)
            assert refused["detail"] == "This operation needs the owner role or higher."


def test_another_account_cannot_see_or_touch_a_webhook(
    server: ts.PrivateServer, account: ts.Account, receiver: WebhookReceiver
) -> None:
    path = new_path()
    hook = register(account.owner, receiver, path)
    other = server.account()
    try:
        url = f"{WEBHOOKS}/{hook['id']}"
        assert expect(other.owner.get(WEBHOOKS), 200)["total"] == 0
        for method, target in (
            ("GET", url),
            ("PATCH", url),
            ("DELETE", url),
            ("POST", f"{url}/test"),
            ("POST", f"{url}/rotate-secret"),
            ("GET", f"{url}/deliveries"),
        ):
            body = {"enabled": False} if method == "PATCH" else None
            assert_problem(other.owner.request(method, target, json=body), 404)
        # Its executions never reach this account's webhook.
        team = ts.create_team(other.owner, [ts.echo_agent(other.owner)])
        ts.run_to_end(other.owner, team)
    finally:
        other.close()
    assert expect(account.owner.get(url), 200)["enabled"] is True
    assert deliveries(account.owner, hook["id"])["total"] == 0
    assert receiver.requests_for(path) == []
    # A platform admin sees every account's webhooks.
    assert expect(server.admin.get(url), 200)["id"] == hook["id"]


def test_an_account_has_a_bounded_number_of_webhooks(
    account: ts.Account, receiver: WebhookReceiver
) -> None:
    for _ in range(3):  # RENUM_DELIVERIES__WEBHOOKS_PER_ACCOUNT on this server
        register(account.owner, receiver, new_path())
    refused = account.owner.post(WEBHOOKS, json={"url": receiver.url(new_path())})
    assert "delete one first" in assert_problem(refused, 409)["detail"]


def test_test_deliveries_waiting_at_once_are_bounded(
    account: ts.Account, receiver: WebhookReceiver
) -> None:
    path = new_path()
    release = receiver.hold(path)  # the first attempts are under way until released
    hook = register(account.owner, receiver, path)
    test = f"{WEBHOOKS}/{hook['id']}/test"
    try:
        for _ in range(3):
            expect(account.owner.post(test), 202)
        refused = account.owner.post(test)
        assert "still waiting" in assert_problem(refused, 429)["detail"]
        assert int(refused.headers["retry-after"]) >= 1
        assert deliveries(account.owner, hook["id"], status="pending")["total"] == 3
    finally:
        release.set()
    received(receiver, path, 3)
    wait_until(
        lambda: deliveries(account.owner, hook["id"], status="delivered")["total"] == 3,
        what="the held deliveries delivered",
    )
    expect(account.owner.post(test), 202)  # none waiting: testing again is fine
