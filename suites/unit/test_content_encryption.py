"""Executions' content sealed at rest (issue 17), in-process on SQLite and PostgreSQL: the
sealing helpers and the policy; an execution of a listed account run by the engine leaves no
plaintext of its prompt, variables, outputs, context, messages or errors in the database while
every read path (the service the API uses, the event stream, a resumed engine) gets plaintext;
an account not listed stores plaintext, and a user's content that looks like a sealed value
stays content; a sealed value moved to another row, column or account does not open; and
`renum keys` counts, rotates and seals (the plaintext stored before an account was listed)
the content like the other sealed values."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select, text, update

from app.capabilities.security.content_keys import CONTENT_TABLES
from app.capabilities.security.keys import key_use, rotate, seal_content
from app.core.config import ContentEncryptionSettings, Settings
from app.core.crypto import CryptoError, SecretBox
from app.db import migrate
from app.db.database import SQLAlchemyManager
from app.models import (
    Account,
    Agent,
    ContextEntry,
    Execution,
    ExecutionEvent,
    ExecutionMessage,
    ExecutionStep,
    Role,
    Team,
    User,
    Webhook,
)
from app.schemas.executions import ExecutionCreate
from app.services.content import (
    EXECUTIONS,
    STEPS,
    ExecutionContent,
    SealingPolicy,
    content_aad,
)
from app.services.engine.agent_calls import AgentCaller
from app.services.engine.engine import ExecutionEngine
from app.services.events import EventHub
from app.services.executions import ExecutionService, event_stream
from app.services.principal import Principal
from app.services.providers.prices import PriceTable
from qa import services

pytestmark = pytest.mark.anyio

OLD, NEW = os.urandom(32), os.urandom(32)
SECRET = "zebra-quartz-7781"  # in the prompt; every piece of content derives from it
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TABLES = ("executions", "execution_steps", "execution_context", "execution_messages")


def box(**keys: bytes) -> SecretBox:
    return SecretBox(keys)


# -- the helpers, without a database -----------------------------------------------------------


def test_values_round_trip_and_none_stays_none() -> None:
    content = ExecutionContent(box(k1=OLD))
    ids = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    row = {"prompt": "héllo", "variables": {"a": [1, 2.5, None, "x"]}, "result": None}
    sealed = content.seal_row(
        EXECUTIONS, row, row_id=ids[0], execution_id=ids[0], account_id=ids[2]
    )
    assert sealed["prompt"].startswith("v1:k1:")
    assert "héllo" not in sealed["prompt"]
    assert isinstance(sealed["variables"], str)
    assert sealed["variables"].startswith("v1:k1:")
    assert sealed["result"] is None
    opened = content.open_row(
        EXECUTIONS, sealed, row_id=ids[0], execution_id=ids[0], account_id=ids[2]
    )
    assert opened == row


def test_a_sealed_value_opens_only_in_its_own_place() -> None:
    content = ExecutionContent(box(k1=OLD))
    row, execution, account = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    token = content.seal_text("the output", content_aad(STEPS, "output", row, execution, account))
    assert content.open_text(token, content_aad(STEPS, "output", row, execution, account))
    elsewhere = [
        content_aad(STEPS, "output", uuid.uuid4(), execution, account),  # another row
        content_aad(STEPS, "output", row, uuid.uuid4(), account),  # another execution
        content_aad(STEPS, "output", row, execution, uuid.uuid4()),  # another account
        content_aad(STEPS, "input", row, execution, account),  # another column
        content_aad(EXECUTIONS, "output", row, execution, account),  # another table
    ]
    for aad in elsewhere:
        with pytest.raises(CryptoError):
            content.open_text(token, aad)
    with pytest.raises(CryptoError):  # another deployment's keys
        ExecutionContent(box(k1=NEW)).open_text(
            token, content_aad(STEPS, "output", row, execution, account)
        )


def test_the_policy_lists_accounts_or_everyone() -> None:
    listed = uuid.uuid4()
    settings = ContentEncryptionSettings(accounts=f" {listed} ,{str(listed).upper()}")
    assert settings.accounts == [str(listed)]
    policy = SealingPolicy.from_settings(settings)
    assert policy.seals(listed)
    assert not policy.seals(uuid.uuid4())
    everyone = SealingPolicy.from_settings(ContentEncryptionSettings(accounts='["*"]'))
    assert everyone.seals(uuid.uuid4())
    assert everyone.active
    assert not SealingPolicy.from_settings(ContentEncryptionSettings()).active
    with pytest.raises(ValidationError, match="neither an account id nor"):
        ContentEncryptionSettings(accounts="acme")
    content = ExecutionContent(box(k1=OLD), policy)
    assert (content.new_key(listed), content.new_key(uuid.uuid4())) == ("k1", None)
    # Without a policy nothing is sealed, and no key is even needed to say so.
    assert ExecutionContent().new_key(listed) is None
    with pytest.raises(CryptoError):
        ExecutionContent().open_text("v1:k1:AAAA", "x")


def test_a_detached_copy_is_returned_for_sealed_rows_only() -> None:
    content = ExecutionContent(box(k1=OLD))
    account, execution = uuid.uuid4(), uuid.uuid4()
    plain = ExecutionStep(id=uuid.uuid4(), execution_id=execution, output="out")
    assert content.opened(plain, account) is plain
    step_id = uuid.uuid4()
    sealed = ExecutionStep(
        id=step_id,
        execution_id=execution,
        output=content.seal_text("out", content_aad(STEPS, "output", step_id, execution, account)),
        input=None,
        content_key_id="k1",
    )
    copy = content.opened(sealed, account)
    assert copy is not sealed
    assert (copy.output, copy.input) == ("out", None)
    assert sealed.output != "out"  # the stored row is left as it is


# -- executions run by the engine --------------------------------------------------------------


class _NoDispatch:
    def submit(self, execution_id: uuid.UUID) -> None:
        pass

    def interrupt(self, execution_id: uuid.UUID) -> None:
        pass


class Crash(Exception):
    """The process "dies" during a step (the engine leaves the execution running)."""


class _Caller(AgentCaller):
    def __init__(self, settings: Settings, secret_box: SecretBox) -> None:
        super().__init__(settings, secret_box, PriceTable.load({}), None)  # type: ignore[arg-type]
        self.crash_in: str | None = None

    async def call(self, agent: Agent, provider_key: Any, **kwargs: Any) -> Any:
        if agent.name == self.crash_in:
            self.crash_in = None
            raise Crash(agent.name)
        return await super().call(agent, provider_key, **kwargs)


@dataclass
class World:
    database: SQLAlchemyManager
    settings: Settings
    content: ExecutionContent
    caller: _Caller
    # Two accounts: the first is listed (its content sealed), the second is not.
    principals: tuple[Principal, Principal]
    teams: tuple[uuid.UUID, uuid.UUID]

    def engine(self) -> ExecutionEngine:
        return ExecutionEngine(
            self.database, self.settings.executions, self.caller, EventHub(), "p", self.content
        )

    async def start(self, n: int, prompt: str = f"prompt {SECRET}", **variables: Any) -> uuid.UUID:
        async with self.database.session() as session:
            execution = await ExecutionService(session, self.settings, self.content).create(
                self.principals[n],
                self.teams[n],
                ExecutionCreate(prompt=prompt, variables=variables),
                _NoDispatch(),  # type: ignore[arg-type]
            )
            return execution.id

    async def run(self, n: int, **variables: Any) -> uuid.UUID:
        execution_id = await self.start(n, **variables)
        await self.engine().run(execution_id, asyncio.Event())
        return execution_id

    async def read(self, n: int, execution_id: uuid.UUID) -> dict[str, Any]:
        """Everything the API returns of the execution (through the service it uses)."""
        async with self.database.session() as session:
            service = ExecutionService(session, self.settings, self.content)
            principal = self.principals[n]
            execution = await service.get(principal, execution_id)
            view = (await service.view(principal, execution_id)).model_dump(mode="json")
            context = await service.context(execution)
            messages = await service.messages(
                execution, after=0, limit=100, kind=None, agent_id=None
            )
            events = await service.events(execution, after=0, limit=100)
        streamed = []
        if view["finished_at"] is not None:  # a stream ends with its execution
            streamed = [
                event.model_dump(mode="json")
                async for event in event_stream(
                    self.database, EventHub(), execution_id, 0, 0.01, self.content
                )
                if event is not None
            ]
        return {
            "execution": {k: v for k, v in view.items() if k != "steps"},
            "steps": {s["step_key"]: (s["input"], s["output"], s["error"]) for s in view["steps"]},
            "context": [(c.key, c.version, c.value) for c in context],
            "messages": [(m.seq, m.kind, m.body) for m in messages],
            "events": [(e.seq, e.type, e.data) for e in events],
            "streamed": [(e["seq"], e["type"], e["data"]) for e in streamed],
        }

    async def raw(self, execution_id: uuid.UUID) -> str:
        """Every stored row of the execution, as the database gives it (SQL, no ORM), and
        the webhook deliveries of its end."""
        found = []
        async with self.database.engine.connect() as conn:
            deliveries = await conn.execute(text("SELECT payload FROM deliveries"))
            found += [str(row[0]) for row in deliveries if str(execution_id) in str(row[0])]
            for table in (*TABLES, "execution_events"):
                column = "id" if table == "executions" else "execution_id"
                rows = await conn.execute(
                    text(f"SELECT * FROM {table} WHERE {column} = :id"),  # noqa: S608 - ours
                    {"id": execution_id if conn.dialect.name == "postgresql" else execution_id.hex},
                )
                found += [repr(tuple(row)) for row in rows]
        assert found
        return "\n".join(found)


# a0 writes the context, messages a1 and answers with its output; a1 reads both, then fails
# quoting them (an error that echoes content); the execution's error then quotes a1's.
A0 = (
    "{{ remember('k', 'ctx ' ~ input) }}{{ send('s1', {'note': 'msg ' ~ input}) }}"
    "out {{ input }} {{ variables.v }}"
)
A1 = "{{ remember(context.k ~ ' ' ~ inbox[0].body.note, remember) }}"


async def _seed(database: SQLAlchemyManager, n: int) -> tuple[Principal, uuid.UUID]:
    async with database.session() as session:
        account = Account(name=f"acme {n}", name_key=f"acme-{n}-{uuid.uuid4().hex[:6]}")
        session.add(account)
        await session.flush()
        user = User(
            account_id=account.id, email=f"o{n}@acme.example", password_hash="x", role="owner"
        )
        agents = [
            Agent(
                account_id=account.id,
                name=f"a{i}",
                provider="builtin",
                model="template",
                parameters={"template": template},
            )
            for i, template in enumerate((A0, A1))
        ]
        session.add_all([user, *agents])
        await session.flush()
        team = Team(
            account_id=account.id,
            name="team",
            workflow_version=1,
            workflow={
                "strategy": "sequential",
                "steps": [{"id": f"s{i}", "agent_id": str(a.id)} for i, a in enumerate(agents)],
            },
        )
        session.add(team)
        await session.commit()
        return Principal(user.id, account.id, Role.owner), team.id


@contextlib.asynccontextmanager
async def _database(flavour: str, tmp_path: Path) -> AsyncIterator[tuple[str, str | None]]:
    name = None
    if flavour == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'content.db'}"
    else:
        name = f"renum_content_{uuid.uuid4().hex[:10]}"
        url = await asyncio.to_thread(services.create_postgres_database, name)
    try:
        yield url, name
    finally:
        if name is not None:
            await asyncio.to_thread(services.drop_postgres_database, name)


@pytest.fixture(params=["sqlite", "postgresql"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    async with _database(request.param, tmp_path) as (url, _):
        settings = Settings(environment="test", database={"url": url})
        database = SQLAlchemyManager(settings.database)
        try:
            await migrate.upgrade(database.engine)
            (p0, t0), (p1, t1) = [await _seed(database, n) for n in (0, 1)]
            secret_box = box(k1=OLD)
            content = ExecutionContent(secret_box, SealingPolicy(frozenset({p0.account_id})))
            caller = _Caller(settings, secret_box)
            try:
                yield World(database, settings, content, caller, (p0, p1), (t0, t1))
            finally:
                await caller.templates.close()
        finally:
            await database.dispose()


def _expected(execution_id: uuid.UUID) -> dict[str, Any]:
    """What the API must return for either account (in plaintext)."""
    return {
        "prompt": f"prompt {SECRET}",
        "variables": {"v": f"var {SECRET}"},
        "s0_output": f"out prompt {SECRET} var {SECRET}",
        "context": [("k", 1, f"ctx prompt {SECRET}")],
        "message": {"note": f"msg prompt {SECRET}"},
    }


async def test_a_listed_account_stores_no_plaintext_and_reads_the_same_as_one_not_listed(
    world: World,
) -> None:
    async with world.database.session() as session:
        for principal in world.principals:  # its deliveries wait in the database, with payloads
            session.add(
                Webhook(
                    account_id=principal.account_id,
                    url="https://hooks.example/renum",
                    events=["execution.failed"],
                    sealed_secret="v1:unused:x",  # never sent: nothing here delivers
                    encryption_key_id="unused",
                )
            )
        await session.commit()
    sealed_id = await world.run(0, v=f"var {SECRET}")
    plain_id = await world.run(1, v=f"var {SECRET}")
    sealed, plain = await world.read(0, sealed_id), await world.read(1, plain_id)

    # The API's answers are the same, in plaintext, whether sealed at rest or not.
    expected = _expected(sealed_id)
    for read in (sealed, plain):
        execution = read["execution"]
        assert (execution["prompt"], execution["variables"]) == (
            expected["prompt"],
            expected["variables"],
        )
        assert execution["status"] == "failed"
        assert SECRET in execution["error"]  # it quotes the failed step's error
        assert read["steps"]["s0"][1] == expected["s0_output"]
        assert read["steps"]["s1"][0] == expected["prompt"]  # its input (sequential)
        assert SECRET in read["steps"]["s1"][2]  # its error quotes the context value
        assert read["context"] == expected["context"]
        assert read["messages"] == [(1, "direct", expected["message"])]
        assert read["events"] == read["streamed"]
        by_type = {t: d for _, t, d in read["events"]}
        assert by_type["step_completed"]["output"] == expected["s0_output"]
        assert SECRET in by_type["step_failed"]["error"]["message"]
        assert SECRET in by_type["execution_failed"]["error"]

    def comparable(read: dict[str, Any]) -> str:
        """The answers with ids (of two accounts' own rows) and times left out."""
        execution = {
            k: v
            for k, v in read["execution"].items()
            if k not in ("created_at", "started_at", "finished_at")
        }
        return UUID_TEXT.sub("<id>", json.dumps({**read, "execution": execution}, default=str))

    assert comparable(sealed) == comparable(plain)

    # In the database: no plaintext of the listed account's content, all of the other's.
    stored = await world.raw(sealed_id)
    assert "execution.failed" in stored  # its webhook delivery, without the error's text
    assert SECRET not in stored
    assert "v1:k1:" in stored
    assert SECRET in await world.raw(plain_id)
    async with world.database.session() as session:
        for table in CONTENT_TABLES:
            model = table.model
            column = model.id if model is Execution else model.execution_id
            keys = set(
                await session.scalars(
                    select(model.content_key_id).where(column.in_([sealed_id, plain_id]))
                )
            )
            if model is ExecutionEvent:
                assert keys == {None, "k1"}  # events without content stay plaintext
            else:
                assert keys == {"k1", None}, table.name
        unsealed = await session.scalars(
            select(ExecutionEvent.type).where(
                ExecutionEvent.execution_id == sealed_id, ExecutionEvent.content_key_id.is_(None)
            )
        )
        assert set(unsealed) <= {"execution_started", "step_started", "context_updated", "message"}


async def test_a_resumed_execution_opens_what_it_had_sealed(world: World) -> None:
    """The engine reads a sealed execution back when it resumes it: its prompt, the steps
    done, the context and the messages, in plaintext (a1 fails quoting them)."""
    world.caller.crash_in = "a1"
    execution_id = await world.start(0, v=f"var {SECRET}")
    with pytest.raises(Crash):
        await world.engine().run(execution_id, asyncio.Event())
    async with world.database.session() as session:
        await session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(owner="dead", heartbeat_at=None)
        )
        await session.commit()
    await world.engine().run(execution_id, asyncio.Event())

    read = await world.read(0, execution_id)
    assert [t for _, t, _ in read["events"]].count("execution_resumed") == 1
    assert read["steps"]["s0"][1] == f"out prompt {SECRET} var {SECRET}"
    assert f"ctx prompt {SECRET} msg prompt {SECRET}" in read["steps"]["s1"][2]
    assert SECRET not in await world.raw(execution_id)


