"""`GET /metrics` over HTTP: the Prometheus text format with the process's CPU and memory (what
the load harness reads from a deployment), the build and the executions in flight."""

from __future__ import annotations

import teams_support as ts
from prometheus_client.parser import text_string_to_metric_families

from qa.client import ApiClient
from qa.fake_openai import FakeOpenAI, Slow


def samples(text: str) -> dict[str, float]:
    """Every sample by name (labels dropped: each name here has one sample)."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_are_prometheus_text_with_process_cpu_and_memory(client: ApiClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    values = samples(response.text)
    assert values["process_resident_memory_bytes"] > 10 * 2**20
    assert values["process_cpu_seconds_total"] > 0
    assert values["process_open_fds"] > 0
    assert values["renum_build_info"] == 1.0
    assert 'renum_build_info{environment="test",version="' in response.text
    assert values["renum_executions_active"] >= 0
    assert values["renum_database_connections_in_use"] >= 0
    assert "python_info" in values


def test_cpu_seconds_grow_between_scrapes(client: ApiClient) -> None:
    first = samples(client.get("/metrics").text)["process_cpu_seconds_total"]
    for _ in range(50):
        client.get("/metrics")
    second = samples(client.get("/metrics").text)["process_cpu_seconds_total"]
    assert second > first


def test_active_executions_count_a_running_execution(
    owner_client: ApiClient, client: ApiClient, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script(Slow(3.0))
    team = ts.create_team(owner_client, [ts.model_agent(owner_client, fake_openai.base_url)])
    execution = ts.start(owner_client, team, "slow one", wait=None)
    ts.wait_until(lambda: len(fake_openai.completions) == 1, what="the model call")
    assert samples(client.get("/metrics").text)["renum_executions_active"] >= 1
    finished = ts.get_execution(owner_client, execution["id"], wait=10)
    assert finished["status"] == "completed"
