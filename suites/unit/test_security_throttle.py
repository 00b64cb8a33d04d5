"""Intrusion detection and throttling, module by module: the client address behind trusted
proxies, the token buckets and the ``RateLimit`` headers, the detectors and the growing delays
(on counters in memory), the security events' sinks, and the counter stores on Redis, SQLite
and PostgreSQL (each must count alike, so two processes enforce one limit)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest

from app.capabilities.security.counters import (
    CounterStore,
    DatabaseCounters,
    MemoryCounters,
    RedisCounters,
    add_member,
)
from app.capabilities.security.events import SecurityEvent, SecurityEvents
from app.capabilities.security.throttle import (
    RATE_LIMIT_HEADERS,
    Bucket,
    Guard,
    RateLimiter,
    limit_header,
    policy_header,
)
from app.core.client_address import UNKNOWN, client_address
from app.core.config import RateLimit, Settings, ThrottleSettings
from app.core.errors import TooManyRequests
from app.core.metrics import Metrics
from app.models import Role
from app.services.principal import Principal
from qa import services
from suites.unit.conftest import migrated

pytestmark = pytest.mark.anyio

PROXIES = (ip_network("10.0.0.0/8"), ip_network("fd00::/8"), ip_network("127.0.0.1/32"))


def scope(peer: str | None, *forwarded: str) -> dict[str, Any]:
    return {
        "type": "http",
        "client": (peer, 1234) if peer else None,
        "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded],
    }


# -- the client address ---------------------------------------------------------------------


def test_the_peer_is_the_client_without_trusted_proxies() -> None:
    assert client_address(scope("203.0.113.5", "198.51.100.1")) == "203.0.113.5"
    assert client_address(scope(None)) == UNKNOWN


def test_a_spoofed_header_from_an_untrusted_peer_is_ignored() -> None:
    assert client_address(scope("203.0.113.5", "10.1.1.1, 1.2.3.4"), PROXIES) == "203.0.113.5"


def test_the_header_is_read_right_to_left_skipping_trusted_hops() -> None:
    # The client wrote 6.6.6.6 itself; 198.51.100.7 reached the first trusted proxy.
    found = client_address(scope("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.0.0.9"), PROXIES)
    assert found == "198.51.100.7"


def test_several_headers_are_one_list() -> None:
    found = client_address(scope("10.0.0.2", "6.6.6.6, 198.51.100.7", "10.0.0.9"), PROXIES)
    assert found == "198.51.100.7"


def test_ipv6_and_ports_and_mapped_addresses() -> None:
    assert client_address(scope("fd00::1", "2001:db8::5"), PROXIES) == "2001:db8::5"
    assert client_address(scope("fd00::1", "[2001:db8::5]:443"), PROXIES) == "2001:db8::5"
    assert client_address(scope("10.0.0.1", "198.51.100.7:5678"), PROXIES) == "198.51.100.7"
    assert client_address(scope("::ffff:10.0.0.1", "198.51.100.7"), PROXIES) == "198.51.100.7"


def test_a_malformed_entry_stops_the_walk_at_the_last_trusted_hop() -> None:
    assert client_address(scope("10.0.0.2", "1.2.3.4, not-an-ip"), PROXIES) == "10.0.0.2"
    assert client_address(scope("10.0.0.2", "1.2.3.4, [::1"), PROXIES) == "10.0.0.2"
    assert client_address(scope("10.0.0.2", "1.2.3.4, not-an-ip, 10.0.0.3"), PROXIES) == (
        "10.0.0.3"
    )


def test_only_trusted_hops_leave_the_left_most() -> None:
    assert client_address(scope("10.0.0.2", "10.0.0.7, 10.0.0.8"), PROXIES) == "10.0.0.7"
    assert client_address(scope("10.0.0.2"), PROXIES) == "10.0.0.2"  # no header at all


def test_trusted_proxies_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RENUM_SECURITY__THROTTLE__TRUSTED_PROXIES", "10.0.0.0/8, ::1")
    settings = Settings(environment="test")
    assert [str(n) for n in settings.security.throttle.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    monkeypatch.setenv("RENUM_SECURITY__THROTTLE__BRUTE_FORCE__THRESHOLD", "3")
    settings = Settings(environment="test")
    assert settings.security.throttle.brute_force.threshold == 3
    assert settings.security.throttle.brute_force.window_seconds == 900  # its default kept


# -- buckets and headers --------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    bucket = Bucket(RateLimit(per_second=2, burst=3), now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after() == 1
    assert bucket.take(0.5)  # one token back after half a second
    assert not bucket.take(0.5)
    bucket.refill(100.0)
    assert bucket.tokens == 3  # never more than the burst


def test_the_ratelimit_headers_follow_the_draft() -> None:
    bucket = Bucket(RateLimit(per_second=10, burst=100), now=0.0)
    for _ in range(58):
        bucket.take(0.0)
    assert policy_header("account", bucket) == (b"ratelimit-policy", b'"account";q=100;w=10')
    assert limit_header("account", bucket) == (b"ratelimit", b'"account";r=42;t=6')


def _limiter(**limits: Any) -> tuple[RateLimiter, list[SecurityEvent]]:
    settings = ThrottleSettings.model_validate({"limits": limits})
    events = SecurityEvents(Metrics("test", "test"), lambda: _NoAlerts())
    seen: list[SecurityEvent] = []

    async def keep(event: SecurityEvent) -> None:
        seen.append(event)

    events.listeners.append(keep)
    return RateLimiter(settings, events), seen


class _NoAlerts:
    async def report(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def clear(self, *args: Any, **kwargs: Any) -> None:
        return None


def _principal(account: uuid.UUID, key: uuid.UUID | None = None) -> Principal:
    return Principal(user_id=uuid.uuid4(), account_id=account, role=Role.member, api_key_id=key)


def test_the_key_and_its_account_each_take_a_token() -> None:
    limiter, _ = _limiter(
        account={"per_second": 0.001, "burst": 3},
        api_key={"per_second": 0.001, "burst": 2},
    )
    account, key = uuid.uuid4(), uuid.uuid4()
    request: dict[str, Any] = {}
    limiter.screen(request, _principal(account, key))
    assert request[RATE_LIMIT_HEADERS][0] == (b"ratelimit-policy", b'"api-key";q=2;w=2000')
    limiter.screen({}, _principal(account, key))
    with pytest.raises(TooManyRequests) as refused:
        limiter.screen({}, _principal(account, key))
    headers = refused.value.headers or {}
    assert headers["RateLimit"].startswith('"api-key";r=0;t=')
    assert int(headers["Retry-After"]) >= 1
    limiter.screen({}, _principal(account))  # the account's own last token
    with pytest.raises(TooManyRequests):
        limiter.screen({}, _principal(account))


def test_an_admins_override_gives_an_account_its_own_limit() -> None:
    special = uuid.uuid4()
    limiter, _ = _limiter(
        account={"per_second": 0.001, "burst": 1},
        accounts={str(special): {"per_second": 0.001, "burst": 5}},
    )
    for _ in range(5):
        limiter.screen({}, _principal(special))
    limiter.screen({}, _principal(uuid.uuid4()))
    with pytest.raises(TooManyRequests):
        limiter.screen({}, _principal(special))


async def test_two_limiters_on_one_store_share_what_they_spend() -> None:
    store = MemoryCounters()
    one, _ = _limiter(account={"per_second": 0.001, "burst": 10})
    two, _ = _limiter(account={"per_second": 0.001, "burst": 10})
    one.store = two.store = store
    account = uuid.uuid4()
    for limiter in (one, two):
        limiter.screen({}, _principal(account))
        await limiter.sync()  # each learns where the shared count stands
    for _ in range(3):
        one.screen({}, _principal(account))
    for _ in range(3):
        two.screen({}, _principal(account))
    await one.sync()
    await two.sync()
    await one.sync()
    # 8 spent of 10 in all: each process has 2 left, not 6, but for what the other spent
    # before this one first synced the bucket (``two`` never saw ``one``'s first token).
    assert [b.tokens for b in one.buckets.values()] == pytest.approx([2], abs=0.01)
    assert [b.tokens for b in two.buckets.values()] == pytest.approx([3], abs=0.01)


async def test_a_refusal_is_one_event_per_minute_and_bucket() -> None:
    limiter, seen = _limiter(account={"per_second": 0.001, "burst": 1})
    tasks: list[asyncio.Task[None]] = []
    limiter._spawn = lambda work: tasks.append(asyncio.get_running_loop().create_task(work))
    account = uuid.uuid4()
    limiter.screen({}, _principal(account))
    for _ in range(3):
        with pytest.raises(TooManyRequests):
            limiter.screen({}, _principal(account))
    await asyncio.gather(*tasks)
    assert [(e.kind, e.action) for e in seen] == [("rate-limit", "refused")]


# -- detectors ------------------------------------------------------------------------------


def _guard(**settings: Any) -> tuple[Guard, list[SecurityEvent]]:
    low = {
        "block_seconds": 10,
        "brute_force": {"threshold": 3},
        "stuffing": {"threshold": 3},
        "enumeration": {"threshold": 3},
        "distributed": {"threshold": 3},
        "bad_tokens": {"threshold": 3},
        "id_probing": {"threshold": 3},
        **settings,
    }
    events = SecurityEvents(Metrics("test", "test"), lambda: _NoAlerts())
    seen: list[SecurityEvent] = []

    async def keep(event: SecurityEvent) -> None:
        seen.append(event)

    events.listeners.append(keep)
    return Guard(ThrottleSettings.model_validate(low), MemoryCounters(), events), seen


async def test_brute_force_throttles_the_pair_with_doubling_delays() -> None:
    guard, seen = _guard()
    for _ in range(3):
        assert await guard.login_refusal("a@x.io", "1.1.1.1") is None
        await guard.login_failed("a@x.io", "1.1.1.1", "wrong-password")
    first = await guard.login_refusal("a@x.io", "1.1.1.1")
    assert first is not None
    assert (first.kind, first.retry_after) == ("brute-force", 10)
    assert await guard.login_refusal("a@x.io", "2.2.2.2") is None  # another source
    assert await guard.login_refusal("b@x.io", "1.1.1.1") is None  # another account
    # The throttling ends; the next failure throttles for twice as long.
    store = guard.store
    assert isinstance(store, MemoryCounters)
    for key in [k for k in store.values if k.startswith("b:")]:
        del store.values[key]
    await guard.login_failed("a@x.io", "1.1.1.1", "wrong-password")
    second = await guard.login_refusal("a@x.io", "1.1.1.1")
    assert second is not None
    assert second.retry_after == 20
    await guard.drain()
    assert [(e.kind, e.seconds, e.counts) for e in seen] == [
        ("brute-force", 10, {"failures": 3}),
        ("brute-force", 20, {"failures": 4}),
    ]


async def test_a_success_forgives_the_pair_and_makes_a_known_context() -> None:
    guard, _ = _guard()
    for _ in range(2):
        await guard.login_failed("a@x.io", "1.1.1.1", "wrong-password")
    await guard.login_succeeded("a@x.io", "1.1.1.1")
    for _ in range(2):
        await guard.login_failed("a@x.io", "1.1.1.1", "wrong-password")
    assert await guard.login_refusal("a@x.io", "1.1.1.1") is None


async def test_stuffing_and_enumeration_throttle_the_source() -> None:
    guard, seen = _guard()
    for n in range(3):
        await guard.login_failed(f"user{n}@x.io", "1.1.1.1", "wrong-password")
    for n in range(3):
        await guard.login_failed(f"ghost{n}@x.io", "3.3.3.3", "unknown-account")
    stuffed = await guard.login_refusal("anyone@x.io", "1.1.1.1")
    enumerated = await guard.login_refusal("anyone@x.io", "3.3.3.3")
    assert stuffed is not None
    assert stuffed.kind == "credential-stuffing"
    assert enumerated is not None
    assert enumerated.kind == "user-enumeration"
    await guard.drain()
    assert {e.kind for e in seen} == {"credential-stuffing", "user-enumeration"}


async def test_a_distributed_attack_spares_known_contexts() -> None:
    guard, seen = _guard()
    await guard.login_succeeded("a@x.io", "9.9.9.9")
    for n in range(3):
        await guard.login_failed("a@x.io", f"5.5.5.{n}", "wrong-password")
    refused = await guard.login_refusal("a@x.io", "6.6.6.6")
    assert refused is not None
    assert refused.kind == "distributed-attack"
    assert await guard.login_refusal("a@x.io", "9.9.9.9") is None
    await guard.drain()
    assert seen[-1].subject == "a@x.io"
    assert seen[-1].counts == {"sources": 3}


async def test_invalid_credentials_and_probing_throttle_the_source_in_memory() -> None:
    guard, _ = _guard()
    for _ in range(3):
        assert guard.source_refusal("1.1.1.1") is None
        await guard.invalid_credential("1.1.1.1")
    refusal = guard.source_refusal("1.1.1.1")
    assert refusal is not None
    assert refusal.kind == "invalid-credentials"
    for _ in range(3):
        await guard.id_not_found("2.2.2.2")
    refusal = guard.source_refusal("2.2.2.2")
    assert refusal is not None
    assert refusal.kind == "id-probing"
    assert guard.source_refusal("3.3.3.3") is None


async def test_another_process_adopts_a_running_throttling_without_escalating() -> None:
    one, seen = _guard()
    two, _ = _guard()
    two.store = one.store  # the shared counters
    for _ in range(3):
        await one.invalid_credential("1.1.1.1")
    await two.invalid_credential("1.1.1.1")  # its first failure there: over the threshold
    first, second = one.source_refusal("1.1.1.1"), two.source_refusal("1.1.1.1")
    assert first is not None
    assert second is not None
    assert first.retry_after == second.retry_after == 10
    await one.drain()
    await two.drain()
    assert len(seen) == 1


async def test_a_failing_store_lets_requests_through() -> None:
    guard, _ = _guard()

    class Broken(MemoryCounters):
        async def get_many(self, keys: Any) -> list[int | None]:
            raise ConnectionError("down")

        async def incr(self, key: str, amount: int, ttl: float) -> int:
            raise ConnectionError("down")

    guard.store = Broken()
    await guard.login_failed("a@x.io", "1.1.1.1", None)
    await guard.invalid_credential("1.1.1.1")
    assert await guard.login_refusal("a@x.io", "1.1.1.1") is None


# -- events ---------------------------------------------------------------------------------


async def test_an_event_is_counted_alerted_and_told_to_listeners_despite_failures() -> None:
    metrics = Metrics("test", "test")
    reported: list[tuple[str, str, Mapping[str, str]]] = []

    class Alerts(_NoAlerts):
        async def report(self, source: str, severity: str, message: str, **kw: Any) -> None:
            reported.append((source, severity, kw["labels"]))

    events = SecurityEvents(metrics, lambda: Alerts())
    told: list[str] = []

    async def broken(event: SecurityEvent) -> None:
        raise RuntimeError("audit down")

    async def audit(event: SecurityEvent) -> None:
        told.append(event.kind)

    events.listeners += [broken, audit]
    await events.emit(SecurityEvent("brute-force", "a@x.io from 1.1.1.1", "1.1.1.1", {"f": 3}))
    assert told == ["brute-force"]
    assert reported == [("security", "warning", {"kind": "brute-force"})]
    text = metrics.exposition().decode()
    assert 'renum_security_events_total{action="throttled",kind="brute-force"} 1.0' in text


# -- the counter stores ---------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis", "sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CounterStore]:
    if request.param == "memory":
        yield MemoryCounters()
        return
    if request.param == "redis":
        redis = services.redis()
        redis.require()
        found = RedisCounters(redis.url)
        try:
            yield found
        finally:
            await found.close()
        return
    async with migrated(request.param, tmp_path) as db:
        yield DatabaseCounters(db)


async def test_a_store_counts_expires_and_forgets(store: CounterStore) -> None:
    key = f"test:{uuid.uuid4().hex}"
    assert await store.incr(key, 1, 60) == 1
    assert await store.incr(key, 2, 60) == 3
    assert await store.get_many([key, key + ":absent"]) == [3, None]
    await store.put(key + ":block", 1234, 60)
    assert await store.get_many([key + ":block"]) == [1234]
    await store.put(key + ":block", 99, 60)  # replaced, not added
    assert await store.get_many([key + ":block"]) == [99]
    await store.delete(key)
    assert await store.get_many([key]) == [None]
    assert await store.incr(key, 1, 60) == 1  # starts again
    assert await store.get_many([]) == []
    await store.purge()


async def test_a_store_starts_an_expired_counter_again(store: CounterStore) -> None:
    key = f"test:{uuid.uuid4().hex}"
    await store.incr(key, 5, 1)
    await asyncio.sleep(1.1)
    assert await store.get_many([key]) == [None]
    assert await store.incr(key, 1, 60) == 1
    await store.purge()


async def test_a_store_counts_distinct_members(store: CounterStore) -> None:
    key = f"test:{uuid.uuid4().hex}"
    counts = [await add_member(store, key, m, 600) for m in ("a", "b", "a", "c", "b")]
    assert counts == [1, 2, 2, 3, 3]


async def test_concurrent_increments_are_all_counted(store: CounterStore) -> None:
    key = f"test:{uuid.uuid4().hex}"
    values = await asyncio.gather(*(store.incr(key, 1, 60) for _ in range(20)))
    assert sorted(values) == list(range(1, 21))


def test_ended_throttlings_are_forgotten() -> None:
    events = SecurityEvents(Metrics("test", "test"), lambda: _NoAlerts())
    guard = Guard(ThrottleSettings(), MemoryCounters(), events)
    now = time.time()
    guard.source_blocks = {"1.1.1.1": (now - 1, "id-probing"), "2.2.2.2": (now + 60, "probing")}
    guard.prune_source_blocks()
    assert list(guard.source_blocks) == ["2.2.2.2"]


def test_an_ipv6_client_counts_as_its_64_network() -> None:
    from app.capabilities.security.screen import source_of

    assert (
        source_of("2001:db8:1:2:aaaa::1")
        == source_of("2001:db8:1:2:ffff::9")
        == ("2001:db8:1:2::/64")
    )
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("198.51.100.7") == "198.51.100.7"
    assert source_of("unknown") == "unknown"


async def test_a_usual_login_writes_nothing_to_the_counters() -> None:
    store = MemoryCounters()
    guard = Guard(ThrottleSettings(), store, SecurityEvents(Metrics("t", "t"), lambda: _NoAlerts()))
    writes: list[str] = []
    for name in ("put", "delete", "incr"):
        original = getattr(store, name)

        async def recorded(*args: Any, _name: str = name, _original: Any = original) -> Any:
            writes.append(_name)
            return await _original(*args)

        setattr(store, name, recorded)
    first = await guard.login_check("a@x.io", "1.1.1.1")
    assert (first.refusal, first.known, first.failures) == (None, False, 0)
    await guard.login_succeeded("a@x.io", "1.1.1.1", first)
    assert writes == ["put"]  # the source becomes a known context
    writes.clear()
    again = await guard.login_check("a@x.io", "1.1.1.1")
    assert again.known
    await guard.login_succeeded("a@x.io", "1.1.1.1", again)
    assert writes == []  # known already, no failure to forgive
    await guard.login_failed("a@x.io", "1.1.1.1", "wrong-password")
    after_failure = await guard.login_check("a@x.io", "1.1.1.1")
    assert after_failure.failures == 1
    writes.clear()
    await guard.login_succeeded("a@x.io", "1.1.1.1", after_failure)
    assert writes == ["delete"]  # the failure forgiven