async def test_content_that_looks_sealed_is_content(world: World) -> None:
    """A user's prompt and variables shaped like sealed values stay what they are, sealed
    (listed account) or not: the row's content_key_id says what is sealed, never the value."""
    lookalike = "v1:k1:" + "A" * 40
    variables = {"$sealed": lookalike, "v": lookalike}
    for n in (0, 1):
        execution_id = await world.start(n, prompt=lookalike, **variables)
        read = await world.read(n, execution_id)
        assert (read["execution"]["prompt"], read["execution"]["variables"]) == (
            lookalike,
            variables,
        )


async def test_a_sealed_value_moved_to_another_row_or_account_does_not_open(
    world: World,
) -> None:
    first = await world.start(0)
    second = await world.start(0, prompt="another prompt")
    async with world.database.session() as session:
        stolen = await session.scalar(select(Execution.prompt).where(Execution.id == first))
        await session.execute(update(Execution).where(Execution.id == second).values(prompt=stolen))
        await session.commit()
    with pytest.raises(CryptoError):
        await world.read(0, second)
    # Moved to the other account's execution (marked sealed, as an attacker would).
    other = await world.start(1)
    async with world.database.session() as session:
        await session.execute(
            update(Execution)
            .where(Execution.id == other)
            .values(prompt=stolen, content_key_id="k1", variables="x")
        )
        await session.commit()
    with pytest.raises(CryptoError):
        await world.read(1, other)
    assert (await world.read(0, first))["execution"]["prompt"] == f"prompt {SECRET}"


