"""Alert rules and the evaluator without a server: thresholds that must hold for a while before
they fire, one alert per fingerprint however often it is seen, repeats at most every repeat
interval, a resolved notification when the condition clears, silences with an expiry, and
forecast rules that predict a filling disk within 10% of the truth and stay quiet on a
sawtooth that never fills."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from app.capabilities.monitor.alerting import (
    AlertSeverity,
    AlertState,
    CheckFigures,
    Evaluator,
    NotificationKind,
    Observation,
    ProviderFigures,
    RouteFigures,
    Rule,
    Silence,
    default_rules,
    dependency_failing,
    exhausted_within,
    fingerprint,
    provider_error_ratio,
    route_error_ratio,
    route_latency,
    system_above,
)

ROUTE = "/api/v1/teams/{team_id}"


def failing_route(errors: float, requests: float = 100) -> RouteFigures:
    return RouteFigures("GET", ROUTE, requests, errors, 0.05)


def error_rule(for_seconds: float = 300) -> Rule:
    return Rule(
        "route_error_ratio",
        AlertSeverity.critical,
        "5xx",
        route_error_ratio(0.05),
        for_seconds=for_seconds,
    )


def kinds(notifications: list) -> list[str]:
    return [n.kind.value for n in notifications]


def test_a_threshold_fires_after_holding_for_its_duration_then_resolves() -> None:
    evaluator = Evaluator([error_rule(300)], repeat_seconds=3600)
    assert evaluator.evaluate(Observation(0, routes=[failing_route(10)])) == []
    (alert,) = evaluator.active()
    assert alert.state is AlertState.pending
    assert evaluator.evaluate(Observation(240, routes=[failing_route(12)])) == []
    (fired,) = evaluator.evaluate(Observation(300, routes=[failing_route(9)]))
    assert fired.kind is NotificationKind.firing
    assert fired.alert.state is AlertState.firing
    assert (fired.alert.started_at, fired.alert.fired_at) == (0, 300)
    assert fired.alert.value == pytest.approx(0.09)
    assert "9.0% of 100 requests answered 5xx" in fired.alert.message
    assert fired.alert.diagnostics == (f"GET {ROUTE} p95 0.050s",)
    # Seen again and again: one alert, notified again only after the repeat interval.
    for moment in (600, 1800, 3800):
        assert evaluator.evaluate(Observation(moment, routes=[failing_route(10)])) == []
    assert len(evaluator.alerts) == 1
    assert kinds(evaluator.evaluate(Observation(3900, routes=[failing_route(10)]))) == ["repeat"]
    # The condition clears: one resolved notification, then nothing.
    (resolved,) = evaluator.evaluate(Observation(4000, routes=[failing_route(1)]))
    assert resolved.kind is NotificationKind.resolved
    assert resolved.alert.resolved_at == 4000
    assert evaluator.evaluate(Observation(4100, routes=[])) == []
    assert [a.state for a in evaluator.recent()] == [AlertState.resolved]
    assert evaluator.active() == []


def test_a_condition_that_clears_before_firing_says_nothing() -> None:
    evaluator = Evaluator([error_rule(300)])
    evaluator.evaluate(Observation(0, routes=[failing_route(10)]))
    assert evaluator.evaluate(Observation(100, routes=[failing_route(0)])) == []
    assert evaluator.alerts == {}


def test_a_resolved_alert_that_comes_back_is_pending_again_and_old_ones_are_dropped() -> None:
    evaluator = Evaluator([error_rule(0)], keep_resolved_seconds=600)
    assert kinds(evaluator.evaluate(Observation(0, routes=[failing_route(10)]))) == ["firing"]
    assert kinds(evaluator.evaluate(Observation(10, routes=[]))) == ["resolved"]
    assert kinds(evaluator.evaluate(Observation(20, routes=[failing_route(10)]))) == ["firing"]
    (alert,) = evaluator.active()
    assert alert.started_at == 20  # a new episode
    evaluator.evaluate(Observation(30, routes=[]))
    evaluator.evaluate(Observation(1000, routes=[]))
    assert evaluator.alerts == {}


def test_few_requests_never_make_a_ratio() -> None:
    evaluator = Evaluator([error_rule(0)])
    assert evaluator.evaluate(Observation(0, routes=[failing_route(5, requests=5)])) == []


def test_fingerprints_name_the_rule_and_labels_not_the_value() -> None:
    labels = (("method", "GET"), ("route", ROUTE))
    assert fingerprint("r", labels) == fingerprint("r", tuple(reversed(labels)))
    assert fingerprint("r", labels) != fingerprint("other", labels)
    assert fingerprint("r", labels) != fingerprint("r", (("method", "POST"), ("route", ROUTE)))


def test_silences_hold_notifications_until_they_expire() -> None:
    evaluator = Evaluator([error_rule(0)], repeat_seconds=3600)
    silence = Silence(
        "s1", {"rule": "route_error_ratio", "route": ROUTE}, "deploying", "ops", 0, 600
    )
    other = Silence("s2", {"route": "/api/v1/elsewhere"}, "unrelated", "ops", 0, 10_000)
    assert evaluator.evaluate(Observation(0, routes=[failing_route(10)]), [silence, other]) == []
    (alert,) = evaluator.active()
    assert alert.state is AlertState.firing  # still tracked while silenced
    assert evaluator.evaluate(Observation(300, routes=[failing_route(10)]), [silence]) == []
    # Expired: the firing alert is told at once, as firing (it never was), then repeated.
    assert kinds(evaluator.evaluate(Observation(600, routes=[failing_route(10)]), [silence])) == [
        "firing"
    ]
    assert evaluator.evaluate(Observation(900, routes=[failing_route(10)]), [silence]) == []
    assert kinds(evaluator.evaluate(Observation(4200, routes=[failing_route(10)]), [])) == [
        "repeat"
    ]
    assert not silence.active(600)
    assert silence.active(0)


def test_latency_memory_dependency_and_provider_rules() -> None:
    slow = RouteFigures("POST", "/api/v1/teams", 50, 0, 3.5)
    observation = Observation(
        0,
        routes=[slow, RouteFigures("GET", "/api/v1/x", 5, 0, 9.0)],
        system={"host_memory_used_percent": 93.5},
        checks=[
            CheckFigures("database", True, "fail", "connection refused"),
            CheckFigures("redis", False, "fail", "down"),  # optional: no alert
        ],
        providers=[ProviderFigures("openai", 40, 12), ProviderFigures("builtin", 3, 3)],
    )
    (latency,) = route_latency(2.0)(observation)
    assert latency.labels == (("method", "POST"), ("route", "/api/v1/teams"))
    assert "p95 3.50s" in latency.message
    (memory,) = system_above("host_memory_used_percent", 90)(observation)
    assert memory.value == 93.5
    (dependency,) = dependency_failing()(observation)
    assert dependency.labels == (("check", "database"),)
    assert "connection refused" in dependency.message
    (provider,) = provider_error_ratio(0.2)(observation)
    assert provider.labels == (("provider", "openai"),)
    assert system_above("host_memory_used_percent", 95)(observation) == []


def rising_disk(hours: float, start: float, per_hour: float) -> list[tuple[float, float]]:
    """Disk usage sampled every minute, rising steadily with a little noise."""
    return [
        (minute * 60.0, start + per_hour * minute / 60 + 0.05 * math.sin(minute * 1.7))
        for minute in range(int(hours * 60))
    ]


def sawtooth_disk(hours: float) -> list[tuple[float, float]]:
    """Logs fill 60% -> 85% in 4 hours, then rotation brings them back: it never fills."""
    return [(minute * 60.0, 60 + 25 * ((minute % 240) / 240)) for minute in range(int(hours * 60))]


def test_a_filling_disk_is_predicted_within_ten_percent_of_its_true_crossing() -> None:
    series = rising_disk(hours=12, start=40.0, per_hour=2.5)  # 70% now, full 12 h from now
    now = series[-1][0]
    true_seconds = (100 - (40 + 2.5 * (len(series) - 1) / 60)) / 2.5 * 3600
    rule = exhausted_within("disk_used_percent", 100.0, 24 * 3600, "disk full")
    (finding,) = rule(Observation(now, history=lambda figure: series))
    assert abs(finding.value - true_seconds) <= 0.1 * true_seconds
    assert finding.message.startswith("disk full predicted in 1")
    assert finding.diagnostics


def test_a_sawtooth_that_never_fills_raises_no_forecast_alert() -> None:
    rule = exhausted_within("disk_used_percent", 100.0, 24 * 3600, "disk full")
    for end_hours in (24, 23.9, 22, 21.1):  # the top of a tooth, and other phases
        series = [p for p in sawtooth_disk(24) if p[0] <= end_hours * 3600]
        assert rule(Observation(series[-1][0], history=lambda figure, s=series: s)) == []


def test_pool_exhaustion_reads_its_capacity_from_the_pool_size() -> None:
    growing = [(minute * 60.0, 2 + minute * 0.1) for minute in range(60)]  # 6 per hour
    rule = exhausted_within("pool_checked_out", "pool_size", 3600, "database pool exhausted")
    observation = Observation(3540, system={"pool_size": 10.0}, history=lambda _: growing)
    (finding,) = rule(observation)
    assert finding.value < 3600
    assert rule(Observation(3540, system={}, history=lambda _: growing)) == []  # no pool


def test_the_default_rules_cover_the_issue_s_list() -> None:
    names = {rule.name for rule in default_rules()}
    assert names == {
        "route_error_ratio",
        "route_latency_p95",
        "memory_high",
        "dependency_failing",
        "provider_error_ratio",
        "disk_full_forecast",
        "pool_exhaustion_forecast",
    }
    quiet = Observation(0)
    assert Evaluator(default_rules()).evaluate(quiet) == []


def test_a_severity_that_rises_is_told_at_once_as_firing() -> None:
    warning = Rule("route_error_ratio", AlertSeverity.warning, "5xx", route_error_ratio(0.05, 1))
    evaluator = Evaluator([warning], repeat_seconds=3600)
    assert kinds(evaluator.evaluate(Observation(0, routes=[failing_route(10)]))) == ["firing"]
    assert evaluator.evaluate(Observation(60, routes=[failing_route(10)])) == []
    evaluator.rules = [replace(warning, severity=AlertSeverity.critical)]  # tuned live
    told = evaluator.evaluate(Observation(120, routes=[failing_route(10)]))
    assert [(n.kind.value, n.alert.severity) for n in told] == [("firing", AlertSeverity.critical)]
    evaluator.rules = [warning]  # lowered again: nothing to tell
    assert evaluator.evaluate(Observation(180, routes=[failing_route(10)])) == []
