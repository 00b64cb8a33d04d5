"""``add_to_schema``: what the backend answers beyond its routes' declarations is documented in
every schema the application generates, also one generated again after the cached schema was
reset (the additions once documented only the first)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from app.core.config import Settings
from app.core.schema_additions import add_to_schema
from app.main import create_app


def _mark(name: str) -> Any:
    def document(schema: dict[str, Any]) -> None:
        schema.setdefault("x-marks", []).append(name)

    return document


def test_each_generated_schema_gets_every_addition_once() -> None:
    app = FastAPI()
    add_to_schema(app, _mark("first"))
    add_to_schema(app, _mark("second"))

    schema = app.openapi()
    assert schema["x-marks"] == ["first", "second"]
    assert app.openapi() is schema  # served from the cache, not documented again

    app.openapi_schema = None
    again = app.openapi()
    assert again is not schema
    assert again["x-marks"] == ["first", "second"]


def test_the_backends_additions_survive_a_regenerated_schema(settings: Settings) -> None:
    app = create_app(settings)
    first = app.openapi()
    app.openapi_schema = None
    second = app.openapi()
    assert second is not first
    create_agent = second["paths"]["/api/v1/agents"]["post"]["responses"]
    list_agents = second["paths"]["/api/v1/agents"]["get"]["responses"]
    assert "413" in create_agent  # the body limit
    assert "503" in list_agents  # the database manager
    assert "304" in list_agents  # conditional reads
    assert second == first


def test_a_failing_addition_never_leaves_a_half_documented_schema() -> None:
    app = FastAPI()
    calls: list[str] = []

    def fails_once(schema: dict[str, Any]) -> None:
        calls.append("called")
        if len(calls) == 1:
            raise RuntimeError("broken")
        schema["x-ok"] = True

    add_to_schema(app, fails_once)
    with pytest.raises(RuntimeError):
        app.openapi()
    assert app.openapi_schema is None
    assert app.openapi()["x-ok"] is True
