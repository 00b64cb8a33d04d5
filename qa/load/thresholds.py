"""SLA thresholds (``load/thresholds.toml``) and their verdict.

The file names route groups (fnmatch patterns over ``METHOD route-template``), the service
levels per scope (``[sla.overall]``, ``[sla.groups.NAME]``, ``[sla.resources]``), stricter or
looser values per profile (``[profiles.NAME.overall]``, ...), and the tolerances of the baseline
comparison (``[compare]``). A threshold is ``max_<metric>`` (a ceiling) or ``min_<metric>`` (a
floor) over a metric of the run's summary: ``p50_ms``, ``p95_ms``, ``p99_ms``, ``avg_ms``,
``failure_ratio``, ``rps``; for resources ``cpu_percent_mean``, ``cpu_percent_peak``,
``rss_mb_mean``, ``rss_mb_peak``.

Each threshold ends as ``pass``, ``fail`` or ``missing`` (the run measured no such metric, for
example a route group that got no request): a missing metric fails the run too, since a
service level nobody measured was not met.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qa.load.results import Summary

PASS, FAIL, MISSING = "pass", "fail", "missing"


class ThresholdsError(ValueError):
    """The thresholds file is malformed; the message says where."""


@dataclass(frozen=True)
class Threshold:
    scope: str  # "overall", "group:NAME" or "resources"
    metric: str
    bound: str  # "max" or "min"
    limit: float


@dataclass(frozen=True)
class Check:
    threshold: Threshold
    measured: float | None
    status: str


@dataclass(frozen=True)
class Tolerances:
    """How far a run may drift from its baseline before it counts as a regression."""

    p95_increase: float = 0.15
    p99_increase: float = 0.25
    rps_decrease: float = 0.10
    failure_ratio_increase: float = 0.005
    latency_floor_ms: float = 20.0
    min_requests: int = 100


@dataclass(frozen=True)
class LoadConfig:
    groups: dict[str, list[str]]
    thresholds: list[Threshold]
    tolerances: Tolerances = field(default_factory=Tolerances)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _thresholds(scope: str, table: Any, where: str) -> list[Threshold]:
    if not isinstance(table, dict):
        raise ThresholdsError(f"{where} must be a table of max_/min_ thresholds")
    found = []
    for key, limit in table.items():
        bound, _, metric = key.partition("_")
        if bound not in ("max", "min") or not metric:
            raise ThresholdsError(
                f"{where}.{key}: a threshold is named max_<metric> or min_<metric>"
            )
        if isinstance(limit, bool) or not isinstance(limit, int | float):
            raise ThresholdsError(f"{where}.{key}: the limit must be a number, not {limit!r}")
        found.append(Threshold(scope, metric, bound, float(limit)))
    return found


def parse_config(data: dict[str, Any], profile: str) -> LoadConfig:
    """Validate the file's content and apply the profile's overrides."""
    groups = data.get("groups", {})
    if not isinstance(groups, dict) or not all(
        isinstance(p, list) and all(isinstance(x, str) for x in p) for p in groups.values()
    ):
        raise ThresholdsError("[groups] maps each group name to a list of route patterns")
    sla = _merge(data.get("sla", {}), data.get("profiles", {}).get(profile, {}))
    unknown = set(sla) - {"overall", "groups", "resources"}
    if unknown:
        raise ThresholdsError(
            f"unknown SLA scopes {sorted(unknown)}: use overall, groups, resources"
        )
    thresholds = _thresholds("overall", sla.get("overall", {}), "sla.overall")
    for name, table in sla.get("groups", {}).items():
        if name not in groups:
            raise ThresholdsError(f"sla.groups.{name}: no such group in [groups]")
        thresholds += _thresholds(f"group:{name}", table, f"sla.groups.{name}")
    thresholds += _thresholds("resources", sla.get("resources", {}), "sla.resources")
    if not thresholds:
        raise ThresholdsError("no SLA threshold defined: a run with nothing to meet proves nothing")
    try:
        tolerances = Tolerances(**data.get("compare", {}))
    except TypeError as exc:
        raise ThresholdsError(f"[compare]: {exc}") from None
    return LoadConfig(groups=groups, thresholds=thresholds, tolerances=tolerances)


def load_config(path: Path, profile: str) -> LoadConfig:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ThresholdsError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ThresholdsError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, profile)


def measured_value(summary: Summary, scope: str, metric: str) -> float | None:
    if scope.startswith("group:"):
        table = summary.get("groups", {}).get(scope.removeprefix("group:"))
    else:
        table = summary.get(scope)
    if not isinstance(table, dict):
        return None
    value = table.get(metric)
    return float(value) if isinstance(value, int | float) else None


def evaluate(config: LoadConfig, summary: Summary) -> list[Check]:
    checks = []
    for threshold in config.thresholds:
        value = measured_value(summary, threshold.scope, threshold.metric)
        if value is None:
            status = MISSING
        elif threshold.bound == "max":
            status = PASS if value <= threshold.limit else FAIL
        else:
            status = PASS if value >= threshold.limit else FAIL
        checks.append(Check(threshold, value, status))
    return checks


def passed(checks: list[Check]) -> bool:
    return all(check.status == PASS for check in checks)


def _number(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") if value < 1 else f"{value:,.1f}"


def verdict_table(checks: list[Check]) -> str:
    """A Markdown table, readable in a terminal too: one line per threshold."""
    lines = [
        "| scope | metric | threshold | measured | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for check in checks:
        t = check.threshold
        sign = "<=" if t.bound == "max" else ">="
        measured = "-" if check.measured is None else _number(check.measured)
        verdict = check.status.upper() if check.status != PASS else "pass"
        lines.append(
            f"| {t.scope} | {t.metric} | {sign} {_number(t.limit)} | {measured} | {verdict} |"
        )
    failed = sum(1 for c in checks if c.status != PASS)
    lines.append("")
    lines.append(
        f"{len(checks) - failed} of {len(checks)} thresholds met"
        + ("" if not failed else f"; {failed} failed or missing")
    )
    return "\n".join(lines)
