"""Intrusion detection and throttling: the detectors of attacks on logins and credentials, the
throttling with growing delays, and the request rate limits (token buckets).

**Detectors** (``Guard``), each a count in a fixed window of the shared counters
(``counters``), so every API process sees every other's failures:

- *brute force*: failed logins to one account (email) from one source -> that pair is throttled;
- *credential stuffing*: distinct accounts with failed logins from one source -> the source's
  logins are throttled;
- *user enumeration*: distinct unknown emails tried from one source -> the same, named apart;
- *distributed attack*: distinct sources with failed logins to one account -> the account's
  logins are throttled for every source that is not a *known context* of it (one that logged
  in to it successfully within ``known_context_days``), so its user keeps access from where
  they usually log in, and an attacker cannot lock them out;
- *invalid credentials*: requests with an invalid token or API key (401) from one source ->
  the source's API requests are throttled;
- *id probing*: requests answered 404 on routes with an id in the path from one source (other
  tenants' ids tried) -> the same.

A throttling lasts ``block_seconds``, doubled by each next one of the same subject within
``escalation_seconds`` (up to ``max_block_seconds``): the failure that comes after a
throttling ended, while the window's count is still over the threshold, throttles again for
twice as long. Each throttling is a security event (``events``) when it starts.

The counters are read and written on the failure paths and on logins only (which cost an
argon2 hash anyway): a request with valid credentials at a normal rate never waits on them.
Throttled sources are also kept in this process (``source_blocks``), where each API request's
check is one dict lookup; another process learns of a source's throttling at the source's
first failure there (its count is over the threshold already).

**Rate limits** (``RateLimiter``): a token bucket per account and per API key in each process
(refilled at ``per_second`` up to ``burst``); every ``sync_seconds`` each process adds
what its buckets spent to a shared counter and takes what the other processes spent from its
own buckets, so that N processes enforce one limit, give or take what they spend within one
sync. A request takes a token from each of its buckets in memory: no I/O on its path.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.types import Scope

from app.capabilities.security.counters import CounterStore, add_member, digest, window_key
from app.capabilities.security.events import SecurityEvent, SecurityEvents
from app.core.config import RateLimit, ThrottleSettings
from app.core.errors import TooManyRequests
from app.core.logging import get_logger
from app.core.middleware import ANSWER_HEADERS
from app.services.principal import Principal

log = get_logger("app.security")

# Where the rate limit screen leaves the headers to add to the answer (the base middleware
# adds them).
RATE_LIMIT_HEADERS = ANSWER_HEADERS

THROTTLED = "Too many failed attempts from here; wait before trying again."


@dataclass(frozen=True)
class Refusal:
    """A throttled request: why (the kind, for the log) and for how many more seconds."""

    kind: str
    retry_after: int


@dataclass
class LoginCheck:
    """What the counters said before a login: its throttling (None: none), whether the
    source is a known context of the account, and the pair's failures in this window."""

    refusal: Refusal | None
    known: bool
    failures: int


def _retry(until: float, now: float) -> int:
    return max(1, math.ceil(until - now))