async def test_rotation_and_status_cover_the_content(world: World) -> None:
    executions = [await world.run(0, v=f"var {SECRET}") for _ in range(2)]
    before = await key_use(world.database.engine, box(k2=NEW, k1=OLD))
    for table in CONTENT_TABLES:
        assert before.counts[table.name]["k1"] >= 2, table.name
    assert before.pending == sum(before.by_key().values())

    rotated = await rotate(world.database.engine, box(k2=NEW, k1=OLD), batch=3)
    assert rotated.unopened == {}
    assert rotated.changed_meanwhile == 0
    after = await key_use(world.database.engine, box(k2=NEW, k1=OLD))
    assert (after.pending, after.retirable()) == (0, ["k1"])
    assert sum(rotated.resealed[t.name] for t in CONTENT_TABLES) == sum(
        before.counts[t.name]["k1"] for t in CONTENT_TABLES
    )

    # The old key gone: everything reads as before, with the new key alone.
    world.content = ExecutionContent(box(k2=NEW), world.content.policy)
    for execution_id in executions:
        read = await world.read(0, execution_id)
        assert read["execution"]["prompt"] == f"prompt {SECRET}"
        assert read["context"] == [("k", 1, f"ctx prompt {SECRET}")]
        assert "v1:k2:" in await world.raw(execution_id)
        assert "v1:k1:" not in await world.raw(execution_id)


