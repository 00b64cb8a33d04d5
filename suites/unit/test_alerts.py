"""The alert loop's pure parts: rules tuned by the settings, the records the database keeps,
the channels' payloads and destinations, and the settings' validation."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError

from app.capabilities.configuration import is_live
from app.capabilities.monitor.alerting import (
    RULE_SPECS,
    Alert,
    AlertSeverity,
    AlertState,
    Notification,
    NotificationKind,
    Observation,
    RouteFigures,
    at_least,
    configured_rules,
)
from app.capabilities.monitor.alerts import (
    EVALUATOR_LOCK,
    alert_payload,
    destination,
    email_payload,
    reported_labels,
    slack_payload,
    to_alert,
    to_record,
)
from app.core.config import (
    ALERT_RULES,
    AlertChannelSettings,
    AlertRuleSettings,
    Settings,
    SmtpSettings,
)
from app.core.config_view import fingerprint as fingerprint_of

ALERT = Alert(
    fingerprint="0123456789abcdef",
    rule="route_latency_p95",
    severity=AlertSeverity.warning,
    labels=(("method", "GET"), ("route", "/api/v1/teams")),
    state=AlertState.firing,
    started_at=1_764_835_200.0,
    value=2.5,
    message="GET /api/v1/teams: p95 2.50s (bound 2s)",
    diagnostics=("GET /api/v1/teams p95 2.500s",),
    fired_at=1_764_835_500.0,
    notified_at=1_764_835_500.0,
    seen_at=1_764_835_510.0,
)


def test_every_rule_the_settings_name_exists_and_the_other_way_round() -> None:
    assert set(RULE_SPECS) == set(ALERT_RULES)


def test_overrides_tune_a_rule_or_switch_it_off() -> None:
    rules = {
        rule.name: rule
        for rule in configured_rules(
            {
                "route_latency_p95": AlertRuleSettings(
                    bound=0.5, for_seconds=0, min_requests=1, severity="critical"
                ),
                "memory_high": AlertRuleSettings(enabled=False),
            }
        )
    }
    assert "memory_high" not in rules
    latency = rules["route_latency_p95"]
    assert (latency.severity, latency.for_seconds) == (AlertSeverity.critical, 0)
    assert latency.summary == "A route's p95 latency is over 0.5 s"
    slow = RouteFigures("GET", "/x", requests=1, errors=0, p95_seconds=0.6)
    fast = RouteFigures("GET", "/y", requests=1, errors=0, p95_seconds=0.4)
    found = latency.check(Observation(at=0.0, routes=[slow, fast]))
    assert [dict(f.labels)["route"] for f in found] == ["/x"]
    # Untouched rules keep their defaults.
    assert rules["route_error_ratio"].for_seconds == 300
    assert rules["disk_full_forecast"].summary.endswith("within 24 h")


def test_severities_are_ordered() -> None:
    assert at_least("critical", "warning")
    assert at_least("warning", "warning")
    assert not at_least("info", "warning")


def test_a_record_keeps_every_field_of_an_alert() -> None:
    assert to_alert(to_record(ALERT)) == ALERT


def test_the_webhook_payload_names_the_notification_and_its_alert() -> None:
    body = alert_payload(Notification(NotificationKind.firing, ALERT), "production")
    assert body["type"] == "alert.firing"
    assert body["alert"]["labels"] == {"method": "GET", "route": "/api/v1/teams"}
    assert body["alert"]["started_at"] == "2025-12-04T08:00:00+00:00"
    assert body["alert"]["resolved_at"] is None
    assert body["source"]["environment"] == "production"


def test_slack_and_email_say_firing_or_resolved() -> None:
    resolved = Notification(NotificationKind.resolved, ALERT)
    chat = slack_payload(resolved, "staging")
    assert chat["text"] == "[RESOLVED] warning: route_latency_p95 (staging)"
    assert ALERT.diagnostics[0] in chat["blocks"][1]["text"]["text"]
    mail = email_payload(Notification(NotificationKind.repeat, ALERT), "staging")
    assert mail["subject"] == "[FIRING] warning: route_latency_p95 (staging)"
    assert "Fingerprint: 0123456789abcdef" in mail["text"]


def test_channels_are_operator_destinations() -> None:
    mail = AlertChannelSettings(name="ops", type="email", to=["a+b@example.com", "c@example.com"])
    sent_to = destination(mail)
    assert sent_to.url == "mailto:a%2Bb@example.com,c@example.com"
    assert sent_to.guarded is False
    assert sent_to.account_id is None
    hook = AlertChannelSettings.model_validate(
        {"name": "hook", "type": "webhook", "url": "https://hooks.example.com/x"}
    )
    assert destination(hook).url == "https://hooks.example.com/x"


@pytest.mark.parametrize(
    ("channel", "message"),
    [
        ({"name": "x", "type": "webhook"}, "needs `url`"),
        ({"name": "x", "type": "email"}, "needs `to`"),
        ({"name": "x", "type": "email", "to": ["not-an-address"]}, "needs `to`"),
        ({"name": "x", "type": "slack", "url": "ftp://example.com"}, "http:// or https://"),
        ({"name": "Bad Name", "type": "slack", "url": "https://example.com"}, "pattern"),
    ],
)
def test_a_channel_without_a_usable_destination_is_refused(
    channel: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings.model_validate({"monitor": {"alerts": {"channels": [channel]}}})


def test_unknown_rules_and_duplicate_channel_names_are_refused() -> None:
    with pytest.raises(ValidationError, match="unknown rules"):
        Settings.model_validate({"monitor": {"alerts": {"rules": {"no_such_rule": {}}}}})
    twice = [{"name": "a", "type": "slack", "url": "https://example.com"}] * 2
    with pytest.raises(ValidationError, match="unique"):
        Settings.model_validate({"monitor": {"alerts": {"channels": twice}}})


def test_the_evaluator_lock_key_is_a_signed_bigint() -> None:
    assert -(2**63) <= EVALUATOR_LOCK < 2**63


def test_slack_text_is_escaped() -> None:
    reported = replace(ALERT, message="<!channel> look at <unmatched> & more")
    chat = slack_payload(Notification(NotificationKind.firing, reported), "prod")
    section = chat["blocks"][1]["text"]["text"]
    assert section.startswith("&lt;!channel&gt; look at &lt;unmatched&gt; &amp; more")
    assert "<" not in section


def test_smtp_settings_are_live_and_clear_text_stays_on_loopback() -> None:
    assert is_live("monitor.alerts.smtp.host")
    assert is_live("monitor.alerts.smtp.password")
    local = {"security": "none", "host": "127.0.0.1"}
    assert SmtpSettings.model_validate(local).host == "127.0.0.1"
    with pytest.raises(ValidationError, match="loopback only"):
        SmtpSettings.model_validate({**local, "host": "smtp.example.com"})
    with pytest.raises(ValidationError, match="a login needs TLS"):
        SmtpSettings.model_validate({**local, "username": "renum"})


def test_channels_count_in_the_configuration_fingerprint_but_never_their_secrets() -> None:
    def with_channel(**channel: object) -> str:
        base = {"name": "a", "type": "slack", "url": "https://hooks.example.com/1"}
        return fingerprint_of(
            Settings.model_validate({"monitor": {"alerts": {"channels": [{**base, **channel}]}}})
        )

    assert with_channel() != with_channel(name="b")
    assert with_channel() == with_channel(url="https://hooks.example.com/2")


def test_reported_problems_carry_checked_labels() -> None:
    assert reported_labels("backups", {"target": "pg", "n": 3}) == (("n", "3"), ("target", "pg"))
    assert reported_labels("backups", {"long": "x" * 500})[0][1] == "x" * 200
    for source, labels in (
        ("Backups!", {}),
        ("b" * 56, {}),
        ("backups", {"rule": "x"}),
        ("backups", {"Bad Name": "x"}),
        ("backups", {f"l{n}": "x" for n in range(9)}),
    ):
        with pytest.raises(ValueError, match="alert"):
            reported_labels(source, labels)
