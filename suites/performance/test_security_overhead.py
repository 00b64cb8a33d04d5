"""What the security screening costs a request: the same app with the security capability on
(its headers added to every answer; the intrusion detection's hooks, which the base calls
where it decides anyway, with trusted proxies configured; the audit trail's observer; the
scanner, which runs in the background and never on a request, off) and off, in one run. The
small JSON route is mounted under the API's prefix (``API_ROUTE``).

As in ``test_performance_overhead``: both apps serve the same small JSON route, tried first;
requests alternate between them one by one, each app called directly as ASGI; the figure is
the median over rounds of the per-round ratio of requests per second, on over off. The issue's
target: the screening costs at most 3% (a ratio of 0.97 or more). Never an assertion on wall
time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from bench_support import alternating_rates, bench_app

TARGET_RATIO = 0.97
API_ROUTE = "/api/v1/bench/json"


def test_security_screening_costs_at_most_three_percent(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    screened = bench_app(
        tmp_path,
        "on",
        API_ROUTE,
        security={
            "enabled": True,
            "scanner": {"enabled": False},
            "throttle": {"enabled": True, "trusted_proxies": ["10.0.0.0/8"]},
        },
    )
    without = bench_app(tmp_path, "off", API_ROUTE, security={"enabled": False})
    assert screened.state.response_headers  # the screening is there to be measured
    assert screened.state.throttling is not None
    assert without.state.response_headers == []
    assert getattr(without.state, "throttling", None) is None

    rates = asyncio.run(alternating_rates(screened, without, API_ROUTE, rounds=9, requests=3000))
    record_property("security_on_rps", round(rates.on))
    record_property("security_off_rps", round(rates.off))
    record_property("security_ratio", round(rates.ratio, 3))
    print(f"\nsecurity on {rates.on:.0f} req/s, off {rates.off:.0f} req/s, {rates.ratio:.3f}")
    assert rates.ratio >= TARGET_RATIO, f"the screened app served {rates.ratio:.1%} of the other's"
