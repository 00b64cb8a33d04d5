"""Alert rules and their evaluation: what is wrong now, for how long, and what to tell whom.

A **rule** looks at one ``Observation`` (what the monitor saw at one moment: each route's
recent figures, the system figures and their history, the dependency checks, the model
providers' calls) and returns its **findings**: one per thing that breaks it (a route, a
check, a provider, the disk), each with the value that triggered it and diagnostics worth
reading in a notification. Threshold rules compare a figure with a bound; forecast rules
predict when a figure reaches its capacity from its recent history (``app.core.forecast``,
robust to sawtooth patterns such as log rotation).

The **evaluator** turns findings into alerts with a lifecycle, as Prometheus' Alertmanager
does: a finding first makes a *pending* alert; one that holds for the rule's ``for_seconds``
*fires* (notify); a firing alert is notified again at most every ``repeat_seconds``; when its
finding is gone it is *resolved* (notify once). Alerts are identified by a **fingerprint** (a
hash of the rule and the finding's labels), so the same problem is one alert however often it
is seen. A **silence** (matchers on the rule and labels, with a reason, an author and an
expiry) keeps matching alerts from being notified while they still change state.

Everything here is pure logic over values: storage, the evaluation loop and the channels live
beside it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from app.core.config import AlertRuleSettings
from app.core.forecast import exhaustion


class AlertSeverity(StrEnum):
    info = "info"
    warning = "warning"
    critical = "critical"


SEVERITY_RANK = {AlertSeverity.info: 0, AlertSeverity.warning: 1, AlertSeverity.critical: 2}


def at_least(severity: str, minimum: str) -> bool:
    """Whether ``severity`` is ``minimum`` or more severe."""
    return SEVERITY_RANK[AlertSeverity(severity)] >= SEVERITY_RANK[AlertSeverity(minimum)]


class AlertState(StrEnum):
    pending = "pending"
    firing = "firing"
    resolved = "resolved"


@dataclass(frozen=True)
class RouteFigures:
    """One route over the recent window."""

    method: str
    route: str
    requests: float
    errors: float
    p95_seconds: float | None

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class CheckFigures:
    """One dependency check as the health monitor last saw it."""

    name: str
    critical: bool
    status: str  # pass | warn | fail
    output: str


@dataclass(frozen=True)
class ProviderFigures:
    """One model provider's calls over the recent window."""

    provider: str
    calls: float
    errors: float

    @property
    def error_ratio(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class Observation:
    """What the monitor saw at ``at`` (Unix seconds)."""

    at: float
    routes: Sequence[RouteFigures] = ()
    system: Mapping[str, float] = field(default_factory=dict)
    history: Callable[[str], Sequence[tuple[float, float]]] = lambda _: ()
    checks: Sequence[CheckFigures] = ()
    providers: Sequence[ProviderFigures] = ()

    def slowest(self, count: int = 3) -> list[str]:
        """The routes with the highest p95, for a notification's diagnostics."""
        ranked = sorted(
            (r for r in self.routes if r.p95_seconds is not None),
            key=lambda r: r.p95_seconds or 0.0,
            reverse=True,
        )
        return [f"{r.method} {r.route} p95 {r.p95_seconds:.3f}s" for r in ranked[:count]]


@dataclass(frozen=True)
class Finding:
    """One thing that breaks a rule now."""

    labels: tuple[tuple[str, str], ...]
    value: float
    message: str
    diagnostics: tuple[str, ...] = ()


# -- rules -------------------------------------------------------------------------------------

Check = Callable[[Observation], list[Finding]]


@dataclass(frozen=True)
class Rule:
    """A named rule: ``check`` returns its findings in an observation."""

    name: str
    severity: AlertSeverity
    summary: str
    check: Check
    for_seconds: float = 0.0


def route_error_ratio(bound: float = 0.05, min_requests: float = 20) -> Check:
    """Routes whose share of 5xx answers over the window is above ``bound``."""

    def check(observation: Observation) -> list[Finding]:
        return [
            Finding(
                (("method", r.method), ("route", r.route)),
                r.error_ratio,
                f"{r.method} {r.route}: {r.error_ratio:.1%} of {r.requests:.0f} requests "
                f"answered 5xx (bound {bound:.0%})",
                tuple(observation.slowest()),
            )
            for r in observation.routes
            if r.requests >= min_requests and r.error_ratio > bound
        ]

    return check


def route_latency(bound_seconds: float = 2.0, min_requests: float = 20) -> Check:
    """Routes whose p95 latency over the window is above ``bound_seconds``: slow answers, not
    only failed ones."""

    def check(observation: Observation) -> list[Finding]:
        return [
            Finding(
                (("method", r.method), ("route", r.route)),
                r.p95_seconds,
                f"{r.method} {r.route}: p95 {r.p95_seconds:.2f}s (bound {bound_seconds:g}s)",
                tuple(observation.slowest()),
            )
            for r in observation.routes
            if r.requests >= min_requests
            and r.p95_seconds is not None
            and r.p95_seconds > bound_seconds
        ]

    return check


def system_above(figure: str, bound: float, unit: str = "%") -> Check:
    """A system figure above ``bound``."""

    def check(observation: Observation) -> list[Finding]:
        value = observation.system.get(figure)
        if value is None or value <= bound:
            return []
        return [Finding((), value, f"{figure} is {value:g}{unit} (bound {bound:g}{unit})")]

    return check


def dependency_failing() -> Check:
    """Critical dependency checks that fail."""

    def check(observation: Observation) -> list[Finding]:
        return [
            Finding((("check", c.name),), 1.0, f"critical dependency {c.name} fails: {c.output}")
            for c in observation.checks
            if c.critical and c.status == "fail"
        ]

    return check


def provider_error_ratio(bound: float = 0.2, min_calls: float = 10) -> Check:
    """Model providers whose share of failed calls over the window is above ``bound``."""

    def check(observation: Observation) -> list[Finding]:
        return [
            Finding(
                (("provider", p.provider),),
                p.error_ratio,
                f"provider {p.provider}: {p.error_ratio:.0%} of {p.calls:.0f} model calls "
                f"failed (bound {bound:.0%})",
            )
            for p in observation.providers
            if p.calls >= min_calls and p.error_ratio > bound
        ]

    return check


def exhausted_within(
    figure: str, capacity: float | str, horizon_seconds: float, what: str
) -> Check:
    """``figure`` predicted to reach ``capacity`` (a number, or the name of the system figure
    that holds it, such as the pool's size) within ``horizon_seconds``, from its history."""

    def check(observation: Observation) -> list[Finding]:
        limit = observation.system.get(capacity) if isinstance(capacity, str) else capacity
        if limit is None or limit <= 0:
            return []
        predicted = exhaustion(list(observation.history(figure)), limit, horizon_seconds)
        if predicted is None:
            return []
        hours = predicted.seconds / 3600
        return [
            Finding(
                (),
                predicted.seconds,
                f"{what} predicted in {hours:.1f} h ({figure} reaching {limit:g})",
                (predicted.describe(),),
            )
        ]

    return check


@dataclass(frozen=True)
class RuleSpec:
    """A rule's defaults and how to build its check from a bound (and a minimum of requests
    or calls where the rule judges rates)."""

    severity: AlertSeverity
    summary: str  # formatted with the bound: {bound}, {hours}
    build: Callable[[float, float], Check]
    bound: float
    for_seconds: float = 0.0
    min_requests: float = 0.0


RULE_SPECS: dict[str, RuleSpec] = {
    "route_error_ratio": RuleSpec(
        AlertSeverity.critical,
        "A route answers more than {bound:.0%} of its requests with 5xx",
        route_error_ratio,
        0.05,
        for_seconds=300,
        min_requests=20,
    ),
    "route_latency_p95": RuleSpec(
        AlertSeverity.warning,
        "A route's p95 latency is over {bound:g} s",
        route_latency,
        2.0,
        for_seconds=300,
        min_requests=20,
    ),
    "memory_high": RuleSpec(
        AlertSeverity.warning,
        "The host's memory is more than {bound:g}% used",
        lambda bound, _: system_above("host_memory_used_percent", bound),
        90.0,
        for_seconds=120,
    ),
    "dependency_failing": RuleSpec(
        AlertSeverity.critical,
        "A critical dependency fails",
        lambda _bound, _min: dependency_failing(),
        1.0,
    ),
    "provider_error_ratio": RuleSpec(
        AlertSeverity.warning,
        "A model provider fails more than {bound:.0%} of calls",
        provider_error_ratio,
        0.2,
        for_seconds=300,
        min_requests=10,
    ),
    "disk_full_forecast": RuleSpec(
        AlertSeverity.critical,
        "The data directory's disk is predicted full within {hours:g} h",
        lambda bound, _: exhausted_within("disk_used_percent", 100.0, bound, "disk full"),
        24 * 3600.0,
    ),
    "pool_exhaustion_forecast": RuleSpec(
        AlertSeverity.warning,
        "The database pool is predicted exhausted within {hours:g} h",
        lambda bound, _: exhausted_within(
            "pool_checked_out", "pool_size", bound, "database pool exhausted"
        ),
        3600.0,
    ),
}


@dataclass(frozen=True)
class TunedSpec:
    """A rule as the settings tune it: its spec, and the severity, bound, minimum and duration
    the overrides give it (``RENUM_MONITOR__ALERTS__RULES``)."""

    name: str
    spec: RuleSpec
    severity: AlertSeverity
    bound: float
    minimum: float
    for_seconds: float

    @property
    def summary(self) -> str:
        return self.spec.summary.format(bound=self.bound, hours=self.bound / 3600)


def tuned_specs(overrides: Mapping[str, AlertRuleSettings] | None = None) -> list[TunedSpec]:
    """Every rule not switched off, with its overrides applied."""
    tuned_rules = []
    for name, spec in RULE_SPECS.items():
        tuned = (overrides or {}).get(name) or AlertRuleSettings()
        if not tuned.enabled:
            continue
        tuned_rules.append(
            TunedSpec(
                name,
                spec,
                AlertSeverity(tuned.severity) if tuned.severity else spec.severity,
                spec.bound if tuned.bound is None else tuned.bound,
                spec.min_requests if tuned.min_requests is None else tuned.min_requests,
                spec.for_seconds if tuned.for_seconds is None else tuned.for_seconds,
            )
        )
    return tuned_rules


def configured_rules(overrides: Mapping[str, AlertRuleSettings] | None = None) -> list[Rule]:
    """The rules with the settings' overrides applied (``RENUM_MONITOR__ALERTS__RULES``):
    each rule's bound, duration, minimum of requests and severity, or the rule switched off."""
    return [
        Rule(t.name, t.severity, t.summary, t.spec.build(t.bound, t.minimum), t.for_seconds)
        for t in tuned_specs(overrides)
    ]


def default_rules() -> list[Rule]:
    """The rules a fresh deployment starts with (each can be tuned or switched off in the
    settings)."""
    return configured_rules()


# -- alerts, silences and the evaluator ----------------------------------------------------------


def fingerprint(rule: str, labels: Iterable[tuple[str, str]]) -> str:
    """The alert's identity: the rule and the finding's labels (never the changing value)."""
    text = json.dumps([rule, sorted(labels)], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Alert:
    """One alert as the evaluator last left it."""

    fingerprint: str
    rule: str
    severity: AlertSeverity
    labels: tuple[tuple[str, str], ...]
    state: AlertState
    started_at: float  # when its finding was first seen
    value: float
    message: str
    diagnostics: tuple[str, ...] = ()
    fired_at: float | None = None
    resolved_at: float | None = None
    notified_at: float | None = None  # the last notification sent for it
    seen_at: float | None = None  # the last evaluation that found its condition


@dataclass(frozen=True)
class Silence:
    """Keeps the alerts it matches from being notified until ``expires_at``. ``matchers``:
    ``rule`` and label names with the exact values an alert must have."""

    id: str
    matchers: Mapping[str, str]
    reason: str
    author: str
    starts_at: float
    expires_at: float

    def active(self, at: float) -> bool:
        return self.starts_at <= at < self.expires_at

    def matches(self, alert: Alert) -> bool:
        values = {"rule": alert.rule, **dict(alert.labels)}
        return all(values.get(name) == wanted for name, wanted in self.matchers.items())


# The rule name of an alert a capability reported (``app.core.alerts``), before its source.
REPORTED = "reported:"


class NotificationKind(StrEnum):
    firing = "firing"
    repeat = "repeat"
    resolved = "resolved"


@dataclass(frozen=True)
class Notification:
    kind: NotificationKind
    alert: Alert


def due(
    previous: Alert, alert: Alert, now: float, repeat_seconds: float
) -> NotificationKind | None:
    """What a firing alert seen again calls for: ``firing`` when it was never notified (it
    fired under a silence) or its severity rose (a channel for the higher severity has not
    heard of it), ``repeat`` once the repeat interval has passed, else nothing."""
    rose = SEVERITY_RANK[alert.severity] > SEVERITY_RANK[previous.severity]
    if alert.notified_at is None or rose:
        return NotificationKind.firing
    if now - alert.notified_at >= repeat_seconds:
        return NotificationKind.repeat
    return None


@dataclass
class Evaluator:
    """Applies the rules to each observation and keeps every alert's state (see the module's
    docstring). ``alerts`` holds the pending and firing ones and those resolved within
    ``keep_resolved_seconds``."""

    rules: Sequence[Rule]
    repeat_seconds: float = 4 * 3600
    keep_resolved_seconds: float = 24 * 3600
    alerts: dict[str, Alert] = field(default_factory=dict)

    def evaluate(
        self, observation: Observation, silences: Sequence[Silence] = ()
    ) -> list[Notification]:
        """The notifications this observation calls for (silenced ones left out)."""
        now = observation.at
        seen: set[str] = set()
        due: list[Notification] = []
        for rule in self.rules:
            for finding in rule.check(observation):
                key = fingerprint(rule.name, finding.labels)
                seen.add(key)
                alert, kind = self._update(rule, key, finding, now)
                self.alerts[key] = alert
                if kind is not None:
                    due.append(Notification(kind, alert))
        for key, alert in list(self.alerts.items()):
            if key in seen:
                continue
            if alert.rule.startswith(REPORTED) and alert.state is not AlertState.resolved:
                continue  # reported by a capability, which clears it itself
            if alert.state is AlertState.resolved:
                if now - (alert.resolved_at or now) > self.keep_resolved_seconds:
                    del self.alerts[key]
                continue
            if alert.state is AlertState.pending:  # gone before it fired: nothing to say
                del self.alerts[key]
                continue
            resolved = replace(alert, state=AlertState.resolved, resolved_at=now)
            self.alerts[key] = resolved
            due.append(Notification(NotificationKind.resolved, resolved))
        sent = []
        for notification in due:
            alert = notification.alert
            if any(s.active(now) and s.matches(alert) for s in silences):
                continue
            stamped = replace(alert, notified_at=now)
            self.alerts[alert.fingerprint] = stamped
            sent.append(Notification(notification.kind, stamped))
        return sent

    def _update(
        self, rule: Rule, key: str, finding: Finding, now: float
    ) -> tuple[Alert, NotificationKind | None]:
        previous = self.alerts.get(key)
        if previous is None or previous.state is AlertState.resolved:
            previous = Alert(
                key, rule.name, rule.severity, finding.labels, AlertState.pending, now, 0.0, ""
            )
        alert = replace(
            previous,
            severity=rule.severity,  # a severity tuned live applies to the rule's alerts
            value=finding.value,
            message=finding.message,
            diagnostics=finding.diagnostics,
            seen_at=now,
        )
        if alert.state is AlertState.pending:
            if now - alert.started_at >= rule.for_seconds:
                return replace(
                    alert, state=AlertState.firing, fired_at=now
                ), NotificationKind.firing
            return alert, None
        return alert, due(previous, alert, now, self.repeat_seconds)

    def active(self) -> list[Alert]:
        return [a for a in self.alerts.values() if a.state is not AlertState.resolved]

    def recent(self) -> list[Alert]:
        return [a for a in self.alerts.values() if a.state is AlertState.resolved]
