"""``SmartCache``: the performance capability's cache of costly reads (``app.services.
read_cache``), on cashews: in memory by default (an LRU of ``max_entries`` with expiry), in
Redis when ``redis_url`` is set (shared by every process), back in memory while Redis is
unreachable.

A kept answer is found by its kind, the caller's scope (one account, or all of them for a
platform admin), a hash of the read's parameters, and the current *generation* of that kind
for that scope: a random token that ``changed(kind, account_id)`` replaces, for the account and
for the all-accounts view at once. Entries of an older generation are never read again and
expire with their time to live (``ttl_seconds`` per kind). A token that went missing (evicted,
or Redis restarted) is replaced by a new one, never by an old value, so a lost generation can
only make answers be computed again, never make a forgotten one come back. A scope's answers
are never found under another scope's key: the account is part of every key.

Concurrent misses of one key in a process share one computation (the first caller computes;
the others wait for its answer): a thousand requests for an expired usage report run its
query once. Errors are never kept. Every read is counted in
``renum_cache_reads_total{kind,outcome}`` (``hit``, ``miss``, ``shared``: waited for
another's computation; ``error``: Redis failed, and the read went to memory).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel

from app.core.config import CacheSettings
from app.core.logging import get_logger
from app.repositories.base import Scope
from app.services.engine.state import Changes
from app.services.read_cache import KINDS, ReadCache

if TYPE_CHECKING:
    from cashews import Cache

M = TypeVar("M", bound=BaseModel)
OUTCOMES = ("hit", "miss", "shared", "error")
ALL_ACCOUNTS = "all"
REDIS_RETRY_SECONDS = 30.0
READS_METRIC = "renum_cache_reads"

log = get_logger("app.performance")


def _redis_installed() -> bool:
    try:
        import redis.asyncio  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True


class SmartCache(ReadCache):
    """Answers kept by kind, scope, parameters and generation (see the module)."""

    def __init__(
        self,
        settings: CacheSettings,
        registry: CollectorRegistry,
        redis_url: str | None = None,
    ) -> None:
        # cashews is imported here, when the app starts with the cache on: it imports the
        # optional redis package when that is installed, and creating the app imports no
        # optional integration.
        from cashews import Cache
        from cashews.exceptions import CacheBackendInteractionError

        self.backend_error = CacheBackendInteractionError
        self.settings = settings
        self.memory = Cache(name="renum-memory")
        self.memory.setup("mem://", size=settings.max_entries, check_interval=5)
        self.redis: Cache | None = None
        if redis_url and not _redis_installed():
            log.warning("cache_in_memory", reason="redis_url is set but the redis package is not")
        elif redis_url:
            self.redis = Cache(name="renum-redis")
            self.redis.setup(
                redis_url,
                suppress=False,  # errors reach us: we fall back to memory
                pickle_type="json",  # JSON text only: nothing in Redis can run code here
                socket_connect_timeout=0.5,
                socket_timeout=0.5,
                wait_for_connection_timeout=0.5,
            )
        self._redis_down_until = float("-inf")
        self._missed: set[tuple[str, str]] = set()  # changes Redis did not hear of
        self._inflight: dict[str, asyncio.Future[str]] = {}
        self._invalidating: set[asyncio.Task[None]] = set()
        self.reads = Counter(
            READS_METRIC,
            "Reads of the cache of costly reads, by kind and outcome.",
            ["kind", "outcome"],
            registry=registry,
        )
        for kind in KINDS:
            for outcome in OUTCOMES:
                self.reads.labels(kind, outcome)

    @property
    def backend(self) -> Cache:
        """Redis when it is configured and not known to be down, else memory."""
        if self.redis is not None and time.monotonic() >= self._redis_down_until:
            return self.redis
        return self.memory

    def _redis_failed(self, error: Exception) -> None:
        if self.backend is self.redis:
            log.warning(
                "cache_redis_unreachable",
                error_type=type(error).__name__,
                retry_in_seconds=REDIS_RETRY_SECONDS,
            )
        self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS

    # -- reading -------------------------------------------------------------------------------

    async def read(
        self,
        kind: str,
        scope: Scope,
        params: tuple[Hashable, ...],
        model: type[M],
        compute: Callable[[], Awaitable[M]],
    ) -> M:
        if self._invalidating:  # this process's own writes apply before its next read
            await asyncio.gather(*self._invalidating)
        if self._missed and self.redis is not None and self.backend is self.redis:
            await self._tell_redis_what_it_missed(self.redis)
        owner = ALL_ACCOUNTS if scope.account_id is None else str(scope.account_id)
        digest = hashlib.blake2b(repr(params).encode(), digest_size=16).hexdigest()
        backend = self.backend
        try:
            return await self._read(backend, kind, owner, digest, model, compute)
        except self.backend_error as error:  # Redis failed before computing
            self._redis_failed(error)
            self.reads.labels(kind, "error").inc()
            return await self._read(self.memory, kind, owner, digest, model, compute)

    async def _read(
        self,
        backend: Cache,
        kind: str,
        owner: str,
        digest: str,
        model: type[M],
        compute: Callable[[], Awaitable[M]],
    ) -> M:
        generation = await self._generation(backend, kind, owner)
        key = f"renum:read:{kind}:{owner}:{generation}:{digest}"
        kept = await backend.get(key)
        if isinstance(kept, str):
            self.reads.labels(kind, "hit").inc()
            return model.model_validate_json(kept)
        waiting = self._inflight.get(key)
        if waiting is not None:
            self.reads.labels(kind, "shared").inc()
            try:
                return model.model_validate_json(await asyncio.shield(waiting))
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this request was cancelled itself
                # The request computing it was cancelled (its client went, the server stops):
                # this one computes its own answer rather than fail with it.
                return await compute()
        self.reads.labels(kind, "miss").inc()
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            answer = await compute()
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved here: only the waiters care
            raise
        else:
            text = answer.model_dump_json()
            future.set_result(text)
            await self._keep(backend, key, text, self.settings.ttl_seconds[kind])
            return answer
        finally:
            del self._inflight[key]

    async def _keep(self, backend: Cache, key: str, text: str, ttl: float) -> None:
        try:
            await backend.set(key, text, expire=ttl)
        except self.backend_error as error:
            self._redis_failed(error)

    async def _generation(self, backend: Cache, kind: str, owner: str) -> str:
        key = f"renum:generation:{kind}:{owner}"
        current = await backend.get(key)
        if isinstance(current, str):
            return current
        await backend.set(key, secrets.token_hex(8), exist=False)  # the first one set wins
        current = await backend.get(key)
        return current if isinstance(current, str) else secrets.token_hex(8)

    # -- invalidation --------------------------------------------------------------------------

    def changed(self, kind: str, account_id: uuid.UUID) -> None:
        task = asyncio.get_running_loop().create_task(self._renew(kind, str(account_id)))
        self._invalidating.add(task)
        task.add_done_callback(self._invalidating.discard)

    async def _renew(self, kind: str, owner: str) -> None:
        """New generations of ``kind`` for ``owner`` and for all accounts: in memory always
        (it answers while Redis is away), in Redis when it is up; a change Redis could not
        hear of is told to it when it is back."""
        for scope in (owner, ALL_ACCOUNTS):
            await self.memory.set(f"renum:generation:{kind}:{scope}", secrets.token_hex(8))
        if self.redis is None:
            return
        self._missed.add((kind, owner))
        if self.backend is self.redis:
            await self._tell_redis_what_it_missed(self.redis)

    async def _tell_redis_what_it_missed(self, redis: Cache) -> None:
        missed, self._missed = self._missed, set()
        try:
            for kind, owner in missed:
                for scope in (owner, ALL_ACCOUNTS):
                    await redis.set(f"renum:generation:{kind}:{scope}", secrets.token_hex(8))
        except self.backend_error as error:
            self._missed |= missed
            self._redis_failed(error)

    def on_engine_commit(self, changes: Changes) -> None:
        """The engine committed a transaction of an execution: its list entry changed, and
        its account's usage when the transaction booked model calls."""
        account_id = changes.run.account_id
        self.changed("executions", account_id)
        if changes.ledger_rows:
            self.changed("usage", account_id)

    async def close(self) -> None:
        if self._invalidating:
            await asyncio.gather(*self._invalidating, return_exceptions=True)
        for cache in (self.memory, self.redis):
            if cache is not None:
                await cache.close()
