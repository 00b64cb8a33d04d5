"""Sessions end when the password changes: an access token issued before a password change is
refused at once (over HTTP and on the execution WebSocket), whether the user changed it
(`POST /users/me/password`, viewers too) or an owner or admin did (`PATCH /users/{id}`);
refresh tokens are revoked too, and API keys keep working.

No session outlives the change through a race either: a login that verified the old password
while the change landed is refused, a refresh token minted before the change (which such a
login used to leave behind) is refused and its session revoked, and of concurrent refreshes of
one token only one succeeds. The login race is driven in-process, with the real services on the
launched backend's database and secret, the change made over HTTP between verification and
the login's write."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
import websockets

from app.core.config import Settings
from app.core.errors import Unauthorized
from app.core.security import TokenCodec
from app.db.database import SQLAlchemyManager
from app.models import RefreshToken
from app.services import auth as auth_module
from app.services.auth import AuthService
from qa.client import API, ApiClient
from qa.factories import Tenant, create_user, expect
from qa.launcher import Backend, LaunchedBackend

# Both databases: races between logins, refreshes and password changes are transactions.
pytestmark = pytest.mark.both_databases

ME = f"{API}/users/me"
CHANGE = f"{ME}/password"
NEW_PASSWORD = "a-new-and-longer-passphrase"


@pytest.fixture
def sessions(backend: Backend) -> Iterator[list[ApiClient]]:
    """Clients opened by a test, closed after it."""
    opened: list[ApiClient] = []
    yield opened
    for opened_client in opened:
        opened_client.close()


T = TypeVar("T")
InProcess = Callable[[Callable[[SQLAlchemyManager, TokenCodec], Awaitable[T]]], T]


@pytest.fixture
def in_process(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> InProcess[Any]:
    """``in_process(work)``: run ``work(database, codec)`` in this process, with the launched
    backend's settings (its database, its signing secret), and return its result."""
    if not isinstance(backend, LaunchedBackend):
        pytest.skip("driving the services in-process needs the backend's database and secret")
    for name, value in backend.env.items():
        if name.startswith("RENUM_"):
            monkeypatch.setenv(name, value)
    settings = Settings()  # as the backend reads them (its environment wins over .env)

    async def run(work: Callable[[SQLAlchemyManager, TokenCodec], Awaitable[Any]]) -> Any:
        database = SQLAlchemyManager(settings.database)
        try:
            return await work(database, TokenCodec(settings))
        finally:
            await database.dispose()

    return lambda work: asyncio.run(run(work))


def _login(backend: Backend, opened: list[ApiClient], email: str, password: str) -> ApiClient:
    logged_in = ApiClient(backend.base_url).login(email, password)
    opened.append(logged_in)
    return logged_in


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return dict(response.json())


def _refresh(client: ApiClient, token: str) -> httpx.Response:
    return client.post(f"{API}/auth/refresh", json={"refresh_token": token})


async def _socket_close_code(backend: Backend, execution_id: str, token: str) -> int | None:
    url = backend.base_url.replace("http://", "ws://", 1)
    async with (
        asyncio.timeout(20),
        websockets.connect(f"{url}{API}/executions/{execution_id}/ws") as socket,
    ):
        await socket.send(json.dumps({"type": "auth", "token": token}))
        try:
            async for _ in socket:
                pass
        except websockets.ConnectionClosed:
            pass
        return socket.close_code


def _an_execution(client: ApiClient) -> str:
    """An execution of a one-agent builtin team, run to its end."""
    agent = expect(
        client.post(f"{API}/agents", json={"name": "echo", "provider": "builtin", "model": "echo"}),
        201,
    )
    team = expect(client.post(f"{API}/teams", json={"name": "t", "agent_ids": [agent["id"]]}), 201)
    started = client.post(f"{API}/teams/{team['id']}/executions?wait=20", json={"prompt": "hi"})
    return str(expect(started, 202)["id"])


