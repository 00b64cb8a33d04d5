"""The outbound delivery service: signed JSON POSTs and emails, queued durably, sent in the
background.

Every outbound notification (tenant webhooks today; alert channels, reports, security events
and backup alerts later) is a row of ``deliveries``, written by :func:`enqueue` in the
caller's own transaction: it exists exactly when what it reports was committed, and it
survives a process dying. A :class:`DeliveryDispatcher` runs in every API process (the
runtime starts and stops it) and sends what is due:

* **Claim.** Each round takes up to as many due deliveries as it has free sending slots, in
  one statement (``DeliveryRepository.claim``: ``SELECT ... FOR UPDATE SKIP LOCKED`` feeding a
  guarded ``UPDATE ... RETURNING`` on PostgreSQL; the guarded ``UPDATE`` under SQLite's single
  writer). The claim counts the attempt and pushes the next attempt past a lease (the timeout
  plus a minute), so two processes never send the same delivery at once, and one whose process
  died mid-send is sent again once the lease runs out. Delivery is therefore *at least once*:
  receivers drop repeats by the delivery id.
* **Send.** ``POST`` of the JSON body with ``Renum-Delivery`` (the delivery id, the same on
  every attempt), ``Renum-Event``, ``Renum-Attempt`` and, when the delivery has a secret,
  ``Renum-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` (Stripe's
  scheme: the timestamp is signed too, so a captured request cannot be replayed later;
  :func:`verify_signature` is what a receiver runs). Tenant destinations go through the egress
  guard's client (:func:`app.core.egress.guarded_client`: resolved addresses checked at
  every connection, no redirects); only destinations the operator configured use the trusted
  client. The response body is never read. One attempt is bounded by ``timeout_seconds``.
* **Email.** A delivery whose URL is ``mailto:`` (RFC 6068: ``mailto:a@example.com,b@...``,
  percent-decoded) is an email instead: its payload is ``{"subject": ..., "text": ...}``,
  sent as plain text through the operator's SMTP server (``monitor.alerts.smtp``, live; see
  :mod:`app.services.mailer`) with ``Renum-Delivery``, ``Renum-Event`` and ``Renum-Attempt``
  as headers and a ``Message-ID`` made from the delivery id, the same on every attempt. Only
  operator destinations may be emails. It is retried, dead-lettered and logged as a POST is;
  SMTP not configured, a malformed ``mailto:`` URL or payload, or a tenant (guarded) mailto
  delivery is dead at once.
* **Retry.** A 2xx ends it ``delivered``. Anything else (another status, a timeout, a refused
  connection) is retried after a random delay up to ``base * 2^(n-1)`` capped at
  ``backoff_max_seconds`` ("full jitter": receivers coming back are not hit by every sender at
  once), until ``max_attempts``; then it is ``dead``. A destination the egress policy refuses
  is dead at once. Dead letters are kept, newest first, up to ``dead_letter_max`` per owner
  (each account, and the platform), so one tenant's broken endpoint cannot push out another's;
  admins list them. Delivered ones leave the log after ``retention_days``.
* **Errors** recorded on a delivery are generic (``HTTP 503``, ``timed out after 10s``, ``could
  not connect``, ``refused by the egress policy``, ``the server refused the login``, ``SMTP
  error 451``): never a response body or an SMTP reply, a resolved address or a secret.
  Logs name deliveries by id, never by URL (a URL's path may hold a token).

Nothing here runs on a request's path but the insert: a slow or failing destination only
keeps the dispatcher's own tasks busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from app import __version__
from app.core.config import DeliverySettings, SmtpSettings
from app.core.crypto import CryptoError, SecretBox
from app.core.egress import EgressClients, EgressRefused
from app.core.logging import get_logger
from app.db.base import utcnow
from app.db.database import READ_ONLY, SQLAlchemyManager
from app.models import Delivery, DeliveryStatus, Webhook
from app.repositories.deliveries import DeliveryRepository, WebhookRepository
from app.services.mailer import MailError, is_mailto, parse_mailto, send_email

if TYPE_CHECKING:
    from app.services.engine.state import Changes

log = get_logger("app.deliveries")

SIGNATURE_HEADER = "Renum-Signature"
DELIVERY_HEADER = "Renum-Delivery"
EVENT_HEADER = "Renum-Event"
ATTEMPT_HEADER = "Renum-Attempt"
SIGNATURE_SCHEME = "v1"
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
DEFAULT_TOLERANCE_SECONDS = 300
USER_AGENT = f"Renum-Deliveries/{__version__}"
# How long a claim outlives the attempt's own time limit before another process may take over.
LEASE_MARGIN_SECONDS = 60.0
HOUSEKEEPING_SECONDS = 300.0
MAX_ERROR_CHARS = 500


# -- signatures ---------------------------------------------------------------------------------


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and 43 URL-safe characters (256 random bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256, keyed with the secret's UTF-8 bytes, of ``"<timestamp>.<body>"``."""
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``Renum-Signature`` value: ``t=<unix seconds>,v1=<signature>``."""
    moment = int(time.time()) if timestamp is None else timestamp
    return f"t={moment},{SIGNATURE_SCHEME}={signature(secret, moment, body)}"


class InvalidSignature(ValueError):
    """A delivery's signature does not verify: missing, malformed, stale or wrong."""


