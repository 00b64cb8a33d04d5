"""Execution metrics from the engine: an observer of every committed transaction
(``ExecutionEngine.observers``) that turns what it committed into Prometheus metrics.

- ``renum_executions_started_total{strategy}`` and ``renum_executions_ended_total{strategy,
  status}``;
- ``renum_step_duration_seconds{strategy,status}``: each finished step, from its start to its
  end as committed;
- ``renum_model_calls_total{provider,model,outcome}`` (``ok`` or the provider error's kind),
  ``renum_model_call_duration_seconds{provider,model}``, ``renum_tokens_total{provider,model,
  direction}`` and ``renum_cost_usd_total{provider,model,paid_by}`` from the ledger's rows.

Model names are the tenants' to choose, so at most ``MAX_MODELS`` distinct ones get their own
label; later ones count as ``other`` (a tenant cannot grow the series without bound).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from app.core.metrics import Metrics
from app.models import StepStatus
from app.services.engine.events import ExecutionStarted, StepFailed
from app.services.engine.state import Changes

MAX_MODELS = 50
# Model call failures that are the tenant's own doing (their key, their request), not the
# provider's: the provider error rule does not count them (`provider_totals`).
TENANT_SIDE = frozenset({"auth", "bad_request"})
OTHER = "other"
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
FINISHED = (StepStatus.completed, StepStatus.failed)


class ExecutionMetrics:
    """The engine observer and its metrics."""

    def __init__(self, metrics: Metrics) -> None:
        shared = metrics.shared
        self.started = Counter(
            "renum_executions_started_total",
            "Executions started (resumptions not counted), by strategy.",
            ("strategy",),
            registry=shared,
        )
        self.ended = Counter(
            "renum_executions_ended_total",
            "Executions ended, by strategy and final status.",
            ("strategy", "status"),
            registry=shared,
        )
        self.step_duration = Histogram(
            "renum_step_duration_seconds",
            "Steps from start to end (completed or failed), by strategy.",
            ("strategy", "status"),
            buckets=STEP_BUCKETS,
            registry=shared,
        )
        self.model_calls = Counter(
            "renum_model_calls_total",
            "Model calls, by provider, model and outcome (ok or the error's kind).",
            ("provider", "model", "outcome"),
            registry=shared,
        )
        self.call_duration = Histogram(
            "renum_model_call_duration_seconds",
            "Successful model calls' duration (retries included), by provider and model.",
            ("provider", "model"),
            buckets=CALL_BUCKETS,
            registry=shared,
        )
        self.tokens = Counter(
            "renum_tokens_total",
            "Tokens of model calls, by provider, model and direction (input or output).",
            ("provider", "model", "direction"),
            registry=shared,
        )
        self.cost = Counter(
            "renum_cost_usd_total",
            "Cost of model calls in US dollars, by provider, model and who paid.",
            ("provider", "model", "paid_by"),
            registry=shared,
        )
        self._models: set[tuple[str, str]] = set()

    def provider_totals(
        self, registry: CollectorRegistry | None = None
    ) -> dict[str, tuple[float, float]]:
        """Each provider's model calls so far (this process's, or as ``registry`` holds them:
        every worker's), and how many failed on the provider's side. A tenant's own mistakes
        (a wrong key, a request the provider refused: ``TENANT_SIDE``) are calls, not
        failures: they say nothing of the provider's health."""
        source = self.model_calls.collect() if registry is None else registry.collect()
        totals: dict[str, tuple[float, float]] = {}
        for family in source:
            for sample in family.samples:
                if sample.name != "renum_model_calls_total":
                    continue
                provider, outcome = sample.labels["provider"], sample.labels["outcome"]
                calls, errors = totals.get(provider, (0.0, 0.0))
                failed = 0.0 if outcome == "ok" or outcome in TENANT_SIDE else sample.value
                totals[provider] = (calls + sample.value, errors + failed)
        return totals

    def model_label(self, provider: str, model: str) -> str:
        key = (provider, model)
        if key in self._models:
            return model
        if len(self._models) < MAX_MODELS:
            self._models.add(key)
            return model
        return OTHER

    def __call__(self, changes: Changes) -> None:
        strategy = changes.run.workflow.strategy
        for event in changes.events:
            if isinstance(event, ExecutionStarted):
                self.started.labels(strategy).inc()
            elif isinstance(event, StepFailed) and "kind" in event.error:
                record = changes.steps.get(event.step)
                agent = (
                    changes.run.agents.get(str(record.agent_id))
                    if record is not None and record.agent_id is not None
                    else None
                )
                if agent is not None:
                    model = self.model_label(agent.provider, agent.model)
                    self.model_calls.labels(agent.provider, model, event.error["kind"]).inc()
        if changes.finish is not None:
            self.ended.labels(strategy, changes.finish.status.value).inc()
        for step in changes.steps.values():
            if step.status in FINISHED and step.started_at and step.finished_at:
                seconds = (step.finished_at - step.started_at).total_seconds()
                self.step_duration.labels(strategy, step.status.value).observe(max(0.0, seconds))
        for row in changes.ledger_rows:
            provider = str(row["provider"])
            model = self.model_label(provider, str(row["model"]))
            self.model_calls.labels(provider, model, "ok").inc()
            self.call_duration.labels(provider, model).observe(row["duration_ms"] / 1000)
            self.tokens.labels(provider, model, "input").inc(row["input_tokens"])
            self.tokens.labels(provider, model, "output").inc(row["output_tokens"])
            self.cost.labels(provider, model, row["paid_by"]).inc(float(row["cost_usd"]))
