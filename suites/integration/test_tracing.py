"""Traces over OTLP: a backend configured with an OTLP endpoint sends, to a receiver the test
starts on loopback (requests decoded with `opentelemetry-proto`, as a collector reads them),
a span per request and per execution, step and model call, with the execution → step → model
call parent chain and the GenAI attributes; and no prompt or output in any span."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import teams_support as ts
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from qa.factories import tenant_with_owner
from qa.fake_openai import FakeOpenAI, Reply
from qa.plugin import LaunchBackend
from qa.polling import wait_until
from qa.webhook_receiver import WebhookReceiver

PROMPT = "a prompt that no span may carry"


class OtlpReceiver:
    """The harness's loopback receiver (``qa.webhook_receiver``) read as an OTLP/HTTP traces
    endpoint: what reached it, decoded."""

    PATH = "/v1/traces"

    def __init__(self, server: WebhookReceiver) -> None:
        self.server = server

    @property
    def url(self) -> str:
        return self.server.url(self.PATH)

    @property
    def bodies(self) -> list[bytes]:
        return [request.body for request in self.server.requests_for(self.PATH)]

    def _resource_spans(self) -> list[Any]:
        found = []
        for body in self.bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            found += list(request.resource_spans)
        return found

    @property
    def resources(self) -> list[dict[str, Any]]:
        return [_attributes(spans.resource.attributes) for spans in self._resource_spans()]

    @property
    def spans(self) -> list[dict[str, Any]]:
        return [
            _span(span)
            for resource_spans in self._resource_spans()
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))


def _attributes(attributes: Any) -> dict[str, Any]:
    return {attribute.key: _value(attribute.value) for attribute in attributes}


def _span(span: Any) -> dict[str, Any]:
    return {
        "name": span.name,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(),
        "kind": span.kind,
        "start": span.start_time_unix_nano,
        "end": span.end_time_unix_nano,
        "status": span.status.code,
        "attributes": _attributes(span.attributes),
    }


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with WebhookReceiver() as server:
        yield OtlpReceiver(server)


def test_a_request_an_execution_its_steps_and_model_calls_are_traced(
    launch_backend: LaunchBackend, fake_openai: FakeOpenAI, receiver: OtlpReceiver
) -> None:
    backend = launch_backend(
        "sqlite",
        extra_env={
            "RENUM_MONITOR__TRACING__OTLP_ENDPOINT": receiver.url,
            "RENUM_MONITOR__TRACING__EXPORT_INTERVAL_SECONDS": "0.2",
        },
    )
    _, owner = tenant_with_owner(backend.base_url, backend.admin_email, backend.admin_password)
    echo = ts.echo_agent(owner)
    model = ts.model_agent(owner, fake_openai.base_url, model="gpt-4o-mini")
    team = ts.create_team(owner, [echo, model])
    fake_openai.script(Reply("the model's answer", input_tokens=12, output_tokens=5))
    execution = ts.run_to_end(owner, team, PROMPT)
    assert execution["status"] == "completed"

    def execution_span() -> dict[str, Any] | None:
        return next(
            (
                span
                for span in receiver.spans
                if span["name"] == "execution"
                and span["attributes"]["renum.execution.id"] == execution["id"]
            ),
            None,
        )

    root = wait_until(execution_span, what="the execution's span")
    assert root["attributes"]["renum.execution.status"] == "completed"
    assert root["attributes"]["renum.team.id"] == team["id"]
    steps = [s for s in receiver.spans if s["parent_span_id"] == root["span_id"]]
    assert [s["name"] for s in steps] == ["step", "step"]
    by_key = {s["attributes"]["renum.step.key"]: s for s in steps}
    assert set(by_key) == {"step-1", "step-2"}
    assert by_key["step-1"]["attributes"]["renum.agent.id"] == echo["id"]
    assert by_key["step-2"]["attributes"]["renum.agent.id"] == model["id"]
    assert {s["trace_id"] for s in steps} == {root["trace_id"]}
    for step in steps:
        assert root["start"] <= step["start"] <= step["end"] <= root["end"]
        assert step["attributes"]["renum.step.status"] == "completed"
    model_step = by_key["step-2"]
    [call] = [s for s in receiver.spans if s["parent_span_id"] == model_step["span_id"]]
    assert call["name"] == "chat"
    assert model_step["start"] <= call["start"] <= call["end"] <= model_step["end"]
    assert call["attributes"] | {"renum.cost_usd": None} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 5,
        "renum.cost_usd": None,
        "renum.paid_by": "platform",
    }
    echo_step = by_key["step-1"]
    assert not [s for s in receiver.spans if s["parent_span_id"] == echo_step["span_id"]]

    start = "/api/v1/teams/{team_id}/executions"

    def start_requests() -> list[dict[str, Any]]:
        """The request that started it (it waited for the end: its span may come later)."""
        return [s for s in receiver.spans if s["attributes"].get("http.route") == start]

    requests = wait_until(start_requests, what="the starting request's span")
    assert [r["name"] for r in requests] == [f"POST {start}"]
    assert requests[0]["attributes"]["http.response.status_code"] == 202
    routes = {s["attributes"].get("http.route") for s in receiver.spans}
    assert not {route for route in routes if route and route.startswith("/health")}  # probes
    assert {"service.name": "renum"}.items() <= receiver.resources[0].items()
    everything = b"".join(receiver.bodies)
    assert PROMPT.encode() not in everything
    assert b"the model's answer" not in everything
