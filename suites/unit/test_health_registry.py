"""The health registry: every check documented (a troubleshooting entry), its routes real, the
probe table matching the served schema, unique names."""

from __future__ import annotations

import re

import pytest

from app.capabilities.health import registry
from app.capabilities.health.checks import CheckContext
from app.capabilities.health.registry import (
    PROBES,
    CheckOutcome,
    CheckSpec,
    HealthCheck,
    Status,
    Troubleshooting,
    register,
    registered_checks,
)
from app.core.config import Settings
from app.main import create_app

ROUTE = re.compile(r"^(GET|POST|PUT|PATCH|DELETE|WS|\*) /\S*$")


def undocumented(specs: list[CheckSpec]) -> list[str]:
    """Names of checks without a complete troubleshooting entry."""
    missing = []
    for spec in specs:
        entry = spec.troubleshooting
        fields = (entry.symptom, entry.cause, entry.fix, entry.docs_anchor) if entry else ()
        if not fields or not all(text.strip() for text in fields):
            missing.append(spec.name)
    return missing


def test_every_registered_check_has_a_troubleshooting_entry() -> None:
    specs = registered_checks()
    assert {spec.name for spec in specs} >= {"packages", "database", "schema", "redis", "providers"}
    assert undocumented(specs) == []


def test_a_check_without_troubleshooting_is_caught() -> None:
    bare = CheckSpec(name="bare", kind="x", critical=False, description="d", measurement="m")
    half = CheckSpec(
        name="half",
        kind="x",
        critical=False,
        description="d",
        measurement="m",
        troubleshooting=Troubleshooting("symptom", "cause", " ", "half"),
    )
    assert undocumented([bare, half]) == ["bare", "half"]


def test_specs_are_well_formed_and_unique() -> None:
    specs = registered_checks()
    assert len({spec.name for spec in specs}) == len(specs)
    anchors = [spec.troubleshooting.docs_anchor for spec in specs if spec.troubleshooting]
    assert len(set(anchors)) == len(anchors)
    for spec in specs:
        assert spec.key == f"{spec.name}:{spec.measurement}"
        assert 0 < spec.timeout_seconds <= spec.interval_seconds <= spec.ttl_seconds, spec.name
        assert spec.failure_threshold >= 1
        assert spec.description
        assert spec.troubleshooting is not None
        assert spec.troubleshooting.docs_link == f"troubleshooting.md#{spec.name}"


def served_routes(settings: Settings) -> set[str]:
    schema = create_app(settings).openapi()
    routes = {f"{m.upper()} {path}" for path, ops in schema["paths"].items() for m in ops}
    routes.add("WS /api/v1/executions/{execution_id}/ws")  # WebSockets are not in OpenAPI
    return routes


def test_affected_endpoints_are_served_routes(settings: Settings) -> None:
    routes = served_routes(settings)
    for spec in registered_checks():
        for endpoint in spec.affected_endpoints:
            assert ROUTE.match(endpoint), endpoint
            if not endpoint.startswith("* "):
                assert endpoint in routes, f"{spec.name}: {endpoint} is not a route"


def test_probe_table_matches_the_served_schema(settings: Settings) -> None:
    schema = create_app(settings).openapi()
    assert [probe.path for probe in PROBES] == [
        "/health/live",
        "/health/ready",
        "/health/dependencies",
    ]
    for probe in PROBES:
        operation = schema["paths"][probe.path]["get"]
        assert set(operation["responses"]) == {str(code) for code in probe.status_codes}, probe.path
        assert "application/health+json" in operation["responses"]["200"]["content"]
        assert probe.purpose


class _Dummy(HealthCheck):
    spec = CheckSpec(name="packages", kind="x", critical=False, description="d", measurement="m")

    async def run(self, context: CheckContext) -> list[CheckOutcome]:
        return [CheckOutcome("x", Status.passed, "ok")]


def test_register_refuses_a_second_check_with_the_same_name() -> None:
    registered_checks()  # the built-in checks are registered
    with pytest.raises(ValueError, match="'packages' is already registered"):
        register(_Dummy)
    builtin = registry._CHECKS["packages"]
    assert register(builtin) is builtin  # registering the same class again is harmless
