"""Fixtures of the performance suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bench_support import Bench, open_bench


@pytest.fixture(params=["sqlite", "postgresql"], scope="module")
def bench(request: pytest.FixtureRequest) -> Iterator[Bench]:
    yield from open_bench(request.param)
