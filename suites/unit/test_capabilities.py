"""The shape of the operations capabilities: every package under app/capabilities is in the one
list the app factory reads, has a settings section with an `enabled` switch, and is removed
whole (routes and schema) when switched off; the improvement plan's files in app/core only
re-export, and nothing in app imports them."""

from __future__ import annotations

import ast
import importlib
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.capabilities.base import Capability
from app.core.config import Settings
from app.main import CAPABILITIES, create_app, enabled_capabilities
from qa.launcher import REPO_ROOT

CAPABILITIES_DIR = REPO_ROOT / "app" / "capabilities"
# The improvement plan's paths and the public class each re-exports (those that exist yet).
PLAN_FILES = {
    "app/core/dependency_validator.py": ("DependencyValidator", "app.capabilities.health"),
    "app/core/doc_generator.py": ("DocumentationGenerator", "app.capabilities.docs"),
    "app/core/environment_config.py": (
        "EnvironmentConfigManager",
        "app.capabilities.configuration",
    ),
    "app/core/health_monitor.py": ("AdvancedHealthMonitor", "app.capabilities.monitor"),
    "app/core/performance.py": ("PerformanceOptimizer", "app.capabilities.performance"),
    "app/core/premium_monitor.py": ("PremiumMonitor", "app.capabilities.analytics"),
    "app/core/security_manager.py": ("SecurityManager", "app.capabilities.security"),
    "app/core/sqlalchemy_manager.py": ("SQLAlchemyManager", "app.db.database"),
}
PLAN_NAMES = (
    "dependency_validator",
    "health_monitor",
    "sqlalchemy_manager",
    "environment_config",
    "doc_generator",
    "performance",
    "security_manager",
    "premium_monitor",
)
ROUTES = {
    "configuration": {"/api/v1/ops/config", "/api/v1/ops/config/reload"},
    "database_manager": set(),  # no routes of its own: 503s and /metrics figures
    "health": {"/health/live", "/livez", "/health/ready", "/readyz", "/health/dependencies"},
    "metrics": {"/metrics"},
    "monitor": {
        "/api/v1/ops/monitor",
        "/api/v1/ops/monitor/history/{figure}",
        "/api/v1/ops/monitor/stream",
        "/api/v1/ops/alerts",
        "/api/v1/ops/silences",
        "/api/v1/ops/silences/{silence_id}",
        "/health/dashboard",
        "/health/dashboard/assets",
        "/health/dashboard/vendor",
    },
    "performance": {"/api/v1/ops/profiles", "/api/v1/ops/profiles/{profile_id}"},
    "backups": set(),  # no routes of its own: its watch's figures, check and alerts
    "security": {"/api/v1/audit", "/api/v1/audit/export"},
    "analytics": {"/api/v1/analytics/summary", "/api/v1/analytics/timeseries"},
    "docs": {"/docs", "/docs/oauth2-redirect", "/static"},
}


def route_paths(routes: Iterable[Any]) -> Iterator[str]:
    """Every route's path, also inside included routers (FastAPI keeps them nested)."""
    for route in routes:
        if getattr(route, "path", None):
            yield route.path
        nested = getattr(route, "original_router", None) or getattr(route, "router", None)
        if nested is not None and hasattr(nested, "routes"):
            yield from route_paths(nested.routes)


def paths(settings: Settings) -> set[str]:
    return set(route_paths(create_app(settings).routes))


def test_every_capability_package_is_listed_once_with_a_switch() -> None:
    packages = sorted(p.name for p in CAPABILITIES_DIR.iterdir() if (p / "__init__.py").exists())
    names = [capability.name for capability in CAPABILITIES]
    assert sorted(names) == packages
    assert len(set(names)) == len(names)
    defaults = Settings.model_construct()
    for capability in CAPABILITIES:
        module = importlib.import_module(f"app.capabilities.{capability.name}")
        assert module.CAPABILITY is capability
        section = type(getattr(defaults, capability.name))
        assert "enabled" in section.model_fields, capability.name
        assert section.model_fields["enabled"].description


@pytest.mark.parametrize("name", [*ROUTES, "all"])
def test_a_switched_off_capability_is_removed_whole(name: str) -> None:
    off = set(ROUTES) if name == "all" else {name}
    settings = Settings(**{section: {"enabled": False} for section in off})
    assert {c.name for c in enabled_capabilities(settings)} == set(ROUTES) - off
    served = paths(settings)
    schema = create_app(settings).openapi()["paths"]
    for capability, routes in ROUTES.items():
        if capability in off:
            assert not routes & served, capability
            assert not routes & set(schema), capability
        else:
            assert routes <= served, capability
    assert "/api/v1/teams" in schema  # the base API stays


def test_the_request_observers_go_with_their_switches() -> None:
    from app.capabilities.database_manager import QueryBudget
    from app.capabilities.monitor import EndpointStats
    from app.capabilities.performance import SlowRequests
    from app.capabilities.security.audit import AuditKeeper

    def observers(settings: Settings) -> list[type]:
        return [type(o) for o in create_app(settings).state.request_observers]

    every = [QueryBudget, EndpointStats, SlowRequests, AuditKeeper]
    assert observers(Settings()) == every
    assert observers(Settings(monitor={"enabled": False})) == every[:1] + every[2:]
    assert observers(Settings(database_manager={"enabled": False})) == every[1:]
    assert observers(Settings(performance={"enabled": False})) == every[:2] + every[3:]
    assert observers(Settings(security={"enabled": False})) == every[:3]
    assert observers(Settings(security={"audit": {"enabled": False}})) == every[:3]


def test_a_capability_without_hooks_installs_and_runs_nothing() -> None:
    bare = Capability(name="docs", summary="only a switch")
    app = create_app(Settings(docs={"enabled": False}))
    before = len(app.routes)
    bare.install(app, Settings())
    assert len(app.routes) == before


@pytest.mark.parametrize(("path", "export"), PLAN_FILES.items())
def test_the_plan_files_only_re_export(path: str, export: tuple[str, str]) -> None:
    name, package = export
    tree = ast.parse((REPO_ROOT / path).read_text(encoding="utf-8"))
    body = [node for node in tree.body if not isinstance(node, ast.Expr)]  # the docstring
    assert [type(node) for node in body] == [ast.ImportFrom, ast.Assign]
    assert isinstance(body[0], ast.ImportFrom)
    assert body[0].module == package
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    assert getattr(module, name) is getattr(importlib.import_module(package), name)


def test_nothing_in_app_imports_the_plan_files() -> None:
    plan_modules = {f"app.core.{name}" for name in PLAN_NAMES}
    for source in (REPO_ROOT / "app").rglob("*.py"):
        if source.stem in PLAN_NAMES and source.parent.name == "core":
            continue
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                imported = {alias.name for alias in node.names}
            else:
                continue
            assert not imported & plan_modules, f"{Path(source).relative_to(REPO_ROOT)}"


def test_every_plan_file_that_exists_is_in_the_import_contracts() -> None:
    contracts = {
        c["id"]: c
        for c in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
            "contracts"
        ]
    }
    existing = {
        f"app.core.{n}" for n in PLAN_NAMES if (REPO_ROOT / "app/core" / f"{n}.py").exists()
    }
    assert existing == {path.removesuffix(".py").replace("/", ".") for path in PLAN_FILES}
    ignored = {line.split(" -> ")[0] for line in contracts["layers"]["ignore_imports"]}
    assert ignored == existing
    assert set(contracts["core-reexports"]["protected_modules"]) == existing
