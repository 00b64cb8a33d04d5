"""The outbound delivery service in-process: signatures as a receiver verifies them (tampered
bodies and timestamps, replays, wrong secrets), the backoff schedule and its jitter bounds,
and the dispatcher against a mock transport on a real database: retries, dead letters and
their bound per owner, a claim taken by one process only, sealed secrets, the egress guard's
refusal, the claims released on stop; and ``mailto:`` deliveries emailed through a local SMTP
server (aiosmtpd), retried, following a live SMTP change, or dead at once when they cannot be
sent."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select, update

from app.core.config import DeliverySettings, Settings, SmtpSettings
from app.core.crypto import SecretBox
from app.core.egress import EgressClients, EgressGuard, EgressRefused
from app.db import migrate
from app.db.base import utcnow
from app.db.database import SQLAlchemyManager
from app.models import Account, Delivery, Execution, ExecutionStatus, Webhook
from app.services import delivery as service
from app.services.delivery import (
    DeliveryDispatcher,
    Destination,
    InvalidSignature,
    backoff_seconds,
    enqueue,
    signature_header,
    verify_signature,
)
from app.services.webhooks import enqueue_cancelled_before_start, execution_event
from qa import services
from qa.launcher import free_port

SECRET = "whsec_unit-test-secret"
BODY = b'{"id":"d1","type":"execution.completed","data":{"cost_usd":"0.01"}}'
NOW = 1_800_000_000


# -- signatures ---------------------------------------------------------------------------------


def test_a_signed_body_verifies_and_the_signature_is_the_documented_hmac() -> None:
    header = signature_header(SECRET, BODY, NOW)
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"
    assert verify_signature(SECRET, BODY, header, now=NOW) == NOW
    assert verify_signature(SECRET, BODY, header, now=NOW + 299) == NOW  # within tolerance


@pytest.mark.parametrize(
    "tampered",
    [
        BODY.replace(b"0.01", b"0.02"),
        BODY + b" ",
        BODY[:-1],
        b"",
    ],
    ids=["changed-value", "trailing-space", "truncated", "empty"],
)
def test_a_tampered_body_does_not_verify(tampered: bytes) -> None:
    header = signature_header(SECRET, BODY, NOW)
    with pytest.raises(InvalidSignature, match="no signature matches"):
        verify_signature(SECRET, tampered, header, now=NOW)


def test_a_tampered_timestamp_does_not_verify() -> None:
    """The timestamp is signed: moving it (to replay a capture later) breaks the signature."""
    header = signature_header(SECRET, BODY, NOW)
    moved = header.replace(f"t={NOW}", f"t={NOW + 60}")
    with pytest.raises(InvalidSignature, match="no signature matches"):
        verify_signature(SECRET, BODY, moved, now=NOW + 60)


@pytest.mark.parametrize("offset", [301, -301, 86_400])
def test_a_stale_or_future_timestamp_is_refused_as_a_replay(offset: int) -> None:
    header = signature_header(SECRET, BODY, NOW)
    with pytest.raises(InvalidSignature, match="tolerance"):
        verify_signature(SECRET, BODY, header, now=NOW + offset)
    # A receiver may choose its own tolerance.
    assert verify_signature(SECRET, BODY, header, now=NOW + offset, tolerance_seconds=10**6)


def test_the_wrong_secret_does_not_verify() -> None:
    header = signature_header(SECRET, BODY, NOW)
    with pytest.raises(InvalidSignature):
        verify_signature(SECRET + "x", BODY, header, now=NOW)


@pytest.mark.parametrize(
    "header",
    [None, "", "v1=abc", f"t={NOW}", f"t=soon,v1={'0' * 64}", "garbage"],
)
def test_a_missing_or_malformed_header_is_refused(header: str | None) -> None:
    with pytest.raises(InvalidSignature):
        verify_signature(SECRET, BODY, header, now=NOW)


def test_any_matching_v1_signature_verifies() -> None:
    """Several ``v1`` entries (as while a receiver's secret is being replaced): one match is
    enough."""
    good = signature_header(SECRET, BODY, NOW).split(",")[1]
    header = f"t={NOW},v1={'0' * 64},{good}"
    assert verify_signature(SECRET, BODY, header, now=NOW) == NOW


def test_new_secrets_are_long_random_and_prefixed() -> None:
    made = {service.new_secret() for _ in range(50)}
    assert len(made) == 50
    assert all(s.startswith("whsec_") and len(s) == 6 + 43 for s in made)


# -- backoff ----------------------------------------------------------------------------------


def test_the_backoff_ceiling_doubles_up_to_the_cap() -> None:
    ceilings = [backoff_seconds(n, 10.0, 300.0, rand=lambda: 1.0) for n in range(1, 8)]
    assert ceilings == [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    assert backoff_seconds(3, 10.0, 300.0, rand=lambda: 0.0) == 0.0
    assert backoff_seconds(10_000, 10.0, 300.0, rand=lambda: 1.0) == 300.0  # no overflow


@pytest.mark.parametrize("attempt", [1, 2, 5, 12])
def test_full_jitter_stays_within_zero_and_the_ceiling_and_spreads(attempt: int) -> None:
    ceiling = min(3600.0, 10.0 * 2 ** (attempt - 1))
    waits = [backoff_seconds(attempt, 10.0, 3600.0) for _ in range(500)]
    assert all(0.0 <= wait <= ceiling for wait in waits)
    # Spread over the whole range (not clustered at the ceiling as plain backoff would be).
    assert min(waits) < ceiling * 0.25
    assert max(waits) > ceiling * 0.75


def test_execution_ends_map_to_webhook_events() -> None:
    assert execution_event(ExecutionStatus.completed, "completed") == "execution.completed"
    assert execution_event(ExecutionStatus.failed, "abandoned") == "execution.failed"
    assert execution_event(ExecutionStatus.cancelled, "cancelled") == "execution.cancelled"
    budget = execution_event(ExecutionStatus.cancelled, "budget_exceeded")
    assert budget == "execution.budget_exceeded"
    timed_out = execution_event(ExecutionStatus.timed_out, "timed_out")
    assert timed_out == "execution.budget_exceeded"


def test_the_destination_of_a_dead_letter_shows_no_path() -> None:
    assert service.origin_of("https://hooks.slack.com/services/T0/B0/tok") == (
        "https://hooks.slack.com"
    )
    assert service.origin_of("http://[::1]:8080/x") == "http://[::1]:8080"
    assert service.origin_of("http://[bad/x") == "(unparsable URL)"


# -- the dispatcher ---------------------------------------------------------------------------


@dataclass
class Receiver:
    """A mock transport: answers with the scripted statuses (then 200), records requests."""

    statuses: list[int] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    refuse: bool = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.refuse:
            raise EgressRefused("10.0.0.1 is private")
        self.requests.append(request)
        return httpx.Response(self.statuses.pop(0) if self.statuses else 200)


@dataclass
class World:
    database: SQLAlchemyManager
    box: SecretBox
    receiver: Receiver
    account_id: uuid.UUID
    make: Callable[..., DeliveryDispatcher]


@pytest.fixture(params=["sqlite", "postgresql"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    name = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'deliveries.db'}"
    else:
        name = f"renum_deliveries_{uuid.uuid4().hex[:10]}"
        url = await asyncio.to_thread(services.create_postgres_database, name)
    settings = Settings(environment="test", database={"url": url})
    database = SQLAlchemyManager(settings.database)
    receiver = Receiver()
    clients: list[httpx.AsyncClient] = []
    try:
        await migrate.upgrade(database.engine)
        account = Account(name="Deliveries", name_key=f"deliveries-{uuid.uuid4().hex}")
        async with database.session() as session:
            session.add(account)
            await session.commit()
        box = SecretBox.from_settings(settings)

        def make(owner: str = "this-process", **overrides: Any) -> DeliveryDispatcher:
            values: dict[str, Any] = {
                "backoff_base_seconds": 0.001,
                "backoff_max_seconds": 0.001,
                "max_attempts": 3,
                **overrides,
            }
            client = httpx.AsyncClient(transport=httpx.MockTransport(receiver.handle))
            clients.append(client)
            http = EgressClients(EgressGuard(), client, client)
            return DeliveryDispatcher(database, DeliverySettings(**values), box, http, owner)

        yield World(database, box, receiver, account.id, make)
    finally:
        for client in clients:
            await client.aclose()
        await database.dispose()
        if name is not None:
            await asyncio.to_thread(services.drop_postgres_database, name)


async def queue(
    world: World, count: int = 1, *, account: bool = True, **kwargs: Any
) -> list[uuid.UUID]:
    ids = []
    async with world.database.session() as session:
        for n in range(count):
            destination = (
                Destination.tenant("https://hooks.example.com/x", world.account_id)
                if account
                else Destination.operator("https://alerts.example.com/x")
            )
            made = await enqueue(
                session,
                destination,
                {"n": n},
                event="test.event",
                kind="test",
                box=world.box,
                **kwargs,
            )
            ids.append(made.id)
        await session.commit()
    return ids


async def rows(world: World) -> dict[uuid.UUID, Delivery]:
    async with world.database.session() as session:
        found = await session.scalars(select(Delivery))
        return {row.id: row for row in found}


async def make_due(world: World) -> None:
    """Every pending delivery due now, in the order they were queued (the backoff is not what
    these tests wait for)."""
    async with world.database.session() as session:
        await session.execute(
            update(Delivery)
            .where(Delivery.status == "pending")
            .values(next_attempt_at=Delivery.created_at)
        )
        await session.commit()


async def drain(dispatcher: DeliveryDispatcher, world: World, rounds: int = 10) -> None:
    """Dispatch until nothing is pending (each round: claim, send, record)."""
    for _ in range(rounds):
        await make_due(world)
        await dispatcher.dispatch_once()
        await asyncio.gather(*list(dispatcher._inflight))
        if all(r.status != "pending" for r in (await rows(world)).values()):
            return
    raise AssertionError("deliveries still pending")


@pytest.mark.anyio
async def test_a_delivery_is_signed_with_its_sealed_secret_and_retried_until_delivered(
    world: World,
) -> None:
    world.receiver.statuses = [500, 502]
    (delivery_id,) = await queue(world, secret=SECRET)
    stored = (await rows(world))[delivery_id]
    assert stored.sealed_secret is not None
    assert SECRET not in stored.sealed_secret  # sealed at rest
    dispatcher = world.make()
    await drain(dispatcher, world)

    sent = world.receiver.requests
    assert [r.headers["renum-attempt"] for r in sent] == ["1", "2", "3"]
    assert {r.headers["renum-delivery"] for r in sent} == {str(delivery_id)}
    for request in sent:
        assert json.loads(request.content) == {"n": 0}
        verify_signature(SECRET, request.content, request.headers["renum-signature"])
    done = (await rows(world))[delivery_id]
    assert (done.status, done.attempts, done.last_status_code) == ("delivered", 3, 200)
    assert done.last_error is None
    assert done.claimed_by is None


@pytest.mark.anyio
async def test_a_delivery_without_a_secret_is_sent_unsigned(world: World) -> None:
    await queue(world)
    await drain(world.make(), world)
    (request,) = world.receiver.requests
    assert "renum-signature" not in request.headers


@pytest.mark.anyio
async def test_dead_letters_are_bounded_per_owner_oldest_dropped_first(world: World) -> None:
    world.receiver.statuses = [500] * 100
    tenant = await queue(world, 4)
    platform = await queue(world, 2, account=False)
    dispatcher = world.make(max_attempts=1, dead_letter_max=2, concurrency=1)
    await drain(dispatcher, world)

    left = await rows(world)
    assert all(row.status == "dead" for row in left.values())
    assert all(row.last_error == "HTTP 500" for row in left.values())
    # The account keeps its two newest dead letters; the platform's are counted apart.
    tenant_left = [i for i in tenant if i in left]
    assert tenant_left == tenant[-2:]
    assert set(platform) <= set(left)
    async with world.database.session() as session:
        page, total = await service.dead_letters(session, limit=10, offset=0)
    assert total == 4
    assert [row.id for row in page][:1] == [platform[-1]]  # newest first


@pytest.mark.anyio
async def test_a_destination_the_guard_refuses_is_dead_at_once(world: World) -> None:
    world.receiver.refuse = True
    (delivery_id,) = await queue(world)
    await drain(world.make(), world)
    dead = (await rows(world))[delivery_id]
    assert (dead.status, dead.attempts) == ("dead", 1)
    assert dead.last_error == "refused by the egress policy"  # not the operator's detail


@pytest.mark.anyio
async def test_two_processes_never_claim_the_same_delivery(world: World) -> None:
    queued = set(await queue(world, 30))
    now = utcnow()
    lease = now + timedelta(minutes=1)

    async def claim(owner: str, limit: int = 12) -> set[uuid.UUID]:
        async with world.database.session() as session:
            claimed = await service.DeliveryRepository(session).claim(owner, now, lease, limit)
            await session.commit()
        return {row.id for row in claimed}

    first, second = await asyncio.gather(claim("first"), claim("second"))
    assert (len(first), len(second)) == (12, 12)  # each at most its limit
    assert not first & second
    third = await claim("third", 100)
    assert third == queued - first - second
    # A claimed delivery is not due again until its lease runs out.
    assert await claim("fourth") == set()


@pytest.mark.anyio
async def test_stopping_releases_the_deliveries_being_sent(world: World) -> None:
    (delivery_id,) = await queue(world)
    gate = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await gate.wait()
        return httpx.Response(200)

    dispatcher = world.make()
    held = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    dispatcher.clients = EgressClients(EgressGuard(), held, held)
    dispatcher._task = asyncio.create_task(asyncio.sleep(3600))  # as if started
    assert await dispatcher.dispatch_once() == 1
    claimed = (await rows(world))[delivery_id]
    assert (claimed.claimed_by, claimed.attempts) == ("this-process", 1)
    await dispatcher.stop()
    released = (await rows(world))[delivery_id]
    assert (released.status, released.claimed_by, released.attempts) == ("pending", None, 0)
    assert released.next_attempt_at <= utcnow()
    await held.aclose()


@pytest.mark.anyio
async def test_the_dispatcher_runs_in_the_background_and_can_be_switched_off(
    world: World,
) -> None:
    off = world.make(enabled=False)
    await off.start()
    assert off._task is None
    await off.stop()

    on = world.make(interval_seconds=0.05)
    await on.start()
    try:
        (delivery_id,) = await queue(world)
        on.kick()
        for _ in range(200):
            if (await rows(world))[delivery_id].status == "delivered":
                break
            await asyncio.sleep(0.02)
        assert (await rows(world))[delivery_id].status == "delivered"
    finally:
        await on.stop()


@pytest.mark.anyio
async def test_a_secret_needs_the_box_to_be_sealed(world: World) -> None:
    async with world.database.session() as session:
        with pytest.raises(ValueError, match="SecretBox"):
            await enqueue(
                session,
                Destination.operator("https://alerts.example.com"),
                {},
                event="e",
                kind="k",
                secret=SECRET,
            )


@pytest.mark.anyio
async def test_an_execution_cancelled_before_it_started_reaches_its_subscribers(
    world: World,
) -> None:
    """The API's own end of an execution (a pending one cancelled) queues like the engine's,
    in the cancelling transaction, for the enabled webhooks that subscribed to the event."""

    def hook(events: list[str], enabled: bool = True) -> Webhook:
        return Webhook(
            account_id=world.account_id,
            url="https://hooks.example.com/x",
            events=events,
            enabled=enabled,
            sealed_secret="v1:unused:x",
            encryption_key_id="unused",
        )

    cancelled = hook(["execution.cancelled"])
    others = [hook(["execution.failed"]), hook(["execution.cancelled"], enabled=False)]
    execution = Execution(id=uuid.uuid4(), team_id=uuid.uuid4(), account_id=world.account_id)
    now = utcnow()
    async with world.database.session() as session:
        session.add_all([cancelled, *others])
        await session.flush()
        assert await enqueue_cancelled_before_start(session, execution, now) == 1
        await session.commit()
    (queued,) = (await rows(world)).values()
    assert (queued.webhook_id, queued.event, queued.kind) == (
        cancelled.id,
        "execution.cancelled",
        "webhook",
    )
    assert queued.payload["id"] == str(queued.id)
    assert queued.payload["data"] == {
        "execution_id": str(execution.id),
        "team_id": str(execution.team_id),
        "account_id": str(world.account_id),
        "status": "cancelled",
        "reason": "cancelled",
        "error": None,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": "0",
        "started_at": None,
        "finished_at": now.isoformat().replace("+00:00", "Z"),
    }


# -- email deliveries -------------------------------------------------------------------------


class Mailbox:
    """An aiosmtpd handler keeping every message it accepts (in the server's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self._messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    @property
    def messages(self) -> list[tuple[list[str], EmailMessage]]:
        with self._lock:
            return list(self._messages)


@pytest.fixture
def mail_server() -> Iterator[tuple[Mailbox, SmtpSettings]]:
    """A plain SMTP relay on a free loopback port, and the settings that send through it."""
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield (
            mailbox,
            SmtpSettings(
                host="127.0.0.1",
                port=controller.port,
                security="none",
                from_address="renum-alerts@example.test",
            ),
        )
    finally:
        controller.stop()


EMAIL = {"subject": "[FIRING] p95 latency (test)", "text": "GET /api/v1/teams: p95 2.50s"}


async def queue_email(
    world: World,
    url: str = "mailto:ops%2Balerts@example.test,oncall@example.test",
    payload: dict[str, Any] | None = None,
    *,
    guarded: bool = False,
) -> uuid.UUID:
    destination = Destination(url, guarded=guarded)
    async with world.database.session() as session:
        made = await enqueue(
            session,
            destination,
            EMAIL if payload is None else payload,
            event="alert.firing",
            kind="alert",
        )
        await session.commit()
    return made.id


@pytest.mark.anyio
async def test_a_mailto_delivery_is_emailed_retried_and_follows_a_live_smtp_change(
    world: World, mail_server: tuple[Mailbox, SmtpSettings]
) -> None:
    """The first attempt finds no server (retried, as an HTTP failure is); the SMTP settings
    change (a reload) and the second attempt is an email with the delivery's headers."""
    mailbox, smtp = mail_server
    delivery_id = await queue_email(world)
    dispatcher = world.make()
    dispatcher.reconfigure_smtp(smtp.model_copy(update={"port": free_port()}))  # nobody there
    await make_due(world)
    await dispatcher.dispatch_once()
    await asyncio.gather(*list(dispatcher._inflight))
    failed = (await rows(world))[delivery_id]
    assert (failed.status, failed.attempts, failed.last_error) == (
        "pending",
        1,
        "could not connect",
    )

    dispatcher.reconfigure_smtp(smtp)
    await drain(dispatcher, world)
    done = (await rows(world))[delivery_id]
    assert (done.status, done.attempts, done.last_error) == ("delivered", 2, None)
    assert world.receiver.requests == []  # no HTTP at all
    ((recipients, message),) = mailbox.messages
    assert recipients == ["ops+alerts@example.test", "oncall@example.test"]
    assert message["Subject"] == EMAIL["subject"]
    assert message["From"] == "renum-alerts@example.test"
    assert message["Renum-Delivery"] == str(delivery_id)
    assert message["Renum-Event"] == "alert.firing"
    assert message["Renum-Attempt"] == "2"
    assert message["Message-ID"] == f"<{delivery_id}@example.test>"  # the same on every attempt
    body = message.get_body(("plain",))
    assert isinstance(body, EmailMessage)
    assert str(body.get_content()).strip() == EMAIL["text"]


@pytest.mark.anyio
async def test_a_mail_server_down_is_retried_until_dead(world: World) -> None:
    delivery_id = await queue_email(world)
    dispatcher = world.make(max_attempts=2)
    dispatcher.reconfigure_smtp(SmtpSettings(host="127.0.0.1", port=free_port(), security="none"))
    await drain(dispatcher, world)
    dead = (await rows(world))[delivery_id]
    assert (dead.status, dead.attempts, dead.last_error) == ("dead", 2, "could not connect")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "payload", "guarded", "error"),
    [
        ("mailto:ops@example.test", EMAIL, False, "SMTP is not configured"),
        ("mailto:not-an-address", EMAIL, False, "the mailto URL is malformed"),
        ("mailto:", EMAIL, False, "the mailto URL names no recipient"),
        (
            "mailto:ops@example.test",
            {"text": "no subject"},
            False,
            "the email payload needs a subject and a text",
        ),
        ("mailto:ops@example.test", EMAIL, True, "email goes to operator destinations only"),
    ],
    ids=["smtp-not-configured", "malformed-url", "no-recipient", "malformed-payload", "guarded"],
)
async def test_an_email_that_cannot_be_sent_is_dead_at_once(
    world: World, url: str, payload: dict[str, Any], guarded: bool, error: str
) -> None:
    delivery_id = await queue_email(world, url, payload, guarded=guarded)
    dispatcher = world.make(max_attempts=5)
    if error != "SMTP is not configured":  # these fail before any connection
        dispatcher.reconfigure_smtp(SmtpSettings(host="127.0.0.1", port=free_port()))
    await drain(dispatcher, world)
    dead = (await rows(world))[delivery_id]
    assert (dead.status, dead.attempts, dead.last_error) == ("dead", 1, error)
    assert service.origin_of(url) == "mailto:"
