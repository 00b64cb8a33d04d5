"""``SmartCache`` (``app.capabilities.performance.cache``): hits and misses, invalidation by
account and for the all-accounts view, time to live, one computation for many concurrent
misses, errors never kept, Redis shared by two processes' caches, and memory while Redis is
unreachable. Redis is the machine's (127.0.0.1:6379); keys hold random account ids, so tests
running at once never share one (the all-accounts view is tested in memory only)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from app.capabilities.performance.cache import SmartCache
from app.core.config import CacheSettings
from app.repositories.base import Scope
from qa.fault_proxy import FaultProxy
from qa.polling import wait_until_async

pytestmark = pytest.mark.anyio
REDIS_URL = "redis://127.0.0.1:6379/0"


class Report(BaseModel):
    owner: str
    version: int
    cost: Decimal = Decimal("0.0012")


class Source:
    """What the reads compute from: a version per owner, and how often each was computed."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.computed: list[str] = []

    def compute(self, owner: str) -> Callable[[], asyncio.Future[Report] | object]:
        async def run() -> Report:
            self.computed.append(owner)
            return Report(owner=owner, version=self.versions.get(owner, 0))

        return run


def outcomes(cache: SmartCache, kind: str = "usage") -> dict[str, float]:
    return {
        outcome: cache.reads.labels(kind, outcome)._value.get()
        for outcome in ("hit", "miss", "shared", "error")
    }


@pytest.fixture
async def memory() -> AsyncIterator[SmartCache]:
    cache = SmartCache(CacheSettings(), CollectorRegistry())
    yield cache
    await cache.close()


async def read(
    cache: SmartCache, source: Source, account: uuid.UUID | None, *params: object
) -> Report:
    owner = "all" if account is None else str(account)
    return await cache.read("usage", Scope(account), params, Report, source.compute(owner))


async def test_an_answer_is_kept_per_scope_and_parameters(memory: SmartCache) -> None:
    source = Source()
    a, b = uuid.uuid4(), uuid.uuid4()
    first = await read(memory, source, a, "team")
    again = await read(memory, source, a, "team")
    assert again == first
    assert again.cost == Decimal("0.0012")  # the model comes back whole
    await read(memory, source, a, "agent")  # other parameters
    await read(memory, source, b, "team")  # another account
    await read(memory, source, None, "team")  # every account (an admin)
    assert source.computed == [str(a), str(a), str(b), "all"]
    assert outcomes(memory) == {"hit": 1, "miss": 4, "shared": 0, "error": 0}


async def test_a_change_renews_its_account_and_the_all_accounts_view(memory: SmartCache) -> None:
    source = Source()
    a, b = uuid.uuid4(), uuid.uuid4()
    for account in (a, b, None):
        await read(memory, source, account, "team")
    source.versions[str(a)] = 1
    memory.changed("usage", a)
    assert (await read(memory, source, a, "team")).version == 1  # at once, in this process
    assert (await read(memory, source, b, "team")).version == 0  # kept: b did not change
    await read(memory, source, None, "team")  # recomputed: it shows a's data too
    assert source.computed == [str(a), str(b), "all", str(a), "all"]
    memory.changed("executions", b)  # another kind: usage answers stay
    await read(memory, source, b, "team")
    assert source.computed.count(str(b)) == 1


async def test_an_answer_expires_with_its_time_to_live() -> None:
    cache = SmartCache(CacheSettings(ttl_seconds={"usage": 0.05}), CollectorRegistry())
    source = Source()
    account = uuid.uuid4()
    await read(cache, source, account, "team")
    await read(cache, source, account, "team")
    assert len(source.computed) == 1
    await asyncio.sleep(0.2)
    await read(cache, source, account, "team")
    assert len(source.computed) == 2
    await cache.close()


async def test_a_thousand_concurrent_misses_compute_once(memory: SmartCache) -> None:
    release = asyncio.Event()
    computed = 0

    async def slow() -> Report:
        nonlocal computed
        computed += 1
        await release.wait()
        return Report(owner="a", version=7)

    account = uuid.uuid4()
    reads = [
        asyncio.ensure_future(memory.read("usage", Scope(account), ("team",), Report, slow))
        for _ in range(1000)
    ]
    await wait_until_async(lambda: outcomes(memory)["shared"] >= 999, what="every read waiting")
    release.set()
    answers = await asyncio.gather(*reads)
    assert computed == 1
    assert {answer.version for answer in answers} == {7}
    assert outcomes(memory) == {"hit": 0, "miss": 1, "shared": 999, "error": 0}


