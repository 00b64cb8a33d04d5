"""The audit trail (issue 17) on migrated SQLite and PostgreSQL databases: appends numbered
without gaps under concurrency, and every kind of tampering detected by the verifier, with
where and why: an entry changed, deleted, or moved; the newest entries deleted (with and
without a rewritten head); a forged checkpoint; entries appended outside Renum. Pruning at a
signed checkpoint keeps the trail verifiable; pruning anywhere else does not. And
`renum audit verify`'s exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select, text, update
from typer.testing import CliRunner

from app.cli import cli, load_settings
from app.core.config import DatabaseSettings
from app.db import migrate
from app.db.database import SQLAlchemyManager
from app.models import AuditCheckpoint, AuditEntry, AuditHead, Role
from app.repositories.audit import AuditRepository
from app.services.audit import AuditTrail, verify_trail
from app.services.audit_chain import GENESIS, AuditKeyError, AuditSigner, Verdict, entry_hash
from app.services.principal import Principal
from suites.unit.conftest import MakeSettings

pytestmark = pytest.mark.anyio
runner = CliRunner()
SIGNER = AuditSigner({"k1": b"k1-secret-of-the-audit-trail-0123456789"})


def trail(db: SQLAlchemyManager, signer: AuditSigner = SIGNER) -> AuditTrail:
    return AuditTrail(db.session, signer)


async def record_many(db: SQLAlchemyManager, n: int) -> None:
    for i in range(n):
        await trail(db).record(
            "auth.login",
            actor_kind="anonymous",
            target=f"user{i}@example.com",
            outcome="failure" if i % 2 else "success",
            details={"i": i, "why": "test"},
        )


async def check(db: SQLAlchemyManager, signer: AuditSigner = SIGNER) -> Verdict:
    async with db.session() as session:
        return await verify_trail(session, signer)


async def run(db: SQLAlchemyManager, statement: Any) -> None:
    async with db.session() as session:
        await session.execute(statement)
        await session.commit()


async def test_an_empty_trail_is_intact_once_a_server_has_signed_its_head(
    migrated_database: SQLAlchemyManager,
) -> None:
    unsigned = await check(migrated_database)
    assert not unsigned.intact
    assert "no server with the audit trail on has started" in (unsigned.problem or "")
    await trail(migrated_database).initialise()
    verdict = await check(migrated_database)
    assert (verdict.intact, verdict.entries, verdict.last_seq) == (True, 0, None)


async def test_entries_chain_in_order_and_verify(migrated_database: SQLAlchemyManager) -> None:
    await record_many(migrated_database, 5)
    principal = Principal(uuid.uuid4(), uuid.uuid4(), Role.member, api_key_id=uuid.uuid4())
    await trail(migrated_database).record(
        "api_key.create", principal=principal, target="api_key:x", details={"n": 1.5}
    )
    async with migrated_database.session() as session:
        rows = (await session.scalars(select(AuditEntry).order_by(AuditEntry.seq))).all()
        head = await AuditRepository(session).head()
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    last = rows[-1]
    assert (last.actor_kind, last.actor_id, last.account_id) == (
        "api_key",
        principal.user_id,
        principal.account_id,
    )
    assert last.details == {"api_key_id": str(principal.api_key_id), "n": "1.5"}
    assert head is not None
    assert (head.seq, head.hash, head.key_id) == (6, last.hash, "k1")
    verdict = await check(migrated_database)
    assert (verdict.intact, verdict.entries, verdict.first_seq, verdict.last_seq) == (
        True,
        6,
        1,
        6,
    )


async def test_concurrent_appends_take_every_number_once(
    migrated_database: SQLAlchemyManager,
) -> None:
    audit = trail(migrated_database)
    await asyncio.gather(
        *(audit.record("auth.logout", actor_kind="user", target=str(i)) for i in range(25))
    )
    async with migrated_database.session() as session:
        seqs = (await session.scalars(select(AuditEntry.seq).order_by(AuditEntry.seq))).all()
        targets = set((await session.scalars(select(AuditEntry.target))).all())
    assert list(seqs) == list(range(1, 26))
    assert targets == {str(i) for i in range(25)}
    assert (await check(migrated_database)).intact


async def test_entries_queued_together_commit_in_groups_in_arrival_order(
    migrated_database: SQLAlchemyManager,
) -> None:
    transactions = 0

    @contextlib.asynccontextmanager
    async def counted() -> AsyncIterator[Any]:
        nonlocal transactions
        transactions += 1
        async with migrated_database.session() as session:
            yield session

    audit = AuditTrail(counted, SIGNER)
    # Another process's trail on the same database appends between the groups.
    other = trail(migrated_database)
    await asyncio.gather(
        *(audit.record("auth.login", target=str(i)) for i in range(60)),
        *(other.record("auth.logout", target=f"other{i}") for i in range(5)),
    )
    async with migrated_database.session() as session:
        rows = (
            await session.execute(
                select(AuditEntry.action, AuditEntry.target).order_by(AuditEntry.seq)
            )
        ).all()
    assert [target for action, target in rows if action == "auth.login"] == [
        str(i) for i in range(60)
    ]
    assert len(rows) == 65
    # All sixty were queued before the writer's first turn: one transaction.
    assert transactions == 1
    assert (await check(migrated_database)).intact


async def test_a_caller_that_stops_waiting_still_has_its_entry_written(
    migrated_database: SQLAlchemyManager,
) -> None:
    audit = trail(migrated_database)
    left = asyncio.create_task(audit.record("auth.login", target="gone"))
    await asyncio.sleep(0)
    left.cancel()
    await audit.record("auth.logout", target="stayed")
    async with migrated_database.session() as session:
        targets = (await session.scalars(select(AuditEntry.target).order_by(AuditEntry.seq))).all()
    assert list(targets) == ["gone", "stayed"]
    with pytest.raises(asyncio.CancelledError):
        await left


Tamper = Callable[[SQLAlchemyManager], Awaitable[None]]


async def change_middle(db: SQLAlchemyManager) -> None:
    await run(db, update(AuditEntry).where(AuditEntry.seq == 3).values(target="someone-else"))


async def change_details(db: SQLAlchemyManager) -> None:
    await run(db, update(AuditEntry).where(AuditEntry.seq == 2).values(details={"i": 99}))


async def delete_middle(db: SQLAlchemyManager) -> None:
    await run(db, delete(AuditEntry).where(AuditEntry.seq == 3))


async def delete_middle_and_renumber(db: SQLAlchemyManager) -> None:
    """The gap closed: entries after the deleted one moved down by one."""
    await run(db, delete(AuditEntry).where(AuditEntry.seq == 3))
    for seq in (4, 5, 6):
        await run(db, update(AuditEntry).where(AuditEntry.seq == seq).values(seq=seq - 1))
    await run(db, update(AuditHead).values(seq=5))


async def reorder(db: SQLAlchemyManager) -> None:
    """Entries 2 and 3 swap places."""
    await run(db, update(AuditEntry).where(AuditEntry.seq == 2).values(seq=-2))
    await run(db, update(AuditEntry).where(AuditEntry.seq == 3).values(seq=2))
    await run(db, update(AuditEntry).where(AuditEntry.seq == -2).values(seq=3))


async def delete_tail(db: SQLAlchemyManager) -> None:
    await run(db, delete(AuditEntry).where(AuditEntry.seq >= 5))


async def delete_tail_and_rewrite_head(db: SQLAlchemyManager) -> None:
    """The newest entries gone and the head moved back to the new last entry (unsigned by
    the audit key: the tamperer does not hold it)."""
    async with db.session() as session:
        last = await session.scalar(select(AuditEntry.hash).where(AuditEntry.seq == 4))
    await run(db, delete(AuditEntry).where(AuditEntry.seq >= 5))
    forged = AuditSigner({"k1": b"a-key-that-is-not-the-audit-key-000000"})
    _, signature = forged.sign("head", 4, str(last), 0)
    await run(db, update(AuditHead).values(seq=4, hash=last, signature=signature))


async def recompute_after_change(db: SQLAlchemyManager) -> None:
    """Entry 3 changed and every hash after it recomputed, so the chain links again; only the
    signed head (and the key) can tell."""
    async with db.session() as session:
        rows = [
            dict(r._mapping)
            for r in (await session.execute(select(*AuditEntry.__table__.columns))).all()
        ]
    rows.sort(key=lambda r: r["seq"])
    rows[2]["target"] = "forged"
    prev = rows[1]["hash"]
    for row in rows[2:]:
        row["prev_hash"] = prev
        row["hash"] = prev = entry_hash(row)
        await run(
            db,
            update(AuditEntry)
            .where(AuditEntry.seq == row["seq"])
            .values(target=row["target"], prev_hash=row["prev_hash"], hash=row["hash"]),
        )
    await run(db, update(AuditHead).values(hash=prev))


async def append_outside(db: SQLAlchemyManager) -> None:
    async with db.session() as session:
        row = dict(
            (
                await session.execute(
                    select(*AuditEntry.__table__.columns).where(AuditEntry.seq == 6)
                )
            )
            .one()
            ._mapping
        )
    row.update(seq=7, id=uuid.uuid4(), prev_hash=row["hash"], target="smuggled")
    row["hash"] = entry_hash(row)
    await run(db, AuditEntry.__table__.insert().values(**row))


@pytest.mark.parametrize(
    ("tamper", "at", "says"),
    [
        (change_middle, 3, "entry 3 was changed"),
        (change_details, 2, "entry 2 was changed"),
        (delete_middle, 3, "entry 3 is missing"),
        (delete_middle_and_renumber, 3, "does not follow"),
        (reorder, 2, "does not follow"),
        (delete_tail, 5, "newest entries were deleted"),
        (delete_tail_and_rewrite_head, 4, "head is not signed"),
        (recompute_after_change, 6, "head is not signed"),
        (append_outside, 7, "added outside Renum"),
    ],
)
async def test_tampering_is_detected_where_it_happened(
    migrated_database: SQLAlchemyManager, tamper: Tamper, at: int, says: str
) -> None:
    await record_many(migrated_database, 6)
    assert (await check(migrated_database)).intact
    await tamper(migrated_database)
    verdict = await check(migrated_database)
    assert not verdict.intact
    assert verdict.broken_at == at
    assert verdict.problem is not None
    assert says in verdict.problem


async def test_a_checkpoint_shows_the_tail_deleted(migrated_database: SQLAlchemyManager) -> None:
    await record_many(migrated_database, 4)
    audit = trail(migrated_database)
    checkpoint = await audit.checkpoint()
    assert checkpoint is not None
    assert (checkpoint.seq, checkpoint.prev_seq) == (4, 0)
    assert await audit.checkpoint() is None  # nothing new since
    await record_many(migrated_database, 2)
    assert (await check(migrated_database)).checkpoints == 1
    await run(migrated_database, delete(AuditEntry).where(AuditEntry.seq >= 4))
    verdict = await check(migrated_database)
    assert not verdict.intact
    assert "checkpoint names entry 4" in (verdict.problem or "")


async def test_checkpoints_chain_and_none_can_be_forged_or_removed(
    migrated_database: SQLAlchemyManager,
) -> None:
    audit = trail(migrated_database)
    for _ in range(3):
        await record_many(migrated_database, 2)
        await audit.checkpoint()
    async with migrated_database.session() as session:
        chain = [(c.seq, c.prev_seq) for c in await AuditRepository(session).checkpoints()]
    assert chain == [(2, 0), (4, 2), (6, 4)]
    assert (await check(migrated_database)).intact
    await run(migrated_database, delete(AuditCheckpoint).where(AuditCheckpoint.seq == 4))
    verdict = await check(migrated_database)
    assert (verdict.intact, verdict.broken_at) == (False, 6)
    assert "follows checkpoint 4, which is gone" in (verdict.problem or "")
    await run(migrated_database, delete(AuditCheckpoint).where(AuditCheckpoint.seq == 6))
    verdict = await check(migrated_database)
    assert "the signed head names checkpoint 6" in (verdict.problem or "")


async def test_a_forged_checkpoint_signature_fails(migrated_database: SQLAlchemyManager) -> None:
    await record_many(migrated_database, 2)
    await trail(migrated_database).checkpoint()
    await run(migrated_database, update(AuditCheckpoint).values(signature="0" * 64))
    verdict = await check(migrated_database)
    assert not verdict.intact
    assert "checkpoint at entry 2 is not signed" in (verdict.problem or "")


async def test_wiping_or_resetting_the_trail_is_detected(
    migrated_database: SQLAlchemyManager,
) -> None:
    await record_many(migrated_database, 3)
    await trail(migrated_database).checkpoint()  # the head's entry is checkpointed
    await run(migrated_database, delete(AuditEntry))
    wiped = await check(migrated_database)
    assert not wiped.intact
    assert "every entry of the trail was deleted" in (wiped.problem or "")
    await run(migrated_database, delete(AuditCheckpoint))
    await run(
        migrated_database,
        update(AuditHead).values(seq=0, hash=GENESIS, checkpoint_seq=0, key_id=None,
                                 signature=None),
    )  # fmt: skip
    reset = await check(migrated_database)
    assert not reset.intact
    assert "head is not signed" in (reset.problem or "")


async def test_old_entries_deleted_at_a_checkpoint_are_not_a_pruning(
    migrated_database: SQLAlchemyManager,
) -> None:
    await record_many(migrated_database, 5)
    await trail(migrated_database).checkpoint()
    await record_many(migrated_database, 2)
    await run(migrated_database, delete(AuditEntry).where(AuditEntry.seq < 5))
    verdict = await check(migrated_database)
    assert (verdict.intact, verdict.broken_at) == (False, 5)
    assert "no audit.prune entry records pruning them" in (verdict.problem or "")


async def test_a_trail_rolled_back_to_an_older_head_fails_against_a_logged_entry(
    migrated_database: SQLAlchemyManager,
) -> None:
    await record_many(migrated_database, 3)
    async with migrated_database.session() as session:
        old = dict((await session.execute(select(*AuditHead.__table__.columns))).one()._mapping)
    await record_many(migrated_database, 3)
    logged = await trail(migrated_database).checkpoint()
    assert logged is not None
    # The newer entries and checkpoint deleted, the old signed head written back.
    await run(migrated_database, delete(AuditEntry).where(AuditEntry.seq > 3))
    await run(migrated_database, delete(AuditCheckpoint))
    await run(migrated_database, update(AuditHead).values(**old))
    assert (await check(migrated_database)).intact  # only an outside copy can tell
    async with migrated_database.session() as session:
        verdict = await verify_trail(session, SIGNER, (logged.seq, logged.hash))
    assert (verdict.intact, verdict.broken_at) == (False, 4)
    assert "was logged, but the trail ends at entry 3" in (verdict.problem or "")


async def test_a_broken_trail_is_broken_whatever_key_its_head_names(
    migrated_database: SQLAlchemyManager,
) -> None:
    await record_many(migrated_database, 4)
    await run(migrated_database, delete(AuditEntry).where(AuditEntry.seq == 4))
    await run(migrated_database, update(AuditHead).values(key_id="bogus"))
    verdict = await check(migrated_database)
    assert (verdict.intact, verdict.broken_at) == (False, 4)


async def test_an_entry_that_no_longer_decodes_is_reported(tmp_path: Any) -> None:
    db = SQLAlchemyManager(DatabaseSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'bad.db'}"))
    await migrate.upgrade(db.engine)
    try:
        await record_many(db, 3)
        async with db.session() as session:
            await session.execute(
                text("UPDATE audit_entries SET details = 'not json' WHERE seq = 2")
            )
            await session.commit()
        verdict = await check(db)
        assert (verdict.intact, verdict.broken_at) == (False, 2)
        assert "cannot be read" in (verdict.problem or "")
    finally:
        await db.dispose()


async def test_long_request_ids_and_targets_are_kept_within_their_columns(
    migrated_database: SQLAlchemyManager,
) -> None:
    await trail(migrated_database).record(
        "auth.login", request_id="r" * 128, target="t" * 1000, source="s" * 100
    )
    async with migrated_database.session() as session:
        entry = await session.scalar(select(AuditEntry))
    assert entry is not None
    assert (len(entry.request_id or ""), len(entry.target or ""), len(entry.source or "")) == (
        128, 400, 64,
    )  # fmt: skip


def test_the_derived_key_still_verifies_once_keys_are_configured(
    make_settings: MakeSettings,
) -> None:
    before = AuditSigner.from_settings(make_settings())
    key_id, signature = before.sign("head", 3, "h", 0)
    after = AuditSigner.from_settings(
        make_settings(security={"audit": {"signing_keys": "a1:" + "x" * 32}})
    )
    assert after.key_id == "a1"
    assert after.verifies("head", 3, "h", 0, key_id, signature)


async def test_pruning_at_a_checkpoint_keeps_the_trail_verifiable(
    migrated_database: SQLAlchemyManager,
) -> None:
    audit = trail(migrated_database)
    await record_many(migrated_database, 3)
    await audit.checkpoint()
    await record_many(migrated_database, 3)
    now = datetime.now(UTC)
    assert await audit.prune(30, now) == 0  # nothing is 30 days old yet
    assert await audit.prune(0, now + timedelta(days=60)) == 0  # 0 keeps every entry
    assert await audit.prune(30, now + timedelta(days=60)) == 2  # before the checkpoint
    verdict = await check(migrated_database)
    assert (verdict.intact, verdict.first_seq, verdict.entries) == (True, 3, 5)
    assert verdict.notes == ["entries up to 2 were pruned at a signed checkpoint"]
    async with migrated_database.session() as session:
        pruning = await session.scalar(select(AuditEntry).where(AuditEntry.seq == 7))
    assert pruning is not None
    assert (pruning.action, pruning.details["through"]) == ("audit.prune", 2)
    # The checkpoint's own entry deleted as well: not a pruning.
    await run(migrated_database, delete(AuditEntry).where(AuditEntry.seq == 3))
    verdict = await check(migrated_database)
    assert (verdict.intact, verdict.broken_at) == (False, 4)
    assert "no signed checkpoint" in (verdict.problem or "")


async def test_pruning_goes_on_from_the_last_pruning(
    migrated_database: SQLAlchemyManager,
) -> None:
    audit = trail(migrated_database)
    await record_many(migrated_database, 2)
    await audit.checkpoint()
    later = datetime.now(UTC) + timedelta(days=2)
    assert await audit.prune(1, later) == 1
    assert (await check(migrated_database)).intact
    await record_many(migrated_database, 2)
    await audit.checkpoint()
    assert await audit.prune(1, later) == 3  # entries 2 to 4, the first pruning's record too
    verdict = await check(migrated_database)
    assert (verdict.intact, verdict.first_seq, verdict.last_seq) == (True, 5, 6)


async def test_an_unconfigured_key_cannot_check_and_an_old_one_still_verifies(
    migrated_database: SQLAlchemyManager,
) -> None:
    await record_many(migrated_database, 2)
    other = AuditSigner({"k2": b"k2-secret-of-the-audit-trail-0123456789"})
    with pytest.raises(AuditKeyError, match=r"'k1'.*not configured"):
        await check(migrated_database, other)
    rotated = AuditSigner(
        {
            "k2": b"k2-secret-of-the-audit-trail-0123456789",
            "k1": b"k1-secret-of-the-audit-trail-0123456789",
        }
    )
    await trail(migrated_database, rotated).record("auth.logout", actor_kind="user")
    assert (await check(migrated_database, rotated)).intact


async def test_a_failed_write_is_reported_and_raises_nothing() -> None:
    failed: list[str] = []

    def broken_sessions() -> Any:
        raise ConnectionError("database down")

    await AuditTrail(broken_sessions, SIGNER, failed.append).record("auth.login")
    assert failed == ["auth.login"]
    assert not AuditTrail.disabled().enabled
    await AuditTrail.disabled().record("auth.login")  # records nothing, raises nothing


def test_signing_keys_come_from_settings_or_the_secret_key(make_settings: MakeSettings) -> None:
    derived = AuditSigner.from_settings(make_settings())
    assert derived.key_id == "derived"
    configured = AuditSigner.from_settings(
        make_settings(security={"audit": {"signing_keys": "a1:" + "x" * 32 + ",a0:" + "y" * 40}})
    )
    assert configured.key_id == "a1"
    assert configured.verifies("head", 1, "h", 0, *configured.sign("head", 1, "h", 0))
    assert not configured.verifies("head", 1, "h", 1, *configured.sign("head", 1, "h", 0))
    for bad in ("a1:short", "no-colon", "bad id!:" + "x" * 32):
        with pytest.raises(ValueError, match="signing"):
            make_settings(security={"audit": {"signing_keys": bad}})
    with pytest.raises(AuditKeyError):
        AuditSigner({})


async def test_renum_audit_verify_exit_codes(
    migrated_database: SQLAlchemyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RENUM_DATABASE__URL", migrated_database.settings.url)
    monkeypatch.setenv("RENUM_SECRET_KEY", "unit-test-secret-key-0123456789abcdefghijklmnop")
    monkeypatch.setenv(
        "RENUM_SECURITY__AUDIT__SIGNING_KEYS", "k1:k1-secret-of-the-audit-trail-0123456789"
    )
    await record_many(migrated_database, 3)

    def verify(*args: str) -> Any:
        return runner.invoke(cli, ["audit", "verify", *args])

    intact = await asyncio.to_thread(verify)
    assert intact.exit_code == 0, intact.output
    assert "intact: 3 entries (entries 1 to 3), 0 signed checkpoints" in intact.output
    async with migrated_database.session() as session:
        third = await AuditRepository(session).entry_hash(3)
    assert (await asyncio.to_thread(verify, "--expect", f"3:{third}")).exit_code == 0
    ahead = await asyncio.to_thread(verify, "--expect", f"9:{third}")
    assert ahead.exit_code == 1
    assert "entry 9 was logged" in ahead.output
    assert (await asyncio.to_thread(verify, "--expect", "three")).exit_code == 2
    monkeypatch.setenv("RENUM_SECURITY__AUDIT__SIGNING_KEYS", "k9:" + "z" * 32)
    unknown = await asyncio.to_thread(verify)
    assert unknown.exit_code == 2
    assert "'k1'" in unknown.output
    monkeypatch.setenv(
        "RENUM_SECURITY__AUDIT__SIGNING_KEYS", "k1:k1-secret-of-the-audit-trail-0123456789"
    )
    await change_middle_of_three(migrated_database)
    broken = await asyncio.to_thread(verify, "--json")
    assert broken.exit_code == 1
    assert json.loads(broken.stdout)["broken_at"] == 2


async def change_middle_of_three(db: SQLAlchemyManager) -> None:
    await run(db, update(AuditEntry).where(AuditEntry.seq == 2).values(source="10.9.9.9"))


def test_renum_audit_verify_without_a_database_cannot_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("RENUM_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path / 'none.db'}")
    result = runner.invoke(cli, ["audit", "verify"])
    assert result.exit_code == 2
    assert "renum db upgrade" in result.output


async def test_the_user_commands_are_recorded_as_the_cli(
    migrated_database: SQLAlchemyManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RENUM_DATABASE__URL", migrated_database.settings.url)
    monkeypatch.setenv("RENUM_SECRET_KEY", "unit-test-secret-key-0123456789abcdefghijklmnop")
    email, password = "second-admin@example.com", "a-long-enough-password"

    def invoke(*args: str) -> Any:
        return runner.invoke(cli, ["users", *args, "--email", email, "--password", password])

    assert (await asyncio.to_thread(invoke, "create-admin")).exit_code == 0
    assert (await asyncio.to_thread(invoke, "reset-password")).exit_code == 0
    async with migrated_database.session() as session:
        rows = (await session.scalars(select(AuditEntry).order_by(AuditEntry.seq))).all()
    assert [(r.action, r.actor_kind) for r in rows] == [
        ("user.create", "cli"),
        ("user.password_change", "cli"),
    ]
    assert rows[0].details == {"email": email, "role": "admin"}
    assert rows[1].target == email
    assert password not in str([r.details for r in rows])
    assert (await check(migrated_database, AuditSigner.from_settings(load_settings()))).intact