class Guard:
    """The detectors and the throttlings, on a counter store shared by the API processes."""

    def __init__(
        self, settings: ThrottleSettings, store: CounterStore, events: SecurityEvents
    ) -> None:
        self.settings = settings
        self.store = store
        self.events = events
        # source -> (until, kind): this process's copy of the sources' API-wide throttlings.
        self.source_blocks: dict[str, tuple[float, str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._store_failed_at = float("-inf")

    # -- the request path ---------------------------------------------------------------------

    def prune_source_blocks(self) -> None:
        """Forget the throttlings that ended (a source that never comes back would stay)."""
        now = time.time()
        self.source_blocks = {s: e for s, e in self.source_blocks.items() if e[0] > now}

    def source_refusal(self, source: str) -> Refusal | None:
        """Whether ``source``'s API requests are throttled now (one dict lookup when not)."""
        entry = self.source_blocks.get(source)
        if entry is None:
            return None
        now = time.time()
        if entry[0] <= now:
            del self.source_blocks[source]
            return None
        return Refusal(entry[1], _retry(entry[0], now))

    async def login_refusal(self, email: str, source: str) -> Refusal | None:
        """Whether a login to ``email`` from ``source`` is throttled now."""
        return (await self.login_check(email, source)).refusal

    async def login_check(self, email: str, source: str) -> LoginCheck:
        """Whether a login to ``email`` from ``source`` is throttled now, whether the source
        is a known context of the account and how many failures the pair has (one read of
        six counters); the store failing lets the login through (logged)."""
        keys = self._login_keys(email, source)
        try:
            pair, stuffing, enumeration, distributed, known, failures = await self.store.get_many(
                [
                    keys["brute-force"],
                    keys["credential-stuffing"],
                    keys["user-enumeration"],
                    keys["distributed-attack"],
                    keys["known"],
                    keys["failures"],
                ]
            )
        except Exception as exc:
            self._store_failed(exc)
            return LoginCheck(None, known=False, failures=1)
        now = time.time()
        check = LoginCheck(None, known=bool(known), failures=int(failures or 0))
        for kind, until_ms in (
            ("brute-force", pair),
            ("credential-stuffing", stuffing),
            ("user-enumeration", enumeration),
            ("distributed-attack", None if known else distributed),
        ):
            if until_ms is not None and until_ms / 1000 > now:
                check.refusal = Refusal(kind, _retry(until_ms / 1000, now))
                break
        return check

    async def login_failed(self, email: str, source: str, outcome: str | None) -> None:
        """Count a failed login (``outcome``: ``unknown-account`` or ``wrong-password``) and
        throttle what crossed its threshold. Unknown and known emails count alike for brute
        force and distributed attacks, so that throttling tells nothing of who exists."""
        s = self.settings
        e, src = digest(email), digest(source)
        try:
            pair = await self.store.incr(
                window_key(f"f:pair:{e}|{src}", s.brute_force.window_seconds),
                1,
                s.brute_force.window_seconds,
            )
            accounts = await add_member(
                self.store, f"s:emails:{src}", email, s.stuffing.window_seconds
            )
            unknown = 0
            if outcome == "unknown-account":
                unknown = await add_member(
                    self.store, f"s:unknown:{src}", email, s.enumeration.window_seconds
                )
            sources = await add_member(
                self.store, f"s:sources:{e}", source, s.distributed.window_seconds
            )
            if pair >= s.brute_force.threshold:
                await self._throttle(
                    "brute-force", f"{e}|{src}", f"{email} from {source}", source,
                    {"failures": pair},
                )  # fmt: skip
            if unknown >= s.enumeration.threshold:
                await self._throttle(
                    "user-enumeration", src, source, source, {"unknown_emails": unknown}
                )
            elif accounts >= s.stuffing.threshold:
                await self._throttle(
                    "credential-stuffing", src, source, source, {"accounts": accounts}
                )
            if sources >= s.distributed.threshold:
                await self._throttle("distributed-attack", e, email, source, {"sources": sources})
        except Exception as exc:
            self._store_failed(exc)

    async def login_succeeded(
        self, email: str, source: str, check: LoginCheck | None = None
    ) -> None:
        """``source`` is a known context of ``email`` from now on; the pair's failures are
        forgiven. With the ``check`` read before the login, what is so already is not written
        again (a user's usual login writes nothing here)."""
        s = self.settings
        e, src = digest(email), digest(source)
        try:
            if check is None or not check.known:
                await self.store.put(f"k:{e}|{src}", 1, s.known_context_days * 86_400)
            if check is None or check.failures:
                await self.store.delete(
                    window_key(f"f:pair:{e}|{src}", s.brute_force.window_seconds)
                )
        except Exception as exc:
            self._store_failed(exc)

    async def invalid_credential(self, source: str) -> None:
        """A request from ``source`` presented an invalid token or API key."""
        await self._count_source("invalid-credentials", source)

    async def id_not_found(self, source: str) -> None:
        """A request from ``source`` was answered 404 on a route with an id in its path."""
        await self._count_source("id-probing", source)

    # -- inside -------------------------------------------------------------------------------

    def _login_keys(self, email: str, source: str) -> dict[str, str]:
        e, src = digest(email), digest(source)
        return {
            "brute-force": f"b:brute-force:{e}|{src}",
            "credential-stuffing": f"b:credential-stuffing:{src}",
            "user-enumeration": f"b:user-enumeration:{src}",
            "distributed-attack": f"b:distributed-attack:{e}",
            "known": f"k:{e}|{src}",
            "failures": window_key(f"f:pair:{e}|{src}", self.settings.brute_force.window_seconds),
        }

    async def _count_source(self, kind: str, source: str) -> None:
        detector = (
            self.settings.bad_tokens
            if kind == "invalid-credentials"
            else (self.settings.id_probing)
        )
        src = digest(source)
        try:
            count = await self.store.incr(
                window_key(f"f:{kind}:{src}", detector.window_seconds), 1, detector.window_seconds
            )
            if count >= detector.threshold:
                counted = "invalid_credentials" if kind == "invalid-credentials" else "not_found"
                until = await self._throttle(kind, src, source, source, {counted: count})
                self.source_blocks[source] = (until, kind)
        except Exception as exc:
            self._store_failed(exc)

    async def _throttle(
        self, kind: str, key: str, subject: str, source: str, counts: Mapping[str, int]
    ) -> float:
        """Throttle ``key`` for ``kind`` unless it is already (another process may have
        started it): for ``block_seconds``, doubled by each earlier throttling of it within
        ``escalation_seconds``. When it starts, a security event. Its end (epoch seconds; the
        store keeps it in milliseconds)."""
        s = self.settings
        block = f"b:{kind}:{key}"
        now = time.time()
        current = (await self.store.get_many([block]))[0]  # its end, in milliseconds
        if current is not None and current / 1000 > now:
            return current / 1000
        level = await self.store.incr(f"l:{kind}:{key}", 1, s.escalation_seconds)
        seconds: int = min(s.block_seconds * 2 ** min(level - 1, 32), s.max_block_seconds)
        until = now + seconds
        await self.store.put(block, int(until * 1000), seconds)
        event = SecurityEvent(kind, subject, source, dict(counts), "throttled", seconds)
        self.spawn(self.events.emit(event))
        return until

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background (events: the answer does not wait for the alert)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the background work under way (tests, and the server's stop)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _store_failed(self, exc: Exception) -> None:
        """The counters are away: requests go through unthrottled (logged once a minute)."""
        now = time.monotonic()
        if now - self._store_failed_at >= 60:
            self._store_failed_at = now
            log.warning(
                "security_counters_unavailable",
                store=self.store.name,
                error_type=type(exc).__name__,
                error=str(exc)[:200],
            )


# -- rate limits ------------------------------------------------------------------------------


class Bucket:
    """A token bucket: ``tokens`` at ``stamp`` (monotonic seconds), refilled at ``rate`` up
    to ``burst``; ``spent`` since the last sync, ``seen``: the shared total at the last sync."""

    __slots__ = ("burst", "rate", "seen", "spent", "stamp", "tokens")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.rate = limit.per_second
        self.burst = limit.burst
        self.tokens = float(limit.burst)
        self.stamp = now
        self.spent = 0
        self.seen: int | None = None

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float) -> bool:
        self.refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            self.spent += 1
            return True
        return False

    def retry_after(self) -> int:
        """Seconds until the next token."""
        return max(1, math.ceil((1 - self.tokens) / self.rate))

    def reset_after(self) -> int:
        """Seconds until the bucket is full again."""
        return max(0, math.ceil((self.burst - self.tokens) / self.rate))

    def window(self) -> int:
        """The policy's window: the seconds an empty bucket takes to fill."""
        return max(1, math.ceil(self.burst / self.rate))


def policy_header(name: str, bucket: Bucket) -> tuple[bytes, bytes]:
    """``RateLimit-Policy: "name";q=<quota>;w=<window seconds>`` (draft-ietf-httpapi-
    ratelimit-headers): ``q`` tokens per ``w`` seconds, which a full bucket also allows at
    once."""
    return b"ratelimit-policy", f'"{name}";q={bucket.burst};w={bucket.window()}'.encode()


def limit_header(name: str, bucket: Bucket) -> tuple[bytes, bytes]:
    """``RateLimit: "name";r=<remaining>;t=<seconds until the quota is whole again>``."""
    remaining = max(0, int(bucket.tokens))
    return b"ratelimit", f'"{name}";r={remaining};t={bucket.reset_after()}'.encode()


class RateLimiter:
    """Token buckets per account and per API key; ``screen`` is ``get_principal``'s hook."""

    def __init__(
        self,
        settings: ThrottleSettings,
        events: SecurityEvents,
        spawn: Any = None,
        store: CounterStore | None = None,
    ) -> None:
        self.settings = settings.limits
        self.events = events
        self.store = store
        self.buckets: dict[str, Bucket] = {}
        self._spawn = spawn
        self._reported: dict[str, float] = {}  # bucket -> when its refusal was last an event

    def _bucket(self, key: str, limit: RateLimit, now: float) -> Bucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = Bucket(limit, now)
        return bucket

    def screen(self, scope: Scope, principal: Principal) -> None:
        """Take a token from the principal's account's bucket and its API key's; refuse with
        429 (``Retry-After``, ``RateLimit``) when one is empty, else leave the headers of the
        tighter one for the answer (in the scope, which the middleware reads)."""
        now = time.monotonic()
        settings = self.settings
        account = principal.account_id
        account_key = f"account:{account or principal.user_id}"
        override = settings.accounts.get(account) if isinstance(account, uuid.UUID) else None
        checks = [("account", account_key, override or settings.account)]
        if principal.api_key_id is not None:
            checks.append(("api-key", f"api-key:{principal.api_key_id}", settings.api_key))
        buckets = [(name, key, self._bucket(key, limit, now)) for name, key, limit in checks]
        for name, key, bucket in buckets:  # a refused request takes no token from any
            bucket.refill(now)
            if bucket.tokens < 1:
                self._refused(key, name, bucket, scope)
        tightest: tuple[str, Bucket] | None = None
        for name, _, bucket in buckets:
            bucket.tokens -= 1
            bucket.spent += 1
            if tightest is None or bucket.tokens < tightest[1].tokens:
                tightest = (name, bucket)
        if tightest is not None:
            scope[RATE_LIMIT_HEADERS] = (policy_header(*tightest), limit_header(*tightest))

    def _refused(self, key: str, name: str, bucket: Bucket, scope: Scope) -> None:
        error = TooManyRequests(
            f"The {name.replace('-', ' ')}'s request rate limit is reached "
            f"({bucket.rate:g} per second, bursts of {bucket.burst}).",
            retry_after=bucket.retry_after(),
        )
        policy, limit = policy_header(name, bucket), limit_header(name, bucket)
        error.headers = {
            **(error.headers or {}),
            "RateLimit-Policy": policy[1].decode(),
            "RateLimit": limit[1].decode(),
        }
        now = time.monotonic()
        if self._spawn is not None and now - self._reported.get(key, float("-inf")) >= 60:
            self._reported[key] = now
            client = scope.get("client")
            source = str(client[0]) if client else "unknown"
            event = SecurityEvent(
                "rate-limit", key, source, {"burst": bucket.burst}, "refused", bucket.retry_after()
            )
            self._spawn(self.events.emit(event))
        raise error

    async def sync(self) -> None:
        """Share what this process's buckets spent with the other processes and take what
        they spent from its own (one counter per bucket); forget idle full buckets."""
        store = self.store
        now = time.monotonic()
        for key, bucket in list(self.buckets.items()):
            spent, bucket.spent = bucket.spent, 0
            others = 0
            if store is not None:
                ttl = max(60.0, 10.0 * bucket.window())
                total = await store.incr(f"r:{key}", spent, ttl)
                others = 0 if bucket.seen is None else total - bucket.seen - spent
                bucket.seen = total
                if others > 0:
                    bucket.refill(now)
                    bucket.tokens -= others
            bucket.refill(now)
            if spent == 0 and others <= 0 and bucket.tokens >= bucket.burst:
                del self.buckets[key]
        cutoff = now - 3600
        self._reported = {k: t for k, t in self._reported.items() if t > cutoff}
