"""What a load test measured, summarised per route, per route group and overall.

Locust writes its final statistics with ``--json-file``: one entry per request name, each with
its response-time histogram (milliseconds, rounded the way Locust rounds them). Histograms add
up exactly, so a route group's percentiles are computed from its routes' merged histograms with
Locust's own percentile rule, not averaged. Throughput is requests per second over the whole
test window. The summary (``summarise``) is what thresholds check, what baselines store and
what comparisons read.
"""

from __future__ import annotations

import csv
import fnmatch
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

Summary = dict[str, Any]
UNGROUPED = "other"
# Entries the scenarios record themselves (an execution's end-to-end time): grouped like the
# others, but not HTTP requests, so left out of the overall figures.
NOT_HTTP = frozenset({"EXECUTION"})


def percentile(histogram: Mapping[int, int], count: int, share: float) -> float:
    """Locust's rule: the smallest response time with at most ``share`` of requests below."""
    if count == 0:
        return 0.0
    wanted = int(count * share)
    seen = 0
    for millis in sorted(histogram, reverse=True):
        seen += histogram[millis]
        if count - seen <= wanted:
            return float(millis)
    return 0.0  # pragma: no cover - unreachable when the histogram holds ``count`` requests


def route_key(entry: Mapping[str, Any]) -> str:
    """``METHOD name``, as thresholds and reports name a route (``GET /api/v1/usage``)."""
    method = entry.get("method") or ""
    return f"{method} {entry['name']}".strip()


def group_of(route: str, groups: Mapping[str, Iterable[str]]) -> str:
    """The first group with a pattern (fnmatch, ``*`` any text) matching the route."""
    for name, patterns in groups.items():
        if any(fnmatch.fnmatchcase(route, pattern) for pattern in patterns):
            return name
    return UNGROUPED


def _stats(entries: list[Mapping[str, Any]], seconds: float) -> dict[str, float]:
    histogram: Counter[int] = Counter()
    requests = failures = 0
    total_time = 0.0
    slowest = 0.0
    for entry in entries:
        histogram.update({int(k): int(v) for k, v in entry["response_times"].items()})
        requests += int(entry["num_requests"])
        failures += int(entry["num_failures"])
        total_time += float(entry["total_response_time"])
        slowest = max(slowest, float(entry["max_response_time"] or 0))
    timed = sum(histogram.values())
    return {
        "requests": requests,
        "failures": failures,
        "failure_ratio": round(failures / requests, 6) if requests else 0.0,
        "rps": round(requests / seconds, 3) if seconds > 0 else 0.0,
        "avg_ms": round(total_time / timed, 1) if timed else 0.0,
        "p50_ms": percentile(histogram, timed, 0.50),
        "p95_ms": percentile(histogram, timed, 0.95),
        "p99_ms": percentile(histogram, timed, 0.99),
        "max_ms": slowest,
    }


def window(entries: Iterable[Mapping[str, Any]]) -> float:
    """Seconds from the first request's start to the last request (at least one second)."""
    entries = list(entries)
    starts = [float(e["start_time"]) for e in entries if e.get("start_time")]
    ends = [float(e["last_request_timestamp"]) for e in entries if e.get("last_request_timestamp")]
    if not starts or not ends:
        return 1.0
    return max(1.0, max(ends) - min(starts))


def summarise(
    entries: Sequence[Mapping[str, Any]],
    groups: Mapping[str, Iterable[str]],
    seconds: float | None = None,
) -> Summary:
    """Overall, per-group and per-route figures of Locust's serialised stats entries."""
    entries = [e for e in entries if e.get("name") != "Aggregated"]
    seconds = seconds if seconds is not None else window(entries)
    by_group: dict[str, list[Mapping[str, Any]]] = {}
    for entry in entries:
        by_group.setdefault(group_of(route_key(entry), groups), []).append(entry)
    return {
        "duration_s": round(seconds, 1),
        "overall": _stats([e for e in entries if e.get("method") not in NOT_HTTP], seconds),
        "groups": {name: _stats(items, seconds) for name, items in sorted(by_group.items())},
        "routes": {route_key(e): _stats([e], seconds) for e in sorted(entries, key=route_key)},
    }


def load_locust_json(path: Path) -> list[dict[str, Any]]:
    """The entries Locust wrote with ``--json-file`` (the file ends in ``.json``)."""
    entries: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return entries


def load_failures(path: Path, limit: int = 10) -> list[dict[str, str]]:
    """The most frequent failures Locust recorded (its ``_failures.csv``), most frequent first."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    rows.sort(key=lambda row: -int(row.get("Occurrences") or 0))
    return rows[:limit]