@pytest.mark.parametrize("role", ["member", "viewer"])
def test_users_change_their_own_password_and_every_session_ends(
    backend: Backend,
    owner_client: ApiClient,
    client: ApiClient,
    sessions: list[ApiClient],
    role: str,
) -> None:
    user = create_user(owner_client, role)
    first = _login(backend, sessions, user.email, user.password)
    second = _login(backend, sessions, user.email, user.password)
    old_tokens = [first.tokens, second.tokens]
    key = None
    if role == "member":
        key = expect(first.post(f"{API}/api-keys", json={"name": "automation"}), 201)["key"]

    response = first.post(
        CHANGE, json={"current_password": user.password, "new_password": NEW_PASSWORD}
    )
    assert response.status_code == 204, response.text
    assert response.content == b""

    for tokens in old_tokens:
        body = _problem(client.get(ME, headers=_bearer(tokens["access_token"])), 401)
        assert "log in again" in body["detail"]
        _problem(_refresh(client, tokens["refresh_token"]), 401)
    _problem(
        client.post(f"{API}/auth/token", data={"username": user.email, "password": user.password}),
        401,
    )
    renewed = _login(backend, sessions, user.email, NEW_PASSWORD)
    assert expect(renewed.get(ME), 200)["id"] == user.id
    if key is not None:  # API keys are separate credentials: still valid
        assert expect(client.get(ME, headers=_bearer(key)), 200)["id"] == user.id


def test_an_owner_or_admin_password_change_ends_the_access_tokens(
    backend: Backend,
    owner_client: ApiClient,
    admin_client: ApiClient,
    client: ApiClient,
    sessions: list[ApiClient],
) -> None:
    user = create_user(owner_client, "member")
    password = user.password
    for changer, new_password in (
        (owner_client, "owner-set-passphrase"),
        (admin_client, "admin-set-passphrase"),
    ):
        session = _login(backend, sessions, user.email, password)
        expect(session.get(ME), 200)
        expect(changer.patch(f"{API}/users/{user.id}", json={"password": new_password}), 200)
        _problem(session.get(ME), 401)
        _problem(_refresh(client, session.tokens["refresh_token"]), 401)
        password = new_password
    expect(_login(backend, sessions, user.email, password).get(ME), 200)


def test_an_old_access_token_no_longer_opens_the_execution_socket(
    backend: Backend, owner_client: ApiClient, sessions: list[ApiClient]
) -> None:
    user = create_user(owner_client, "member")
    session = _login(backend, sessions, user.email, user.password)
    execution_id = _an_execution(session)
    old = str(session.tokens["access_token"])
    assert asyncio.run(_socket_close_code(backend, execution_id, old)) == 1000
    expect(
        session.post(
            CHANGE, json={"current_password": user.password, "new_password": NEW_PASSWORD}
        ),
        204,
    )
    assert asyncio.run(_socket_close_code(backend, execution_id, old)) == 4401
    renewed = _login(backend, sessions, user.email, NEW_PASSWORD)
    new = str(renewed.tokens["access_token"])
    assert asyncio.run(_socket_close_code(backend, execution_id, new)) == 1000


