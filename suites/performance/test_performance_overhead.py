"""What profiling slow requests costs a request when nothing is slow: the same app with the
performance capability on (compression and the cache off, so that the profiler's share shows
alone) and off, in one run.

As in ``test_monitor_overhead``: both apps serve the same small JSON route, tried first;
requests alternate between them one by one, each app called directly as ASGI; the figure is
the median over rounds of the per-round ratio of requests per second, on over off. The issue's
target: profiling costs at most 2% while nothing is slow (a ratio of 0.98 or more). Never an
assertion on wall time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from bench_support import SMALL_ROUTE, alternating_rates, bench_app

TARGET_RATIO = 0.98


def test_profiling_costs_at_most_two_percent_when_nothing_is_slow(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    only_profiling = {"compression": {"enabled": False}, "cache": {"enabled": False}}
    profiled = bench_app(tmp_path, "on", performance={"enabled": True, **only_profiling})
    without = bench_app(tmp_path, "off", performance={"enabled": False})
    slow = profiled.state.performance.slow_requests

    def nothing_was_slow() -> None:
        assert slow.armed == {}
        assert not slow.profiles

    rates = asyncio.run(
        alternating_rates(
            profiled, without, SMALL_ROUTE, rounds=9, requests=3000, while_running=nothing_was_slow
        )
    )
    record_property("profiling_on_rps", round(rates.on))
    record_property("profiling_off_rps", round(rates.off))
    record_property("profiling_ratio", round(rates.ratio, 3))
    print(f"\nprofiling on {rates.on:.0f} req/s, off {rates.off:.0f} req/s, {rates.ratio:.3f}")
    assert rates.ratio >= TARGET_RATIO, f"the profiled app served {rates.ratio:.1%} of the other's"
