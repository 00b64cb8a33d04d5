"""The monitor on a real backend: `/metrics` after a known sequence of requests (counts by
route template, method and status class), valid for `promtool check metrics`; the engine's
executions, steps and model calls counted; `/api/v1/ops/monitor` for platform admins only;
and, under `renum serve --workers 2`, metrics that add up across the workers (within a
sampling interval: each worker folds its requests in when it samples or answers a scrape).
SQLite, except the workers (several need PostgreSQL): what is counted does not depend on the
database."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import teams_support as ts
from integration_support import ServedWithWorkers
from prometheus_client.parser import text_string_to_metric_families

from app.capabilities.monitor.exports import (
    dashboard_expressions,
    grafana_dashboard,
    metric_names,
    prometheus_rules,
    served_metric_names,
    unknown_metrics,
)
from qa.client import API, ApiClient
from qa.factories import expect
from qa.fake_openai import Fail, FakeOpenAI, Reply
from qa.launcher import Backend
from qa.polling import wait_until

MONITOR = f"{API}/ops/monitor"
SAMPLING_SECONDS = 1.0
TEAM_ROUTE = "/api/v1/teams/{team_id}"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base_url: str, client: httpx.Client | ApiClient | None = None) -> tuple[str, Samples]:
    """The metrics text and every sample by (name, labels)."""
    response = (client or httpx).get(f"{base_url}/metrics")
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_requests_are_counted_by_route_template_method_and_status_class(
    backend: Backend, owner_client: ApiClient, admin_client: ApiClient
) -> None:
    team = ts.create_team(owner_client, [ts.echo_agent(owner_client)])
    _, before = scrape(backend.base_url, admin_client)
    for _ in range(3):
        expect(owner_client.get(f"{API}/teams/{team['id']}"), 200)
    for _ in range(2):
        assert owner_client.get(f"{API}/teams/{uuid.uuid4()}").status_code == 404
    assert owner_client.get(f"{API}/teams/not-a-uuid").status_code == 422
    assert owner_client.get(f"{API}/no/such/{uuid.uuid4()}").status_code == 404
    for _ in range(4):
        assert httpx.get(f"{backend.base_url}/health/live").status_code == 200
    text, after = scrape(backend.base_url, admin_client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "http_requests_total"
    assert delta(requests, method="GET", route=TEAM_ROUTE, status="2xx") == 3
    assert delta(requests, method="GET", route=TEAM_ROUTE, status="4xx") == 3
    assert delta(requests, method="GET", route="<unmatched>", status="4xx") == 1
    count = "http_request_duration_seconds_count"
    assert delta(count, method="GET", route=TEAM_ROUTE) == 6
    # Never the raw path, and never the probes or the metrics route.
    assert str(team["id"]) not in text
    assert 'route="/health/live"' not in text
    assert 'route="/metrics"' not in text


def test_the_served_metrics_pass_promtool(backend: Backend, admin_client: ApiClient) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: the integration session installs Debian's prometheus"
    text, _ = scrape(backend.base_url, admin_client)
    checked = subprocess.run(  # noqa: S603 - a fixed tool on our own output
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_exported_rules_and_dashboard_read_only_served_metrics(
    backend: Backend, admin_client: ApiClient
) -> None:
    """`renum alerts export` and `renum grafana export` query the metrics this backend serves:
    a rule or a panel reading a metric that does not exist (renamed, removed, misspelt) fails
    here, as `unknown_metrics` is shown to in the unit tests."""
    text, _ = scrape(backend.base_url, admin_client)
    served = served_metric_names(text)
    rules = [rule["expr"] for rule in prometheus_rules()["groups"][0]["rules"]]
    panels = dashboard_expressions(grafana_dashboard())
    read = set().union(*(metric_names(expression) for expression in rules + panels))
    assert {"renum_dependency_up", "renum_host_memory_used_ratio", "http_requests_total"} <= read
    assert unknown_metrics(rules + panels, served) == {}


def test_executions_steps_and_model_calls_are_counted(
    backend: Backend,
    owner_client: ApiClient,
    admin_client: ApiClient,
    fake_openai: FakeOpenAI,
) -> None:
    model = ts.model_agent(owner_client, fake_openai.base_url, model="gpt-4o-mini")
    team = ts.create_team(owner_client, [model])
    _, before = scrape(backend.base_url, admin_client)
    fake_openai.script(Reply("fine", input_tokens=10, output_tokens=4))
    assert ts.run_to_end(owner_client, team)["status"] == "completed"
    fake_openai.script(Fail(401))
    assert ts.run_to_end(owner_client, team)["status"] == "failed"
    _, after = scrape(backend.base_url, admin_client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("renum_executions_started_total", strategy="sequential") == 2
    assert delta("renum_executions_ended_total", strategy="sequential", status="completed") == 1
    assert delta("renum_executions_ended_total", strategy="sequential", status="failed") == 1
    model_labels = {"provider": "openai", "model": "gpt-4o-mini"}
    assert delta("renum_model_calls_total", outcome="ok", **model_labels) == 1
    assert delta("renum_model_calls_total", outcome="auth", **model_labels) == 1
    assert delta("renum_tokens_total", direction="input", **model_labels) == 10
    assert delta("renum_tokens_total", direction="output", **model_labels) == 4
    assert delta("renum_model_call_duration_seconds_count", **model_labels) == 1
    steps = "renum_step_duration_seconds_count"
    assert delta(steps, strategy="sequential", status="completed") == 1
    assert delta(steps, strategy="sequential", status="failed") == 1


def test_the_monitor_snapshot_is_for_platform_admins(
    backend: Backend, admin_client: ApiClient, owner_client: ApiClient
) -> None:
    snapshot = wait_until(
        lambda: (
            (body := expect(admin_client.get(MONITOR), 200))["system"]["process_rss_bytes"]["value"]
            and body
        ),
        timeout=20,
        what="the monitor's first sample",
        interval=0.2,
    )
    assert snapshot["system"]["disk_free_bytes"]["unit"] == "bytes"

    # A request is counted once its answer has gone out, so the one right after it may come
    # first: the snapshots soon count the monitor's own route.
    def counting_itself() -> dict[str, Any] | None:
        body: dict[str, Any] = expect(admin_client.get(MONITOR), 200)
        routes = {route["route"] for route in body["routes"]}
        return body if "/api/v1/ops/monitor" in routes else None

    snapshot = wait_until(
        counting_itself, timeout=20, what="the monitor's route in its own snapshot", interval=0.2
    )
    history = expect(admin_client.get(f"{MONITOR}/history/process_rss_bytes"), 200)
    assert history["unit"] == "bytes"
    assert history["pid"] == snapshot["pid"]
    assert history["points"]
    assert admin_client.get(f"{MONITOR}/history/no_such_figure").status_code == 422
    assert owner_client.get(MONITOR).status_code == 403
    with ApiClient(backend.base_url) as anonymous:
        assert anonymous.get(MONITOR).status_code == 401


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[ServedWithWorkers]:
    # The operator's own folder for the multiprocess metrics, so the test can look into it;
    # a short sampling interval, the bound on how late a worker's requests reach the sum.
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "RENUM_MONITOR__INTERVAL_SECONDS": str(SAMPLING_SECONDS),
    }
    backend = ServedWithWorkers.start("postgresql", extra_env=env)
    try:
        yield backend
    finally:
        backend.stop()


@pytest.mark.drill  # a long scenario: run by `nox -s drills`
def test_with_several_workers_the_metrics_add_up(
    workers: ServedWithWorkers, tmp_path: Path
) -> None:
    with closing(ApiClient(workers.base_url)) as admin:
        admin.login(workers.admin_email, workers.admin_password)
        token = admin.headers["Authorization"]
        pids: set[int] = set()
        made = 0

        def both_workers_answered() -> bool:
            nonlocal made
            # A new connection each time, so that either worker may accept it.
            answer = httpx.get(f"{workers.base_url}{MONITOR}", headers={"Authorization": token})
            made += 1
            pids.add(expect(answer, 200)["pid"])
            return len(pids) == 2

        wait_until(both_workers_answered, timeout=60, what="both workers answering", interval=0)
        for _ in range(10):
            answer = httpx.get(f"{workers.base_url}{MONITOR}", headers={"Authorization": token})
            expect(answer, 200)
            made += 1
        assert {path.name.split("_")[-1] for path in tmp_path.glob("counter_*.db")} >= {
            f"{pid}.db" for pid in pids
        }  # each worker wrote its own counts

        def total() -> float:
            _, samples = scrape(workers.base_url, admin)
            return sum(
                value(samples, "http_requests_total", method="GET", route=MONITOR, status=status)
                for status in ("2xx", "4xx", "5xx")
            )

        # A worker folds its requests into the shared files when it answers a scrape and at
        # each of its samples: within one sampling interval, the scrape has every worker's.
        wait_until(
            lambda: total() == made, timeout=10 * SAMPLING_SECONDS, what="every worker's count"
        )
        for _ in range(4):  # whichever worker answers the scrape, the figure is the sum
            assert total() == made
