"""The monitor's exports for other tools: the alert rules as a Prometheus rule file that
`promtool` accepts and whose alerts fire, in `promtool test rules`, on the series each rule is
about (and not on the others), with the settings' overrides; the Grafana dashboard's queries
valid PromQL; and the check that every query reads a metric Renum serves."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from app.capabilities.monitor.alerting import RULE_SPECS
from app.capabilities.monitor.exports import (
    dashboard_expressions,
    grafana_dashboard,
    metric_names,
    prometheus_rules,
    served_metric_names,
    unknown_metrics,
)
from app.cli import cli
from app.core.config import AlertRuleSettings

ROUTE = {"method": "GET", "route": "/api/v1/teams"}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: the unit session installs Debian's prometheus"
    return subprocess.run(  # noqa: S603 - a fixed tool on files the test wrote
        [tool, *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def write_rules(directory: Path, rules: dict[str, Any]) -> Path:
    path = directory / "rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    return path


def by_name(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules["groups"][0]["rules"]}


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def expected(rule: dict[str, Any], **labels: str) -> dict[str, Any]:
    return {
        "exp_labels": {**rule["labels"], **labels},
        "exp_annotations": rule["annotations"],
    }


def test_the_default_rules_pass_promtool_check(tmp_path: Path) -> None:
    rules = prometheus_rules()
    assert list(by_name(rules)) == list(RULE_SPECS)  # every rule Renum evaluates
    checked = promtool("check", "rules", str(write_rules(tmp_path, rules)), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout


def test_the_overrides_tune_and_switch_off_rules() -> None:
    rules = by_name(
        prometheus_rules(
            {
                "memory_high": AlertRuleSettings(bound=80, for_seconds=30, severity="critical"),
                "route_error_ratio": AlertRuleSettings(min_requests=50),
                "disk_full_forecast": AlertRuleSettings(enabled=False),
            }
        )
    )
    assert "disk_full_forecast" not in rules
    memory = rules["memory_high"]
    assert memory["expr"].endswith("> 0.8")
    assert (memory["for"], memory["labels"]["severity"]) == ("30s", "critical")
    assert memory["annotations"]["summary"] == "The host's memory is more than 80% used"
    assert rules["route_error_ratio"]["expr"].endswith(">= 50")
    assert "for" not in rules["dependency_failing"]  # fires at once, as Renum's own rule


def test_the_rules_fire_on_their_series_and_not_on_others(tmp_path: Path) -> None:
    rules = prometheus_rules()
    rule = by_name(rules)
    write_rules(tmp_path, rules)
    slow_route = {"method": "POST", "route": "/api/v1/teams/{team_id}/executions"}
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # 10% of 100 requests a minute answered 5xx: over the 5% bound.
                    series("http_requests_total", {**ROUTE, "status": "5xx"}, "0+10x20"),
                    series("http_requests_total", {**ROUTE, "status": "2xx"}, "0+90x20"),
                    # 1% 5xx on another route: under it.
                    series(
                        "http_requests_total",
                        {"method": "GET", "route": "/api/v1/agents", "status": "5xx"},
                        "0+1x20",
                    ),
                    series(
                        "http_requests_total",
                        {"method": "GET", "route": "/api/v1/agents", "status": "2xx"},
                        "0+99x20",
                    ),
                    # Every answer of the slow route over 2.5 s; 30 a minute.
                    series("http_requests_total", {**slow_route, "status": "2xx"}, "0+30x20"),
                    *(
                        series(
                            "http_request_duration_seconds_bucket",
                            {**slow_route, "le": le},
                            "0+0x20" if le != "+Inf" else "0+30x20",
                        )
                        for le in ("0.5", "1", "2.5", "+Inf")
                    ),
                    series("renum_host_memory_used_ratio", {}, "0.95x20"),
                    series(
                        "renum_dependency_up", {"check": "database", "critical": "true"}, "0x20"
                    ),
                    series("renum_dependency_up", {"check": "redis", "critical": "false"}, "0x20"),
                    series(
                        "renum_dependency_up", {"check": "providers", "critical": "true"}, "1x20"
                    ),
                    # Half the calls to one provider fail; none to the other.
                    series(
                        "renum_model_calls_total",
                        {"provider": "openai", "model": "m", "outcome": "ok"},
                        "0+10x20",
                    ),
                    series(
                        "renum_model_calls_total",
                        {"provider": "openai", "model": "m", "outcome": "timeout"},
                        "0+10x20",
                    ),
                    series(
                        "renum_model_calls_total",
                        {"provider": "builtin", "model": "echo", "outcome": "ok"},
                        "0+20x20",
                    ),
                    # A tenant's wrong key and bad requests at another provider: its calls,
                    # not its failures.
                    series(
                        "renum_model_calls_total",
                        {"provider": "anthropic", "model": "c", "outcome": "auth"},
                        "0+10x20",
                    ),
                    series(
                        "renum_model_calls_total",
                        {"provider": "anthropic", "model": "c", "outcome": "bad_request"},
                        "0+10x20",
                    ),
                    series(
                        "renum_model_calls_total",
                        {"provider": "anthropic", "model": "c", "outcome": "ok"},
                        "0+1x20",
                    ),
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "15m",
                        "alertname": "route_error_ratio",
                        "exp_alerts": [expected(rule["route_error_ratio"], **ROUTE)],
                    },
                    {
                        "eval_time": "15m",
                        "alertname": "route_latency_p95",
                        "exp_alerts": [expected(rule["route_latency_p95"], **slow_route)],
                    },
                    {
                        "eval_time": "15m",
                        "alertname": "memory_high",
                        "exp_alerts": [expected(rule["memory_high"])],
                    },
                    {
                        "eval_time": "15m",
                        "alertname": "dependency_failing",
                        "exp_alerts": [expected(rule["dependency_failing"], check="database")],
                    },
                    {
                        "eval_time": "15m",
                        "alertname": "provider_error_ratio",
                        "exp_alerts": [expected(rule["provider_error_ratio"], provider="openai")],
                    },
                    # Not yet: the error ratio must hold for five minutes first.
                    {"eval_time": "3m", "alertname": "route_error_ratio", "exp_alerts": []},
                ],
            },
            {
                "interval": "10m",
                "input_series": [
                    # The disk fills by 2 points an hour from 70%: full in 15 h, within 24 h.
                    series("renum_disk_used_ratio", {}, "0.7+0.00333x36"),
                    # Connections in use grow by one every ten minutes toward a pool of 20.
                    series("renum_database_connections_in_use", {}, "10+1x36"),
                    series("renum_database_pool_size", {}, "20x36"),
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "6h",
                        "alertname": "disk_full_forecast",
                        "exp_alerts": [expected(rule["disk_full_forecast"])],
                    },
                    {
                        "eval_time": "6h",
                        "alertname": "pool_exhaustion_forecast",
                        "exp_alerts": [expected(rule["pool_exhaustion_forecast"])],
                    },
                ],
            },
            {
                "interval": "10m",
                "input_series": [
                    series("renum_disk_used_ratio", {}, "0.7x36"),
                    series("renum_database_connections_in_use", {}, "5x36"),
                    series("renum_database_pool_size", {}, "20x36"),
                    series("renum_host_memory_used_ratio", {}, "0.5x36"),
                ],
                "alert_rule_test": [
                    {"eval_time": "6h", "alertname": name, "exp_alerts": []}
                    for name in ("disk_full_forecast", "pool_exhaustion_forecast", "memory_high")
                ],
            },
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False), encoding="utf-8")
    tested = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_a_rule_that_does_not_fire_fails_promtool_test(tmp_path: Path) -> None:
    """The rule test bites: memory at 50% does not fire `memory_high`, so expecting it fails."""
    rules = prometheus_rules()
    write_rules(tmp_path, rules)
    tests = {
        "rule_files": ["rules.yml"],
        "tests": [
            {
                "interval": "1m",
                "input_series": [series("renum_host_memory_used_ratio", {}, "0.5x20")],
                "alert_rule_test": [
                    {
                        "eval_time": "10m",
                        "alertname": "memory_high",
                        "exp_alerts": [expected(by_name(rules)["memory_high"])],
                    }
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests), encoding="utf-8")
    tested = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert tested.returncode != 0
    assert "memory_high" in tested.stdout + tested.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """Each panel's query as a recording rule: `promtool check rules` parses every one."""
    expressions = dashboard_expressions(grafana_dashboard())
    assert len(expressions) > 20
    recorded = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"renum:panel_{n}", "expr": expression}
                    for n, expression in enumerate(expressions)
                ],
            }
        ]
    }
    checked = promtool("check", "rules", str(write_rules(tmp_path, recorded)), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dashboard_is_laid_out_in_rows_of_two_panels() -> None:
    dashboard = grafana_dashboard()
    panels = dashboard["panels"]
    assert [p["id"] for p in panels] == list(range(1, len(panels) + 1))
    places = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels]
    assert len(set(places)) == len(places)  # no two panels in one place
    for panel in panels:
        if panel["type"] == "timeseries":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert [t["refId"] for t in panel["targets"]] == [
                "ABCDEFG"[i] for i in range(len(panel["targets"]))
            ]
    assert dashboard["templating"]["list"][0]["type"] == "datasource"