async def test_a_read_waiting_for_a_cancelled_computation_computes_its_own(
    memory: SmartCache,
) -> None:
    never = asyncio.Event()

    async def hangs() -> Report:
        await never.wait()
        raise AssertionError("never ends")

    async def answers() -> Report:
        return Report(owner="second", version=2)

    account = uuid.uuid4()
    first = asyncio.ensure_future(memory.read("usage", Scope(account), (), Report, hangs))
    await wait_until_async(lambda: outcomes(memory)["miss"] == 1, what="the first computing")
    second = asyncio.ensure_future(memory.read("usage", Scope(account), (), Report, answers))
    await wait_until_async(lambda: outcomes(memory)["shared"] == 1, what="the second waiting")
    first.cancel()
    assert (await second).owner == "second"
    assert first.cancelled()
    third = asyncio.ensure_future(memory.read("usage", Scope(account), (), Report, hangs))
    await wait_until_async(lambda: outcomes(memory)["miss"] == 2, what="the third computing")
    waiting = asyncio.ensure_future(memory.read("usage", Scope(account), (), Report, answers))
    await wait_until_async(lambda: outcomes(memory)["shared"] == 2, what="a waiter")
    waiting.cancel()  # a waiter cancelled itself stays cancelled
    with pytest.raises(asyncio.CancelledError):
        await waiting
    third.cancel()


async def test_an_error_is_never_kept(memory: SmartCache) -> None:
    calls = 0

    async def failing() -> Report:
        nonlocal calls
        calls += 1
        raise RuntimeError("database went away")

    account = uuid.uuid4()
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await memory.read("usage", Scope(account), (), Report, failing)
    assert calls == 2


async def test_redis_is_shared_by_the_caches_of_two_processes() -> None:
    one = SmartCache(CacheSettings(), CollectorRegistry(), REDIS_URL)
    other = SmartCache(CacheSettings(), CollectorRegistry(), REDIS_URL)
    source = Source()
    account = uuid.uuid4()
    try:
        await read(one, source, account, "team")
        assert (await read(other, source, account, "team")).version == 0
        assert len(source.computed) == 1  # the other process found it in Redis
        source.versions[str(account)] = 3
        one.changed("usage", account)  # a write in the first process
        await read(one, source, account, "team")
        assert (await read(other, source, account, "team")).version == 3
        assert outcomes(other)["hit"] == 2
    finally:
        await one.close()
        await other.close()


async def test_reads_go_on_in_memory_while_redis_is_away_and_it_hears_what_it_missed() -> None:
    with FaultProxy("127.0.0.1", 6379) as proxy:
        host, port = proxy.address
        cache = SmartCache(CacheSettings(), CollectorRegistry(), f"redis://{host}:{port}/0")
        witness = SmartCache(CacheSettings(), CollectorRegistry(), REDIS_URL)
        source = Source()
        account = uuid.uuid4()
        try:
            await read(cache, source, account, "team")  # kept in Redis
            proxy.refuse()
            proxy.cut()
            first = await read(cache, source, account, "team")  # Redis fails: computed
            assert first.version == 0
            assert outcomes(cache)["error"] == 1
            await read(cache, source, account, "team")  # now from memory
            assert outcomes(cache)["hit"] == 1
            source.versions[str(account)] = 5
            cache.changed("usage", account)  # Redis cannot hear of it now
            assert (await read(cache, source, account, "team")).version == 5
            proxy.pass_through()
            cache._redis_down_until = 0.0  # the retry delay over, as if time had passed
            await read(cache, source, account, "team")  # back on Redis, told what it missed
            assert (await read(witness, source, account, "team")).version == 5
        finally:
            await cache.close()
            await witness.close()


async def test_a_generation_lost_makes_answers_be_computed_again(memory: SmartCache) -> None:
    source = Source()
    account = uuid.uuid4()
    await read(memory, source, account, "team")
    await memory.memory.delete(f"renum:generation:usage:{account}")  # evicted
    await read(memory, source, account, "team")
    assert len(source.computed) == 2
