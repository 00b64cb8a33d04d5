"""A property of the cache of costly reads (``app.capabilities.performance.cache``) over any
sequence of reads and writes by two tenants and a platform admin, in one process:

- isolation: a read answers with data computed for the same scope (the tenant's own account,
  or every account for the admin) and the same parameters, never another's, however alike
  their parameters;
- freshness: every answer equals what the data holds at that moment, since each write says
  what it changed (``changed``) and this process hears of it before its next read.
"""

from __future__ import annotations

import asyncio
import uuid

from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from app.capabilities.performance.cache import SmartCache
from app.core.config import CacheSettings
from app.repositories.base import Scope

TENANTS = [uuid.UUID(int=1), uuid.UUID(int=2)]
WHO = [*TENANTS, None]  # None: a platform admin, who sees every account
PARAMS = [("team",), ("team", None), ("agent",), ("team", "2026-01-01")]
KINDS = ["usage", "executions"]


class Answer(BaseModel):
    scope: str
    params: str
    totals: dict[str, int]


def truth(
    data: dict[tuple[str, uuid.UUID], int], kind: str, who: uuid.UUID | None
) -> dict[str, int]:
    return {
        str(account): data[(kind, account)] for account in TENANTS if who is None or account == who
    }


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("read"), st.sampled_from(KINDS), st.sampled_from(WHO), st.sampled_from(PARAMS)
        ),
        st.tuples(st.just("write"), st.sampled_from(KINDS), st.sampled_from(TENANTS), st.just(())),
    ),
    max_size=60,
)


@given(operations)
@example(  # the admin's view, kept, then a tenant writes: the view must be computed again
    [
        ("read", "usage", None, ("team",)),
        ("write", "usage", TENANTS[0], ()),
        ("read", "usage", None, ("team",)),
    ]
)
def test_a_read_answers_for_its_own_scope_and_the_data_as_it_is(
    steps: list[tuple[str, str, uuid.UUID | None, tuple[object, ...]]],
) -> None:
    async def run() -> None:
        cache = SmartCache(CacheSettings(), CollectorRegistry())
        data = {(kind, account): 0 for kind in KINDS for account in TENANTS}
        try:
            for action, kind, who, params in steps:
                if action == "write":
                    assert who is not None
                    data[(kind, who)] += 1
                    cache.changed(kind, who)
                    continue
                scope_name = "all" if who is None else str(who)

                async def compute(
                    kind: str = kind,
                    who: uuid.UUID | None = who,
                    params: object = params,
                    scope_name: str = scope_name,
                ) -> Answer:
                    return Answer(
                        scope=scope_name, params=repr(params), totals=truth(data, kind, who)
                    )

                answer = await cache.read(kind, Scope(who), params, Answer, compute)
                assert answer.scope == scope_name  # never another scope's answer
                assert answer.params == repr(params)
                assert answer.totals == truth(data, kind, who)  # never a stale one
        finally:
            await cache.close()

    asyncio.run(run())