async def test_a_value_under_a_missing_key_is_named_and_left(world: World) -> None:
    execution_id = await world.start(0)
    rotated = await rotate(world.database.engine, box(k2=NEW))
    assert rotated.unopened["execution content: executions"] == [str(execution_id)]
    async with world.database.session() as session:
        row = await session.get(Execution, execution_id)
        assert row is not None
        assert row.content_key_id == "k1"


async def test_seal_content_seals_the_ended_executions_of_the_listed_accounts(
    world: World,
) -> None:
    """Plaintext stored before an account was listed: `renum keys seal-content` seals its
    ended executions (in batches: one row each here), leaves running ones and other
    accounts' as they are, and a second run finds nothing left."""
    ended = await world.run(1, v=f"var {SECRET}")  # account 1: not listed when it ran
    running = await world.start(1)
    other = await world.run(0, v="x")  # already sealed
    before = await world.read(1, ended)
    assert SECRET in await world.raw(ended)

    policy = SealingPolicy(frozenset({world.principals[1].account_id}))
    done: list[tuple[str, int]] = []
    result = await seal_content(
        world.database.engine,
        box(k1=OLD),
        policy,
        batch=1,
        progress=lambda table, n: done.append((table, n)),
    )
    assert result.unopened == {}
    assert result.changed_meanwhile == 0
    assert result.resealed["execution content: executions"] == 1
    assert len(done) > len(CONTENT_TABLES)  # one row per batch
    assert SECRET not in await world.raw(ended)
    assert await world.read(1, ended) == before
    async with world.database.session() as session:
        row = await session.get(Execution, running)
        assert row is not None
        assert row.content_key_id is None
        sealed_other = await session.get(Execution, other)
        assert sealed_other is not None
        assert sealed_other.content_key_id == "k1"
    again = await seal_content(world.database.engine, box(k1=OLD), policy)
    assert again.total == 0


async def test_nothing_is_sealed_without_the_policy_and_sealed_content_still_reads(
    world: World,
) -> None:
    """The switch's rollback: a process whose policy lists nobody seals nothing new and
    still opens what was sealed."""
    sealed_id = await world.run(0, v="x")
    world.content = ExecutionContent(box(k1=OLD))  # the capability off: no policy
    plain_id = await world.run(0, v="x")
    async with world.database.session() as session:
        rows = await session.execute(select(Execution.id, Execution.content_key_id))
        keys = dict(rows.tuples().all())
        entries = await session.scalars(
            select(ContextEntry.content_key_id).where(ContextEntry.execution_id == plain_id)
        )
        assert set(entries) == {None}
        messages = await session.scalars(
            select(ExecutionMessage.content_key_id).where(ExecutionMessage.execution_id == plain_id)
        )
        assert set(messages) == {None}
    assert (keys[sealed_id], keys[plain_id]) == ("k1", None)
    assert (await world.read(0, sealed_id))["execution"]["prompt"] == f"prompt {SECRET}"
