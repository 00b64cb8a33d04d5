"""Keyset (cursor) pagination of the execution list and of a webhook's delivery log: the
opaque cursor (``app.api.cursors``), the keyset query (``paginate_after``, oldest or newest
first) on a migrated SQLite database, and the list served in-process: every execution read
once, in order, at any depth; tampered, foreign and misused cursors refused with a 422 problem
before any query; offsets as before."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.api import cursors
from app.core.config import DatabaseSettings, Settings
from app.db import migrate
from app.db.database import SQLAlchemyManager
from app.main import API_PREFIX, create_app
from app.models import Account, Delivery, Execution, Team, Webhook
from app.repositories.base import Scope
from app.repositories.deliveries import DeliveryRepository
from app.repositories.executions import ExecutionRepository

pytestmark = pytest.mark.anyio

SECRET = b"cursor-unit-test-secret"
CONTEXT = "list_executions 6f1c8a8e-3f37-4a0b-9a51-93c3f1d7f0aa"
START = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
EXECUTIONS = f"{API_PREFIX}/executions"
PASSWORD = "a-long-passphrase"


# --- the cursor ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "moment",
    [
        START,
        START.replace(microsecond=999_999),
        datetime(1969, 7, 20, 20, 17, 40, 5, tzinfo=UTC),  # before the epoch
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ],
)
def test_a_cursor_names_its_position_exactly(moment: datetime) -> None:
    row_id = uuid.uuid4()
    cursor = cursors.encode((moment, row_id), SECRET, CONTEXT)
    assert len(cursor) == cursors.LENGTH <= cursors.MAX_LENGTH
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert cursors.decode(cursor, SECRET, CONTEXT) == (moment, row_id)


def test_any_change_to_a_cursor_is_refused() -> None:
    cursor = cursors.encode((START, uuid.uuid4()), SECRET, CONTEXT)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for index, char in enumerate(cursor):
        other = alphabet[(alphabet.index(char) + 1) % len(alphabet)]
        changed = cursor[:index] + other + cursor[index + 1 :]
        # Even a change to only the last character's two unused bits (the same bytes): a
        # cursor has one spelling, so one cache entry.
        with pytest.raises(cursors.InvalidCursor):
            cursors.decode(changed, SECRET, CONTEXT)


@pytest.mark.parametrize(
    ("cursor", "secret", "context"),
    [
        ("", SECRET, CONTEXT),
        ("A" * cursors.LENGTH, SECRET, CONTEXT),
        ("!" * cursors.LENGTH, SECRET, CONTEXT),
        ("é" * cursors.LENGTH, SECRET, CONTEXT),
        ("=" * cursors.LENGTH, SECRET, CONTEXT),
        (None, b"another secret key", CONTEXT),  # the server's key changed
        (None, SECRET, "list_executions *"),  # a platform admin's, sent by a tenant
        (None, SECRET, "list_webhooks 6f1c8a8e-3f37-4a0b-9a51-93c3f1d7f0aa"),  # another list
    ],
)
def test_what_is_not_this_list_s_cursor_is_refused(
    cursor: str | None, secret: bytes, context: str
) -> None:
    made = cursors.encode((START, uuid.uuid4()), SECRET, CONTEXT)
    with pytest.raises(cursors.InvalidCursor):
        cursors.decode(made if cursor is None else cursor, secret, context)
    truncated = made[:-1]
    with pytest.raises(cursors.InvalidCursor):
        cursors.decode(truncated, SECRET, CONTEXT)


# --- the keyset query ------------------------------------------------------------------------


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[SQLAlchemyManager]:
    db = SQLAlchemyManager(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'keyset.db'}"))
    await migrate.upgrade(db.engine)
    try:
        yield db
    finally:
        await db.dispose()


async def seed(session: AsyncSession, account_id: uuid.UUID, count: int) -> Team:
    """A team of ``account_id`` with ``count`` executions, three to an instant (so that the
    id decides between them), ended in turn (completed, failed)."""
    team = Team(account_id=account_id, name=f"team {uuid.uuid4().hex[:6]}", workflow_version=1)
    session.add(team)
    await session.flush()
    for n in range(count):
        session.add(
            Execution(
                account_id=account_id,
                team_id=team.id,
                workflow_version=1,
                workflow={"strategy": "sequential", "steps": []},
                prompt=f"p{n}",
                status="completed" if n % 2 else "failed",
                created_at=START + timedelta(seconds=n // 3),
            )
        )
    await session.commit()
    return team


async def account(session: AsyncSession, name: str) -> uuid.UUID:
    created = Account(name=name, name_key=name.lower())
    session.add(created)
    await session.flush()
    return created.id


async def test_keyset_pages_read_each_row_once_in_the_offset_order(
    database: SQLAlchemyManager,
) -> None:
    async with database.session() as session:
        mine, theirs = await account(session, "Mine"), await account(session, "Theirs")
        team = await seed(session, mine, 17)
        await seed(session, theirs, 9)
        repository = ExecutionRepository(session)
        scope = Scope(mine)
        everything, total, _ = await repository.page_filtered(
            scope, team_id=None, status=None, limit=200, offset=0
        )
        assert total == 17
        order = [(e.created_at, e.id) for e in everything]
        assert order == sorted(order)

        walked: list[Execution] = []
        after = None
        while True:
            rows, total, offset = await repository.page_filtered(
                scope, team_id=None, status=None, limit=4, offset=0, after=after
            )
            assert (total, offset) == (17, len(walked))
            walked += rows
            if len(walked) == total:
                break
            after = (rows[-1].created_at, rows[-1].id)
        assert [e.id for e in walked] == [e.id for e in everything]

        # Filters apply after a cursor too; the counts are the filtered list's.
        failed = [e for e in everything if e.status == "failed"]
        middle = (failed[3].created_at, failed[3].id)
        rows, total, offset = await repository.page_filtered(
            scope, team_id=team.id, status="failed", limit=2, offset=0, after=middle
        )
        assert [e.id for e in rows] == [e.id for e in failed[4:6]]
        assert (total, offset) == (len(failed), 4)

        # Past the end: nothing, and every row counted before.
        last = (everything[-1].created_at, everything[-1].id)
        rows, total, offset = await repository.page_filtered(
            scope, team_id=None, status=None, limit=4, offset=0, after=last
        )
        assert (list(rows), total, offset) == ([], 17, 17)


async def test_a_position_from_another_account_reaches_only_the_caller_s_rows(
    database: SQLAlchemyManager,
) -> None:
    async with database.session() as session:
        mine, theirs = await account(session, "Mine"), await account(session, "Theirs")
        await seed(session, mine, 6)
        await seed(session, theirs, 6)
        repository = ExecutionRepository(session)
        their_rows, _, _ = await repository.page_filtered(
            Scope(theirs), team_id=None, status=None, limit=200, offset=0
        )
        position = (their_rows[2].created_at, their_rows[2].id)
        rows, total, _ = await repository.page_filtered(
            Scope(mine), team_id=None, status=None, limit=200, offset=0, after=position
        )
        assert total == 6
        assert {e.account_id for e in rows} == {mine}


async def seed_deliveries(session: AsyncSession, account_id: uuid.UUID, count: int) -> Webhook:
    """A webhook of ``account_id`` with ``count`` deliveries, three to an instant, in turn
    delivered and dead."""
    webhook = Webhook(
        account_id=account_id,
        url="https://hooks.example/in",
        events=["execution.completed"],
        sealed_secret="sealed",
        encryption_key_id="k1",
    )
    session.add(webhook)
    await session.flush()
    for n in range(count):
        session.add(
            Delivery(
                account_id=account_id,
                webhook_id=webhook.id,
                kind="webhook",
                event="execution.completed",
                url=webhook.url,
                payload={"n": n},
                status="delivered" if n % 2 else "dead",
                next_attempt_at=START,
                created_at=START + timedelta(seconds=n // 3),
            )
        )
    await session.commit()
    return webhook


async def test_a_delivery_log_is_walked_newest_first_by_position_as_by_offset(
    database: SQLAlchemyManager,
) -> None:
    async with database.session() as session:
        mine, theirs = await account(session, "Mine"), await account(session, "Theirs")
        hook = await seed_deliveries(session, mine, 14)
        other = await seed_deliveries(session, theirs, 5)
        repository = DeliveryRepository(session)
        everything, total, _ = await repository.page_for_webhook(
            hook.id, status=None, limit=200, offset=0
        )
        order = [(d.created_at, d.id) for d in everything]
        assert (total, order) == (14, sorted(order, reverse=True))

        walked: list[Delivery] = []
        after = None
        while len(walked) < total:
            rows, total, offset = await repository.page_for_webhook(
                hook.id, status=None, limit=4, offset=0, after=after
            )
            assert (total, offset) == (14, len(walked))
            walked += rows
            after = (rows[-1].created_at, rows[-1].id)
        assert [d.id for d in walked] == [d.id for d in everything]

        dead = [d for d in everything if d.status == "dead"]
        rows, total, offset = await repository.page_for_webhook(
            hook.id, status="dead", limit=2, offset=0, after=(dead[2].created_at, dead[2].id)
        )
        assert [d.id for d in rows] == [d.id for d in dead[3:5]]
        assert (total, offset) == (len(dead), 3)

        # A position in another webhook's log reaches this webhook's rows only.
        theirs_rows, _, _ = await repository.page_for_webhook(
            other.id, status=None, limit=200, offset=0
        )
        rows, _, _ = await repository.page_for_webhook(
            hook.id, status=None, limit=200, offset=0,
            after=(theirs_rows[0].created_at, theirs_rows[0].id),
        )  # fmt: skip
        assert rows
        assert {d.webhook_id for d in rows} == {hook.id}


# --- the list, served ------------------------------------------------------------------------


def build(make_settings: Callable[..., Settings], **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "bootstrap_admin_email": "root@example.com",
        "bootstrap_admin_password": "root-password-1",
        "providers": {"openai_base_url": "http://127.0.0.1:9/v1"},
        "configuration": {"enabled": False},
    }
    return create_app(make_settings(**{**values, **overrides}))


@asynccontextmanager
async def client_of(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://keyset") as client:
            yield client


async def log_in(client: httpx.AsyncClient, email: str, password: str) -> dict[str, str]:
    response = await client.post(
        f"{API_PREFIX}/auth/token", data={"username": email, "password": password}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def tenant(client: httpx.AsyncClient, admin: dict[str, str], name: str) -> uuid.UUID:
    body = {
        "name": name,
        "owner_email": f"owner@{name.lower()}.example",
        "owner_password": PASSWORD,
    }
    response = await client.post(f"{API_PREFIX}/accounts", json=body, headers=admin)
    assert response.status_code == 201, response.text
    return uuid.UUID(response.json()["id"])


async def walk(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    """Every page of the list by cursor."""
    pages = []
    query: dict[str, Any] = dict(params)
    while True:
        response = await client.get(EXECUTIONS, params=query, headers=headers)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        if pages[-1]["next_cursor"] is None:
            return pages
        query = {**params, "cursor": pages[-1]["next_cursor"]}


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    errors = response.json()["errors"]
    assert [(e["pointer"], e["type"]) for e in errors] == [("/query/cursor", "invalid_cursor")]


@pytest.mark.parametrize("cache", [True, False])
async def test_the_list_is_read_by_cursor_and_by_offset_alike(
    make_settings: Callable[..., Settings], cache: bool
) -> None:
    app = build(make_settings, performance={"cache": {"enabled": cache}})
    async with client_of(app) as client:
        admin = await log_in(client, "root@example.com", "root-password-1")
        acme, other = await tenant(client, admin, "Acme"), await tenant(client, admin, "Other")
        async with app.state.database.session() as session:
            team = await seed(session, acme, 11)
            await seed(session, other, 4)
        owner = await log_in(client, "owner@acme.example", PASSWORD)
        other_owner = await log_in(client, "owner@other.example", PASSWORD)

        pages = await walk(client, owner, limit=4)
        assert [len(p["items"]) for p in pages] == [4, 4, 3]
        assert [(p["offset"], p["total"], p["limit"]) for p in pages] == [
            (0, 11, 4),
            (4, 11, 4),
            (8, 11, 4),
        ]
        listed = [e for p in pages for e in p["items"]]
        by_cursor = [e["id"] for e in listed]
        by_offset = [
            e["id"]
            for offset in (0, 4, 8)
            for e in (
                await client.get(EXECUTIONS, params={"limit": 4, "offset": offset}, headers=owner)
            ).json()["items"]
        ]
        assert by_cursor == by_offset
        assert len(set(by_cursor)) == 11
        # An offset page gives a cursor too: a client can switch to cursors anywhere.
        middle = (
            await client.get(EXECUTIONS, params={"limit": 3, "offset": 3}, headers=owner)
        ).json()
        rest = await client.get(
            EXECUTIONS, params={"limit": 200, "cursor": middle["next_cursor"]}, headers=owner
        )
        assert [e["id"] for e in rest.json()["items"]] == by_cursor[6:]
        assert rest.json()["next_cursor"] is None

        failed = await walk(client, owner, limit=2, status="failed", team_id=str(team.id))
        assert [e["id"] for p in failed for e in p["items"]] == [
            e["id"] for e in listed if e["status"] == "failed"
        ]

        # The admin sees every account's, with cursors of their own.
        assert sum(len(p["items"]) for p in await walk(client, admin, limit=5)) == 15

        cursor = pages[0]["next_cursor"]
        tampered = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
        assert_refused(await client.get(EXECUTIONS, params={"cursor": tampered}, headers=owner))
        assert_refused(
            await client.get(EXECUTIONS, params={"cursor": cursor, "offset": 4}, headers=owner)
        )
        # Another account's cursor (or the admin's) is no cursor of this caller's list.
        for stranger in (other_owner, admin):
            assert_refused(
                await client.get(EXECUTIONS, params={"cursor": cursor}, headers=stranger)
            )
        schema_refusal = await client.get(EXECUTIONS, params={"cursor": "no/slash"}, headers=owner)
        assert schema_refusal.status_code == 422
        # Refused only once the caller is known: nothing is said to an anonymous one.
        anonymous = await client.get(EXECUTIONS, params={"cursor": tampered})
        assert anonymous.status_code == 401


def test_every_list_paged_by_cursor_states_the_cursor_rule(
    make_settings: Callable[..., Settings],
) -> None:
    """The schema's 422 rules of each cursor-paged list name the cursor rule (the contract
    session accepts a refused cursor only where the schema states it)."""
    from app.api.deps import get_cursor_paging
    from app.api.roles import api_routes
    from app.api.server_rules import CURSOR_RULES, RULES

    def depends_on_paging(dependant: Any) -> bool:
        return dependant.call is get_cursor_paging or any(
            depends_on_paging(d) for d in dependant.dependencies
        )

    app = build(make_settings)
    paged = {r.name for r in api_routes(app.routes) if depends_on_paging(r.dependant)}
    assert paged == {"list_audit_entries", "list_executions", "list_webhook_deliveries"}
    for operation in paged:
        assert set(CURSOR_RULES) <= set(RULES.get(operation, ())), operation