def test_a_login_racing_a_password_change_gets_no_session(
    backend: Backend,
    owner_client: ApiClient,
    client: ApiClient,
    sessions: list[ApiClient],
    in_process: InProcess[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attacker logs in with the old password; while argon2 verifies it (no transaction
    open) the victim changes the password. The attacker's login must not store a session:
    such a session used to be refreshed into tokens of the new generation."""
    user = create_user(owner_client, "member")
    victim = _login(backend, sessions, user.email, user.password)
    real_verify = auth_module.verify_outside_transaction
    changed: list[int] = []

    async def verify_then_change(session: Any, password: str, stored: str | None) -> bool:
        verified = await real_verify(session, password, stored)
        body = {"current_password": user.password, "new_password": NEW_PASSWORD}
        changed.append(victim.post(CHANGE, json=body).status_code)
        return verified

    async def attacker_login(database: SQLAlchemyManager, codec: TokenCodec) -> Any:
        async with database.session() as session:
            return await AuthService(session, codec).login(user.email, user.password)

    monkeypatch.setattr(auth_module, "verify_outside_transaction", verify_then_change)
    with pytest.raises(Unauthorized):
        in_process(attacker_login)
    assert changed == [204]
    monkeypatch.setattr(auth_module, "verify_outside_transaction", real_verify)
    _problem(_refresh(client, victim.tokens["refresh_token"]), 401)
    assert expect(_login(backend, sessions, user.email, NEW_PASSWORD).get(ME), 200)["id"] == user.id


def test_a_refresh_token_minted_before_a_password_change_is_refused(
    backend: Backend,
    owner_client: ApiClient,
    client: ApiClient,
    sessions: list[ApiClient],
    in_process: InProcess[Any],
) -> None:
    """What a login racing a password change used to leave behind: an unrevoked refresh token
    of the generation before the change. Refreshing it is refused and ends its session; a
    session opened with the new password refreshes as before."""
    user = create_user(owner_client, "member")
    session = _login(backend, sessions, user.email, user.password)
    user_id = uuid.UUID(expect(session.get(ME), 200)["id"])
    body = {"current_password": user.password, "new_password": NEW_PASSWORD}
    expect(session.post(CHANGE, json=body), 204)  # generation 0 -> 1

    async def stored_with_the_old_generation(database: SQLAlchemyManager, codec: TokenCodec) -> str:
        token, claims = codec.issue(user_id, "refresh", generation=0)
        async with database.session() as db_session:
            db_session.add(
                RefreshToken(
                    id=claims.token_id,
                    user_id=user_id,
                    family_id=uuid.uuid4(),
                    created_at=claims.issued_at,
                    expires_at=claims.expires_at,
                )
            )
            await db_session.commit()
        return token

    stale = in_process(stored_with_the_old_generation)
    problem = _problem(_refresh(client, stale), 401)
    assert "log in again" in problem["detail"]
    assert "revoked" in _problem(_refresh(client, stale), 401)["detail"]  # its session ended

    renewed = _login(backend, sessions, user.email, NEW_PASSWORD)
    rotated = expect(_refresh(client, renewed.tokens["refresh_token"]), 200)
    assert expect(client.get(ME, headers=_bearer(rotated["access_token"])), 200)["id"] == user.id


def test_concurrent_refreshes_of_one_token_open_at_most_one_session(
    backend: Backend, owner_client: ApiClient, sessions: list[ApiClient]
) -> None:
    """The same refresh token presented by several requests at once (a stolen copy racing
    its owner): rotation is a conditional update, so exactly one is answered with a new pair
    and the others are refused as replays."""
    user = create_user(owner_client, "member")
    token = _login(backend, sessions, user.email, user.password).tokens["refresh_token"]

    async def at_once(count: int) -> list[int]:
        async with httpx.AsyncClient(base_url=backend.base_url, timeout=60) as http:
            responses = await asyncio.gather(
                *(
                    http.post(f"{API}/auth/refresh", json={"refresh_token": token})
                    for _ in range(count)
                )
            )
        return sorted(response.status_code for response in responses)

    assert asyncio.run(at_once(6)) == [200] + [401] * 5


CURRENT = "<the current password>"  # replaced by the user's password when sent


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        (
            {"current_password": "not-the-password", "new_password": NEW_PASSWORD},
            "/body/current_password",
        ),
        ({"current_password": CURRENT, "new_password": "short"}, "/body/new_password"),
        ({"current_password": CURRENT, "new_password": CURRENT}, "/body/new_password"),
        ({"new_password": NEW_PASSWORD}, "/body/current_password"),
        ({"current_password": CURRENT, "new_password": NEW_PASSWORD, "extra": 1}, "/body/extra"),
    ],
)
def test_a_refused_change_is_a_422_problem_and_changes_nothing(
    backend: Backend,
    owner_client: ApiClient,
    sessions: list[ApiClient],
    body: dict[str, Any],
    pointer: str,
) -> None:
    user = create_user(owner_client, "viewer")
    session = _login(backend, sessions, user.email, user.password)
    sent = {name: user.password if value == CURRENT else value for name, value in body.items()}
    problem = _problem(session.post(CHANGE, json=sent), 422)
    assert pointer in {error["pointer"] for error in problem["errors"]}
    assert user.password not in json.dumps(problem)
    expect(session.get(ME), 200)  # the session lives on
    _login(backend, sessions, user.email, user.password)  # and the password is unchanged


def test_anonymous_callers_and_api_keys_cannot_change_a_password(
    client: ApiClient, member_client: ApiClient, tenant: Tenant
) -> None:
    member = tenant.member
    body = {"current_password": member.password, "new_password": NEW_PASSWORD}
    _problem(client.post(CHANGE, json=body), 401)
    key = expect(member_client.post(f"{API}/api-keys", json={"name": "no-password"}), 201)["key"]
    problem = _problem(client.post(CHANGE, json=body, headers=_bearer(key)), 403)
    assert "API key" in problem["detail"]
    expect(member_client.get(ME), 200)  # nothing changed


def test_the_operation_is_documented(client: ApiClient) -> None:
    operation = client.get("/openapi.json").json()["paths"][CHANGE]["post"]
    assert operation["operationId"] == "change_my_password"
    assert operation["summary"]
    assert "API keys are not affected" in operation["description"]
    assert {"204", "401", "403", "422"} <= operation["responses"].keys()
    schema_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = client.get("/openapi.json").json()["components"]["schemas"][
        schema_ref.rsplit("/", 1)[-1]
    ]
    assert set(schema["required"]) == {"current_password", "new_password"}
    assert all(field.get("examples") for field in schema["properties"].values())
    assert schema["properties"]["new_password"]["minLength"] == 8