EXPOSITION = """\
# HELP http_requests_total HTTP requests answered.
# TYPE http_requests_total counter
http_requests_total{method="GET",route="/x",status="2xx"} 3.0
# HELP http_request_duration_seconds Time to answer.
# TYPE http_request_duration_seconds histogram
# HELP renum_security_events_total Security events.
# TYPE renum_security_events_total counter
renum_build_info{version="1"} 1.0
"""


def test_queries_of_metrics_that_are_not_served_are_found() -> None:
    served = served_metric_names(EXPOSITION)
    assert {
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "renum_security_events_total",
        "renum_build_info",
    } <= served
    good = (
        "sum(rate(http_request_duration_seconds_bucket[5m])) / sum(rate(http_requests_total[5m]))"
    )
    bad = "sum(rate(renum_made_up_total[5m])) + sum(http_requests_total)"
    assert unknown_metrics([good, bad], served) == {bad: {"renum_made_up_total"}}
    assert metric_names('max(renum_host_cpu_ratio{x="http_y"})') == {"renum_host_cpu_ratio"}


@pytest.mark.parametrize("command", [["alerts", "export"], ["grafana", "export"]])
def test_the_commands_print_or_write_the_documents(command: list[str], tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(cli, command)
    assert printed.exit_code == 0, printed.output
    document = (
        yaml.safe_load(printed.output) if command[0] == "alerts" else json.loads(printed.output)
    )
    assert document == (prometheus_rules() if command[0] == "alerts" else grafana_dashboard())
    target = tmp_path / "out"
    written = runner.invoke(cli, [*command, "--output", str(target)])
    assert written.exit_code == 0, written.output
    assert target.read_text(encoding="utf-8").strip() == printed.output.strip()
    refused = runner.invoke(cli, [*command, "--output", str(tmp_path / "missing" / "out")])
    assert refused.exit_code == 2
    assert "Cannot write" in refused.output
    assert "Traceback" not in refused.output


def test_an_unknown_rule_format_is_refused() -> None:
    refused = CliRunner().invoke(cli, ["alerts", "export", "--format", "nagios"])
    assert refused.exit_code == 2
    assert "Unknown format 'nagios'" in refused.output