def verify_signature(
    secret: str,
    body: bytes,
    header: str | None,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> int:
    """What a receiver runs on each request: check ``Renum-Signature`` against the raw body
    (exactly the bytes received, before any JSON parsing). Returns the signed timestamp;
    raises :class:`InvalidSignature` when the header is missing or malformed, the timestamp is
    more than ``tolerance_seconds`` away from ``now`` (a replay), or no ``v1`` signature
    matches (compared in constant time)."""
    if not header:
        raise InvalidSignature("no signature header")
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise InvalidSignature("the timestamp is not a number") from None
        elif key == SIGNATURE_SCHEME:
            candidates.append(value)
    if timestamp is None or not candidates:
        raise InvalidSignature(f"the header needs t= and {SIGNATURE_SCHEME}=")
    moment = time.time() if now is None else now
    if abs(moment - timestamp) > tolerance_seconds:
        raise InvalidSignature("the timestamp is outside the tolerance (a replay?)")
    expected = signature(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise InvalidSignature("no signature matches")
    return timestamp


# -- retries ------------------------------------------------------------------------------------


def backoff_seconds(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """The wait after failed attempt ``attempt`` (1 for the first): "full jitter", a uniform
    random time from 0 up to ``min(cap, base * 2^(attempt-1))``."""
    exponent = min(max(attempt - 1, 0), 64)  # past 2^64 every ceiling is the cap anyway
    return min(cap, base * 2.0**exponent) * rand()


# -- enqueueing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """Where a delivery goes and who owns it. Tenant destinations (the default) are sent
    through the egress guard; only URLs the operator configured may skip it."""

    url: str
    account_id: uuid.UUID | None = None  # the owner; None: the platform
    webhook_id: uuid.UUID | None = None
    guarded: bool = True

    @classmethod
    def tenant(
        cls, url: str, account_id: uuid.UUID, webhook_id: uuid.UUID | None = None
    ) -> Destination:
        return cls(url, account_id, webhook_id, guarded=True)

    @classmethod
    def operator(cls, url: str) -> Destination:
        """A destination from the operator's own configuration (an alert channel)."""
        return cls(url, None, None, guarded=False)


def delivery_secret_aad(delivery_id: uuid.UUID) -> str:
    """Associated data binding a delivery's own sealed secret to its row."""
    return f"delivery-secret:{delivery_id}"


def webhook_secret_aad(account_id: uuid.UUID, webhook_id: uuid.UUID) -> str:
    """Associated data binding a webhook's sealed secret to its row."""
    return f"webhook-secret:{account_id}:{webhook_id}"


def new_delivery(
    destination: Destination,
    payload: dict[str, Any],
    *,
    event: str,
    kind: str,
    now: datetime,
    delivery_id: uuid.UUID | None = None,
    sealed_secret: str | None = None,
) -> dict[str, Any]:
    """The column values of a new pending delivery, due at once."""
    return {
        "id": delivery_id or uuid.uuid4(),
        "account_id": destination.account_id,
        "webhook_id": destination.webhook_id,
        "kind": kind,
        "event": event,
        "url": destination.url,
        "guarded": destination.guarded,
        "payload": payload,
        "sealed_secret": sealed_secret,
        "status": DeliveryStatus.pending.value,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


async def enqueue(
    session: AsyncSession,
    destination: Destination,
    payload: dict[str, Any],
    *,
    event: str,
    kind: str,
    secret: str | None = None,
    box: SecretBox | None = None,
    delivery_id: uuid.UUID | None = None,
) -> Delivery:
    """Queue ``payload`` (sent as the JSON body, as it is) for ``destination``, in the
    caller's transaction: it is sent once the caller commits, and never if it rolls back.
    ``secret`` signs it (sealed at rest with ``box``); a webhook's delivery is signed with the
    webhook's current secret instead. The dispatcher picks it up within its interval (call
    ``DeliveryDispatcher.kick`` after committing to send it sooner). ``delivery_id`` names the
    delivery when the payload must carry its id."""
    delivery_id = delivery_id or uuid.uuid4()
    sealed = None
    if secret is not None:
        if box is None:
            raise ValueError("a secret is sealed at rest: pass the SecretBox")
        sealed = box.seal(secret, delivery_secret_aad(delivery_id))
    values = new_delivery(
        destination,
        payload,
        event=event,
        kind=kind,
        now=utcnow(),
        delivery_id=delivery_id,
        sealed_secret=sealed,
    )
    delivery = Delivery(**values)
    DeliveryRepository(session).add(delivery)
    return delivery


async def dead_letters(
    session: AsyncSession, *, limit: int, offset: int
) -> tuple[Sequence[Delivery], int]:
    """Every owner's dead letters, newest first (platform admins' view)."""
    return await DeliveryRepository(session).page_dead(limit=limit, offset=offset)


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL: where a delivery went, without a path that may
    carry a token (``mailto:`` alone for an email)."""
    if is_mailto(url):
        return "mailto:"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}"


# -- the dispatcher -----------------------------------------------------------------------------


def _email_content(body: bytes) -> tuple[str, str]:
    """The subject and text of an email delivery's payload (``{"subject": str, "text": str}``);
    a permanent :class:`MailError` when it is not that."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        payload = {}
    subject, text = payload.get("subject"), payload.get("text")
    if not isinstance(subject, str) or not isinstance(text, str):
        raise MailError("the email payload needs a subject and a text", permanent=True)
    return subject, text


@dataclass(frozen=True)
class Outcome:
    """How one attempt went; ``error`` is generic (safe to show to the delivery's owner)."""

    status_code: int | None = None
    error: str | None = None
    permanent: bool = False  # no retry can help: dead at once

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class _Job:
    id: uuid.UUID
    account_id: uuid.UUID | None
    kind: str
    event: str
    url: str
    guarded: bool
    body: bytes
    attempt: int
    secret: str | None
    failure: str | None = None  # prepared already failed (permanently)


@dataclass
class DeliveryDispatcher:
    """Sends due deliveries in the background of one process (see the module docstring)."""

    database: SQLAlchemyManager
    settings: DeliverySettings
    box: SecretBox
    clients: EgressClients
    owner: str
    smtp: SmtpSettings = field(default_factory=SmtpSettings)  # for mailto: deliveries
    rand: Callable[[], float] = random.random
    _task: asyncio.Task[None] | None = field(default=None, init=False)
    _inflight: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _failing: bool = field(default=False, init=False)
    _housekept_at: float = field(default=0.0, init=False)

    async def start(self) -> None:
        if not self.settings.enabled:
            log.info("deliveries_dispatcher_off")
            return
        self._housekept_at = time.monotonic()
        self._task = asyncio.create_task(self._run_forever())

    def kick(self) -> None:
        """Look for due deliveries now rather than at the next interval."""
        self._wake.set()

    def reconfigure_smtp(self, smtp: SmtpSettings) -> None:
        """Send emails through this SMTP server from the next attempt on (a live reload)."""
        self.smtp = smtp

    def on_engine_commit(self, changes: Changes) -> None:
        """An engine observer: an execution's end may have queued webhook deliveries."""
        if changes.finish is not None:
            self.kick()

    async def enqueue(
        self,
        session: AsyncSession,
        destination: Destination,
        payload: dict[str, Any],
        *,
        event: str,
        kind: str,
        secret: str | None = None,
    ) -> Delivery:
        """:func:`enqueue` with this process's ``SecretBox``."""
        return await enqueue(
            session, destination, payload, event=event, kind=kind, secret=secret, box=self.box
        )

    async def stop(self) -> None:
        """Stop sending; deliveries being attempted are due again at once for any process."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        inflight = list(self._inflight)
        for sending in inflight:
            sending.cancel()
        await asyncio.gather(*inflight, return_exceptions=True)
        try:
            async with self.database.session() as session:
                released = await DeliveryRepository(session).release(self.owner, utcnow())
                await session.commit()
        except Exception as exc:  # they are due again once their lease runs out instead
            log.warning("deliveries_release_failed", error_type=type(exc).__name__)
            return
        if released:
            log.info("deliveries_released", count=released)

    @property
    def sending(self) -> int:
        return len(self._inflight)

    async def _run_forever(self) -> None:
        while True:
            self._wake.clear()
            claimed = 0
            try:
                claimed = await self.dispatch_once()
                await self._housekeep()
            except Exception as exc:  # the database is away: retried on the next interval
                if not self._failing:
                    log.warning("deliveries_dispatch_failed", error_type=type(exc).__name__)
                self._failing = True
            else:
                if self._failing:
                    log.info("deliveries_dispatch_recovered")
                self._failing = False
            if claimed and self.sending < self.settings.concurrency:
                await asyncio.sleep(0)  # more may be due: look again at once
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.interval_seconds):
                    await self._wake.wait()

    async def dispatch_once(self) -> int:
        """Claim what is due (as many as there are free slots) and start sending it; how many
        were claimed."""
        free = self.settings.concurrency - self.sending
        if free <= 0:
            return 0
        now = utcnow()
        async with self.database.session() as session:
            await session.connection(execution_options=READ_ONLY)
            if not await DeliveryRepository(session).any_due(now):
                return 0
        lease = timedelta(seconds=self.settings.timeout_seconds + LEASE_MARGIN_SECONDS)
        async with self.database.session() as session:
            claims = await DeliveryRepository(session).claim(self.owner, now, now + lease, free)
            webhook_ids = {row.webhook_id for row in claims if row.webhook_id is not None}
            hooks = await WebhookRepository(session).for_sending(webhook_ids) if webhook_ids else {}
            await session.commit()
        for row in claims:
            job = self._prepare(row, hooks)
            if job is None:
                continue
            task = asyncio.create_task(self._deliver(job))
            self._inflight.add(task)
            task.add_done_callback(self._sent)
        return len(claims)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self.kick()  # a slot is free

    def _prepare(self, row: Any, hooks: dict[uuid.UUID, Webhook]) -> _Job | None:
        """The request of a claimed delivery: its webhook's current URL and secret when it
        has one (None: the webhook was deleted, and its deliveries with it)."""
        url, secret, failure = row.url, None, None
        try:
            if row.webhook_id is not None:
                hook = hooks.get(row.webhook_id)
                if hook is None:
                    return None
                url = hook.url
                secret = self.box.open(
                    hook.sealed_secret, webhook_secret_aad(hook.account_id, hook.id)
                )
            elif row.sealed_secret is not None:
                secret = self.box.open(row.sealed_secret, delivery_secret_aad(row.id))
        except CryptoError as exc:
            log.error("delivery_secret_unreadable", delivery_id=str(row.id), error=str(exc))
            failure = "the signing secret cannot be read (encryption key missing)"
        body = json.dumps(row.payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return _Job(
            id=row.id,
            account_id=row.account_id,
            kind=row.kind,
            event=row.event,
            url=url,
            guarded=row.guarded,
            body=body,
            attempt=row.attempts,
            secret=secret,
            failure=failure,
        )

    async def _deliver(self, job: _Job) -> None:
        outcome = (
            Outcome(error=job.failure, permanent=True)
            if job.failure is not None
            else await self.attempt(job)
        )
        try:
            await self._record(job, outcome)
        except Exception as exc:  # the claim's lease runs out and the delivery is tried again
            log.warning(
                "delivery_record_failed", delivery_id=str(job.id), error_type=type(exc).__name__
            )

    async def attempt(self, job: _Job) -> Outcome:
        """One POST of the delivery (an email for a ``mailto:`` URL), within
        ``timeout_seconds``."""
        if is_mailto(job.url):
            return await self._attempt_email(job)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            DELIVERY_HEADER: str(job.id),
            EVENT_HEADER: job.event,
            ATTEMPT_HEADER: str(job.attempt),
        }
        if job.secret is not None:
            headers[SIGNATURE_HEADER] = signature_header(job.secret, job.body)
        client = self.clients.guarded if job.guarded else self.clients.trusted
        seconds = self.settings.timeout_seconds
        try:
            async with (
                asyncio.timeout(seconds),
                client.stream(
                    "POST", job.url, content=job.body, headers=headers, timeout=seconds
                ) as response,
            ):
                status = response.status_code  # the body is never read
        except EgressRefused:
            return Outcome(error="refused by the egress policy", permanent=True)
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(error=f"timed out after {seconds:g}s")
        except httpx.ConnectError:
            return Outcome(error="could not connect")
        except (httpx.HTTPError, OSError) as exc:
            return Outcome(error=f"the request failed ({type(exc).__name__})")
        if 200 <= status < 300:
            return Outcome(status_code=status)
        if 300 <= status < 400:
            return Outcome(status, f"HTTP {status} (redirects are not followed)")
        return Outcome(status, f"HTTP {status}")

    async def _attempt_email(self, job: _Job) -> Outcome:
        """One email of the delivery through the configured SMTP server."""
        if job.guarded:
            return Outcome(error="email goes to operator destinations only", permanent=True)
        seconds = self.settings.timeout_seconds
        try:
            recipients = parse_mailto(job.url)
            subject, text = _email_content(job.body)
            headers = {
                DELIVERY_HEADER: str(job.id),
                EVENT_HEADER: job.event,
                ATTEMPT_HEADER: str(job.attempt),
            }
            async with asyncio.timeout(seconds):
                await send_email(
                    self.smtp, recipients, subject, text, headers=headers, message_id=str(job.id)
                )
        except MailError as exc:
            return Outcome(error=str(exc), permanent=exc.permanent)
        except TimeoutError:
            return Outcome(error=f"timed out after {seconds:g}s")
        return Outcome()

    async def _record(self, job: _Job, outcome: Outcome) -> None:
        now = utcnow()
        error = (outcome.error or "")[:MAX_ERROR_CHARS]
        async with self.database.session() as session:
            repo = DeliveryRepository(session)
            if outcome.ok:
                await repo.delivered(job.id, self.owner, now, outcome.status_code or 0)
                await session.commit()
                log.info(
                    "delivery_sent", delivery_id=str(job.id), kind=job.kind, attempt=job.attempt
                )
                return
            if outcome.permanent or job.attempt >= self.settings.max_attempts:
                if await repo.dead(job.id, self.owner, now, outcome.status_code, error):
                    await repo.trim_dead(job.account_id, self.settings.dead_letter_max)
                await session.commit()
                log.warning(
                    "delivery_dead",
                    delivery_id=str(job.id),
                    kind=job.kind,
                    delivery_event=job.event,
                    attempt=job.attempt,
                    error=error,
                )
                return
            wait = backoff_seconds(
                job.attempt,
                self.settings.backoff_base_seconds,
                self.settings.backoff_max_seconds,
                self.rand,
            )
            await repo.retry_at(
                job.id, self.owner, now, now + timedelta(seconds=wait), outcome.status_code, error
            )
            await session.commit()
        log.info(
            "delivery_failed",
            delivery_id=str(job.id),
            kind=job.kind,
            attempt=job.attempt,
            error=error,
            retry_in_seconds=round(wait, 3),
        )

    async def _housekeep(self) -> None:
        """Now and then: drop delivered deliveries past their retention."""
        if time.monotonic() - self._housekept_at < HOUSEKEEPING_SECONDS:
            return
        self._housekept_at = time.monotonic()
        before = utcnow() - timedelta(days=self.settings.retention_days)
        async with self.database.session() as session:
            purged = await DeliveryRepository(session).purge_delivered(before)
            await session.commit()
        if purged:
            log.info("deliveries_purged", count=purged)
