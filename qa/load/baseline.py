"""Baselines: a run's summary saved as JSON, and the comparison of a new run against one.

``load/baselines/<profile>.json`` holds the committed baseline of the current release. A
comparison looks at every scope of the baseline (overall and each route group) and rates each
metric ``better``, ``within`` (tolerance) or ``regression``; a scope the new run lacks is
``missing``, which fails like a regression. Latencies (p95, p99) regress when they grow by more
than their relative tolerance *and* by more than ``latency_floor_ms`` (a 5 ms route turning
15 ms is scheduling noise on a busy machine, not a regression); throughput regresses when it
drops by more than its tolerance; the failure ratio when it grows by more than its absolute
tolerance. A group the baseline saw fewer than ``min_requests`` times (a probe scraped twenty
times in a run) is judged on its failure ratio only: its percentiles and rate are shown but
rated ``too few to judge``, since a handful of requests says nothing about them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qa.load.results import Summary
from qa.load.thresholds import Tolerances

BETTER, WITHIN, REGRESSION, MISSING = "better", "within", "regression", "missing"
FEW = "too few to judge"
FORMAT = 1


class BaselineError(ValueError):
    """The baseline cannot be read; the message says why."""


@dataclass(frozen=True)
class Delta:
    scope: str
    metric: str
    baseline: float | None
    current: float | None
    allowed: str  # the tolerance in words, e.g. "+15%"
    status: str

    @property
    def change(self) -> str:
        if self.baseline is None or self.current is None:
            return "-"
        if self.metric == "failure_ratio":
            return f"{(self.current - self.baseline) * 100:+.2f} pp"
        if self.baseline == 0:
            return "+0%" if self.current == 0 else "new"
        return f"{(self.current / self.baseline - 1) * 100:+.1f}%"


def save(summary: Summary, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": FORMAT, **summary}, indent=2) + "\n", encoding="utf-8")
    return path


def load(path: Path) -> Summary:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BaselineError(f"cannot read the baseline {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise BaselineError(f"the baseline {path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "overall" not in data:
        raise BaselineError(f"{path} is not a load-test baseline (format {FORMAT})")
    return data


def _latency(scope: str, metric: str, base: float, now: float, share: float, floor: float) -> Delta:
    grew, shrank = now - base, base - now
    if grew > base * share and grew > floor:
        status = REGRESSION
    elif shrank > base * share and shrank > floor:
        status = BETTER
    else:
        status = WITHIN
    return Delta(scope, metric, base, now, f"+{share:.0%}", status)


def _throughput(scope: str, base: float, now: float, share: float) -> Delta:
    if now < base * (1 - share):
        status = REGRESSION
    elif now > base * (1 + share):
        status = BETTER
    else:
        status = WITHIN
    return Delta(scope, "rps", base, now, f"-{share:.0%}", status)


def _failures(scope: str, base: float, now: float, allowed: float) -> Delta:
    if now > base + allowed:
        status = REGRESSION
    elif now < base - allowed:
        status = BETTER
    else:
        status = WITHIN
    return Delta(scope, "failure_ratio", base, now, f"+{allowed * 100:.2f} pp", status)


def compare(baseline: Summary, current: Summary, tolerances: Tolerances) -> list[Delta]:
    scopes = [("overall", baseline["overall"], current.get("overall"))]
    for name, figures in sorted(baseline.get("groups", {}).items()):
        scopes.append((f"group:{name}", figures, current.get("groups", {}).get(name)))
    deltas: list[Delta] = []
    for scope, base, now in scopes:
        if not now or not now.get("requests"):
            deltas.append(Delta(scope, "requests", base.get("requests"), None, "-", MISSING))
            continue
        floor = tolerances.latency_floor_ms
        deltas += [
            _latency(
                scope, "p95_ms", base["p95_ms"], now["p95_ms"], tolerances.p95_increase, floor
            ),
            _latency(
                scope, "p99_ms", base["p99_ms"], now["p99_ms"], tolerances.p99_increase, floor
            ),
            _throughput(scope, base["rps"], now["rps"], tolerances.rps_decrease),
        ]
        if base.get("requests", 0) < tolerances.min_requests:
            deltas[-3:] = [_few(d) for d in deltas[-3:]]
        deltas.append(
            _failures(
                scope,
                base["failure_ratio"],
                now["failure_ratio"],
                tolerances.failure_ratio_increase,
            )
        )
    return deltas


def _few(delta: Delta) -> Delta:
    return Delta(delta.scope, delta.metric, delta.baseline, delta.current, delta.allowed, FEW)


def regressed(deltas: list[Delta]) -> bool:
    return any(d.status in (REGRESSION, MISSING) for d in deltas)


def notes(baseline: Summary, current: Summary) -> list[str]:
    """Why two runs may not be comparable (another profile, size or database)."""
    found = []
    for key in ("profile", "peak_users", "planned_duration_s", "backend"):
        if key in baseline and baseline.get(key) != current.get(key):
            found.append(
                f"{key} differs: baseline {baseline.get(key)!r}, this run {current.get(key)!r}"
            )
    return found


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.4g}"


def comparison_table(deltas: list[Delta], baseline_name: str) -> str:
    lines = [
        f"Compared with {baseline_name}:",
        "",
        "| scope | metric | baseline | this run | change | tolerance | result |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for d in deltas:
        result = d.status.upper() if d.status in (REGRESSION, MISSING) else d.status
        lines.append(
            f"| {d.scope} | {d.metric} | {_number(d.baseline)} | {_number(d.current)} | "
            f"{d.change} | {d.allowed} | {result} |"
        )
    bad = sum(1 for d in deltas if d.status in (REGRESSION, MISSING))
    lines += ["", f"{bad} regression(s)" if bad else "no regression beyond the tolerances"]
    return "\n".join(lines)
