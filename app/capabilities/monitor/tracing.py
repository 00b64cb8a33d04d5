"""Traces over OTLP (OpenTelemetry SDK), when ``RENUM_MONITOR__TRACING__OTLP_ENDPOINT`` is set.

Four kinds of span, exported in batches over OTLP/HTTP:

- **a request** (``SERVER``): ``<method> <route template>``, with ``http.request.method``,
  ``http.route`` and ``http.response.status_code``, an error status for a 5xx; told by the base
  middleware like the monitor's other request observers (the probes and ``/metrics`` are left
  out, as from the endpoint metrics; a method HTTP does not define is ``OTHER``);
- **an execution**: from its start (or, resumed in this process, from its resumption) to its
  end, with its team, strategy and final status;
- **a step** (``step``), child of its execution, from the step's start to its end as committed,
  with its key, agent, status and attempts;
- **a model call** (``chat``), child of its step, for each call that answered, with the GenAI
  semantic conventions: ``gen_ai.system`` (the provider), ``gen_ai.request.model``,
  ``gen_ai.usage.input_tokens`` and ``gen_ai.usage.output_tokens``, and Renum's cost and payer;
  it lasts the call's measured duration from the step's start.

Steps and model calls are made as the engine commits them (its observer), with the committed
times: nothing is added to a step while it runs. Span names are fixed (what a tenant names, a
step key or a model, is an attribute), and no prompt, output, variable, query string or header
goes into a span. The provider is Renum's own (not the global one), so no library
instrumentation picks it up, and the endpoint is the operator's: no tenant chooses where
traces go.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from starlette.types import Scope

from app.capabilities.monitor.endpoints import METHODS, OTHER_METHOD, excluded
from app.core.request_context import route_template
from app.models import ExecutionStatus, StepStatus
from app.services.engine.events import ExecutionStarted
from app.services.engine.state import Changes

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from app.core.config import TracingSettings

SPAN = "renum.trace_span"
FINISHED = frozenset({StepStatus.completed, StepStatus.failed})
# Executions whose span is open in this process, at most (the oldest is ended beyond).
MAX_OPEN = 10_000


def _method(scope: Scope) -> str:
    return str(scope["method"]) if scope["method"] in METHODS else OTHER_METHOD


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


class Tracing:
    """The tracer provider exporting to the endpoint, and its request and engine observers."""

    def __init__(
        self, endpoint: str, settings: TracingSettings, environment: str, version: str
    ) -> None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create(
            {
                "service.name": settings.service_name,
                "service.version": version,
                "deployment.environment.name": environment,
            }
        )
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=endpoint),
                schedule_delay_millis=settings.export_interval_seconds * 1000,
            )
        )
        self.tracer = self.provider.get_tracer("renum", version)
        self._trace = trace  # the API, imported once (not per request) and only when tracing
        self._executions: OrderedDict[uuid.UUID, Span] = OrderedDict()

    # -- requests (a RequestObserver) --------------------------------------------------------------

    def request_started(self, scope: Scope) -> None:
        if excluded(scope["path"]):
            return
        method = _method(scope)
        scope[SPAN] = self.tracer.start_span(
            method, kind=self._trace.SpanKind.SERVER, attributes={"http.request.method": method}
        )

    def request_finished(self, scope: Scope, status: int, seconds: float) -> None:
        span: Span | None = scope.pop(SPAN, None)
        if span is None:
            return
        route = route_template(scope)
        span.update_name(f"{_method(scope)} {route}")
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(self._trace.StatusCode.ERROR)
        span.end()

    # -- executions (an engine observer) -----------------------------------------------------------

    def on_engine_commit(self, changes: Changes) -> None:
        trace = self._trace
        run = changes.run
        span = self._executions.get(run.id)
        if span is None:
            resumed = not any(isinstance(e, ExecutionStarted) for e in changes.events)
            began = None if resumed or run.started_at is None else _ns(run.started_at)
            span = self.tracer.start_span(
                "execution",
                start_time=began,
                attributes={
                    "renum.execution.id": str(run.id),
                    "renum.team.id": str(run.team_id),
                    "renum.strategy": str(run.workflow.strategy),
                    "renum.execution.resumed": resumed,
                },
            )
            self._executions[run.id] = span
            if len(self._executions) > MAX_OPEN:
                _, oldest = self._executions.popitem(last=False)
                oldest.end()
        inside = trace.set_span_in_context(span)
        for step in changes.steps.values():
            if step.status not in FINISHED or step.started_at is None or step.finished_at is None:
                continue
            agent = changes.run.agents.get(str(step.agent_id)) if step.agent_id else None
            attributes: dict[str, Any] = {
                "renum.step.key": step.key,
                "renum.step.status": step.status.value,
                "renum.step.attempts": step.attempts,
            }
            if agent is not None:
                attributes["renum.agent.id"] = str(agent.id)
            step_span = self.tracer.start_span(
                "step",
                context=inside,
                start_time=_ns(step.started_at),
                attributes=attributes,
            )
            if step.status is StepStatus.failed:
                step_span.set_status(trace.StatusCode.ERROR)
            self._model_calls(changes, step.id, step.started_at, step_span)
            step_span.end(end_time=_ns(step.finished_at))
        if changes.finish is not None:
            finish = changes.finish
            span.set_attribute("renum.execution.status", finish.status.value)
            if finish.status is ExecutionStatus.failed:
                span.set_status(trace.StatusCode.ERROR)
            self._executions.pop(run.id, None)
            span.end()

    def _model_calls(
        self, changes: Changes, step_id: uuid.UUID, started: datetime, parent: Span
    ) -> None:
        inside = self._trace.set_span_in_context(parent)
        for row in changes.ledger_rows:
            if row["step_id"] != step_id:
                continue
            model = str(row["model"])
            call = self.tracer.start_span(
                "chat",
                context=inside,
                start_time=_ns(started),
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.system": str(row["provider"]),
                    "gen_ai.request.model": model,
                    "gen_ai.usage.input_tokens": int(row["input_tokens"]),
                    "gen_ai.usage.output_tokens": int(row["output_tokens"]),
                    "renum.cost_usd": float(row["cost_usd"]),
                    "renum.paid_by": str(row["paid_by"]),
                },
            )
            call.end(end_time=_ns(started + timedelta(milliseconds=int(row["duration_ms"]))))

    def shutdown(self) -> None:
        """End the spans of executions still open here, send what is queued, and stop."""
        for span in self._executions.values():
            span.end()
        self._executions.clear()
        self.provider.shutdown()
