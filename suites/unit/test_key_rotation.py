"""Rotation of the keys that seal stored secrets (issue 17), on migrated SQLite and PostgreSQL
databases: which values each key seals, a rotation in batches that an interruption does not
spoil and a second run finishes, every value opening afterwards with the new key alone (bound
to its row as before), a value changed meanwhile left as the change made it, a value under a
key no longer configured left untouched and named, and the `renum keys` commands' exit
codes."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.capabilities.security import keys as keys_module
from app.capabilities.security.content_keys import CONTENT_TABLES
from app.capabilities.security.keys import SEALED_COLUMNS, key_use, rotate
from app.cli import cli
from app.core.config import DatabaseSettings
from app.core.crypto import CryptoError, SecretBox
from app.db import migrate
from app.db.database import SQLAlchemyManager
from app.models import Account, Delivery, ProviderKey, User, Webhook
from app.services.delivery import delivery_secret_aad, webhook_secret_aad
from app.services.provider_keys import provider_key_aad
from suites.unit.conftest import MakeSettings

pytestmark = pytest.mark.anyio

OLD, NEW = os.urandom(32), os.urandom(32)
# Executions' content sealed at rest (its own tests: test_content_encryption): none here.
NO_CONTENT = {table.name: 0 for table in CONTENT_TABLES}
runner = CliRunner()


def box(**keys: bytes) -> SecretBox:
    return SecretBox(keys)


@pytest.fixture
async def sqlite_database(tmp_path: Path) -> AsyncIterator[SQLAlchemyManager]:
    db = SQLAlchemyManager(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"))
    await migrate.upgrade(db.engine)
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
def database(migrated_database: SQLAlchemyManager) -> SQLAlchemyManager:
    """A migrated database of each kind (the unit suite's ``migrated_database``)."""
    return migrated_database


async def seed(db: SQLAlchemyManager, sealer: SecretBox, keys: int = 5) -> dict[str, str]:
    """An account with ``keys`` provider keys, two webhooks and a delivery with its own secret,
    every value sealed by ``sealer``; returns each row's plaintext by row id."""
    plain: dict[str, str] = {}
    async with db.session() as session:
        account = Account(name="Acme", name_key=f"acme-{uuid.uuid4().hex[:6]}")
        session.add(account)
        await session.flush()
        user = User(
            account_id=account.id, email=f"{uuid.uuid4().hex[:8]}@acme.example",
            password_hash="x", role="owner",
        )  # fmt: skip
        session.add(user)
        await session.flush()
        for n in range(keys):
            row_id, secret = uuid.uuid4(), f"sk-provider-{n}-{uuid.uuid4().hex}"
            session.add(
                ProviderKey(
                    id=row_id,
                    account_id=account.id,
                    user_id=user.id,
                    name=f"key {n}",
                    provider="openai",
                    hint="sk-...",
                    encryption_key_id=sealer.current_key_id,
                    sealed_key=sealer.seal(secret, provider_key_aad(account.id, row_id)),
                )
            )
            plain[str(row_id)] = secret
        for n in range(2):
            row_id, secret = uuid.uuid4(), f"whsec-{n}-{uuid.uuid4().hex}"
            session.add(
                Webhook(
                    id=row_id,
                    account_id=account.id,
                    url="https://hooks.example/in",
                    events=["execution.completed"],
                    encryption_key_id=sealer.current_key_id,
                    sealed_secret=sealer.seal(secret, webhook_secret_aad(account.id, row_id)),
                )
            )
            plain[str(row_id)] = secret
        row_id, secret = uuid.uuid4(), f"delivery-{uuid.uuid4().hex}"
        session.add(
            Delivery(
                id=row_id,
                account_id=account.id,
                kind="webhook",
                event="webhook.test",
                url="https://hooks.example/in",
                payload={},
                status="pending",
                next_attempt_at=datetime.now(UTC),
                sealed_secret=sealer.seal(secret, delivery_secret_aad(row_id)),
            )
        )
        plain[str(row_id)] = secret
        await session.commit()
    return plain


async def opened_with(db: SQLAlchemyManager, opener: SecretBox) -> dict[str, str]:
    """Every sealed value, opened by ``opener`` with its row's associated data."""
    found = {}
    async with db.engine.connect() as conn:
        for column in SEALED_COLUMNS:
            model = column.model
            wanted = [model.id, column.sealed, model.account_id]
            for row in (await conn.execute(select_all(wanted, column))).all():
                token = getattr(row, column.column)
                found[str(row.id)] = opener.open(token, column.associated_data(row))
    return found


def select_all(wanted: list[Any], column: Any) -> Any:
    from sqlalchemy import select

    return select(*wanted).where(column.sealed.is_not(None))


async def test_a_rotation_interrupted_and_run_again_leaves_every_value_under_the_new_key(
    database: SQLAlchemyManager,
) -> None:
    plain = await seed(database, box(k0=OLD))
    rotating = box(k1=NEW, k0=OLD)
    before = await key_use(database.engine, rotating)
    assert before.counts == {
        "provider keys": {"k0": 5}, "webhook secrets": {"k0": 2}, "delivery secrets": {"k0": 1},
        **{table.name: {} for table in CONTENT_TABLES},  # no execution content sealed here
    }  # fmt: skip
    assert (before.pending, before.unknown, before.retirable()) == (8, {}, [])

    class Interrupted(Exception):
        pass

    def stop_after_the_first_batch(column: str, done: int) -> None:
        raise Interrupted(column)

    with pytest.raises(Interrupted):
        await rotate(database.engine, rotating, batch=2, progress=stop_after_the_first_batch)
    halfway = await key_use(database.engine, rotating)
    assert halfway.counts["provider keys"] == {"k0": 3, "k1": 2}  # the first batch committed

    told: list[tuple[str, int]] = []
    result = await rotate(
        database.engine, rotating, batch=2, progress=lambda c, n: told.append((c, n))
    )
    assert result.resealed == {
        "provider keys": 3, "webhook secrets": 2, "delivery secrets": 1, **NO_CONTENT
    }  # fmt: skip
    assert (result.changed_meanwhile, result.unopened) == (0, {})
    assert told == [
        ("provider keys", 2), ("provider keys", 3), ("webhook secrets", 2),
        ("delivery secrets", 1),
    ]  # fmt: skip
    after = await key_use(database.engine, rotating)
    assert (after.pending, after.retirable()) == (0, ["k0"])
    # The old key can go: every value opens with the new one alone, to what it was.
    assert await opened_with(database, box(k1=NEW)) == plain
    again = await rotate(database.engine, rotating)  # nothing left to do
    assert again.total == 0


async def test_a_rotated_value_stays_bound_to_its_row(database: SQLAlchemyManager) -> None:
    await seed(database, box(k0=OLD), keys=2)
    await rotate(database.engine, box(k1=NEW, k0=OLD))
    async with database.session() as session:
        first, second = (await session.execute(select_all([ProviderKey], SEALED_COLUMNS[0]))).all()
    moved = first[0].sealed_key
    with pytest.raises(CryptoError, match="belongs elsewhere"):
        box(k1=NEW).open(moved, provider_key_aad(second[0].account_id, second[0].id))


async def test_a_value_under_a_key_no_longer_configured_is_named_and_left_alone(
    database: SQLAlchemyManager,
) -> None:
    await seed(database, box(gone=os.urandom(32)), keys=1)
    await seed(database, box(k0=OLD), keys=1)
    rotating = box(k1=NEW, k0=OLD)
    use = await key_use(database.engine, rotating)
    assert use.unknown == {"gone": 4}
    result = await rotate(database.engine, rotating)
    assert {column: len(ids) for column, ids in result.unopened.items()} == {
        "provider keys": 1, "webhook secrets": 2, "delivery secrets": 1
    }  # fmt: skip
    assert result.total == 4
    assert (await key_use(database.engine, rotating)).unknown == {"gone": 4}


async def test_a_value_changed_while_it_was_rotated_is_left_as_the_change_made_it(
    sqlite_database: SQLAlchemyManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = sqlite_database  # a second connection writes the file between read and write
    await seed(database, box(k0=OLD), keys=1)
    read_batch = keys_module._batch

    async def batch_then_a_user_replaces_the_key(*args: Any) -> Any:
        rows = await read_batch(*args)
        with sqlite3.connect(tmp_path / "keys.db") as other:  # after the read, before the write
            other.execute("UPDATE provider_keys SET sealed_key = 'replaced'")
        return rows

    monkeypatch.setattr(keys_module, "_batch", batch_then_a_user_replaces_the_key)
    result = await rotate(database.engine, box(k1=NEW, k0=OLD))
    assert result.changed_meanwhile == 1
    assert result.resealed["provider keys"] == 0
    async with database.engine.connect() as conn:
        rows = (await conn.execute(select_all([ProviderKey.sealed_key], SEALED_COLUMNS[0]))).all()
    assert [row.sealed_key for row in rows] == ["replaced"]


def key_setting(**keys: bytes) -> str:
    return ",".join(f"{k}:{base64.b64encode(v).decode()}" for k, v in keys.items())


def test_the_keys_commands_say_what_is_pending_and_what_can_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def prepare() -> None:
        db = SQLAlchemyManager(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"))
        await migrate.upgrade(db.engine)
        await seed(db, box(k0=OLD), keys=3)
        await db.dispose()

    asyncio.run(prepare())
    monkeypatch.setenv("RENUM_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    monkeypatch.setenv("RENUM_ENCRYPTION_KEYS", key_setting(k1=NEW, k0=OLD))

    pending = runner.invoke(cli, ["keys", "status"])
    assert pending.exit_code == 1, pending.output
    assert "provider keys: k0 3" in pending.output
    assert "6 values are under an older key: run `renum keys rotate`." in pending.output

    rotated = runner.invoke(cli, ["keys", "rotate", "--batch-size", "2", "--json"])
    assert rotated.exit_code == 0, rotated.output
    assert json.loads(rotated.stdout)["resealed"] == {
        "provider keys": 3, "webhook secrets": 2, "delivery secrets": 1, **NO_CONTENT
    }  # fmt: skip

    done = runner.invoke(cli, ["keys", "status", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert (report["primary"], report["pending"], report["retirable"]) == ("k1", 0, ["k0"])

    monkeypatch.setenv("RENUM_ENCRYPTION_KEYS", key_setting(k2=os.urandom(32)))
    lost = runner.invoke(cli, ["keys", "status"])
    assert lost.exit_code == 2
    assert "sealed with key 'k1', which is not configured" in " ".join(lost.output.split())
    unopened = runner.invoke(cli, ["keys", "rotate"])
    assert unopened.exit_code == 1
    assert "did not open" in unopened.output
    # Each rotation is in the audit trail.
    with sqlite3.connect(tmp_path / "keys.db") as audit:
        rotations = audit.execute(
            "SELECT outcome, target FROM audit_entries WHERE action = 'keys.rotate' ORDER BY seq"
        ).fetchall()
    assert rotations == [("success", "encryption key k1"), ("failure", "encryption key k2")]


def test_the_keys_commands_refuse_a_broken_key_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RENUM_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path / 'none.db'}")
    monkeypatch.setenv("RENUM_ENCRYPTION_KEYS", key_setting(k1=b"short"))
    result = runner.invoke(cli, ["keys", "status"])
    assert result.exit_code == 2
    assert "32 bytes" in result.output


async def test_the_dependency_report_fails_on_values_no_configured_key_opens(
    database: SQLAlchemyManager, make_settings: MakeSettings
) -> None:
    from app.capabilities.health import CheckContext, Status
    from app.capabilities.security.checks import EncryptionKeyCheck

    await seed(database, box(k0=OLD), keys=2)

    async def report(keys: str, **settings: Any) -> Any:
        context = CheckContext(make_settings(encryption_keys=keys, **settings), database)
        [outcome] = await EncryptionKeyCheck().run(context)
        return outcome

    pending = await report(key_setting(k1=NEW, k0=OLD))
    assert (pending.status, pending.observed_value) == (Status.passed, 5)
    assert "5 stored secrets are still under an older key" in pending.message
    lost = await report(key_setting(k1=NEW))
    assert (lost.status, lost.observed_value) == (Status.fail, 5)
    assert "5 under 'k0'" in lost.message
    assert "renum keys rotate" in (lost.fix or "")
    off = await report(key_setting(k1=NEW), security={"enabled": False})
    assert off.status is Status.passed
    await rotate(database.engine, box(k1=NEW, k0=OLD))
    done = await report(key_setting(k1=NEW))
    assert (done.status, done.observed_value) == (Status.passed, 0)
