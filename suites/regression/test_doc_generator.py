"""Snapshot of the documentation generator's output on a small fixture schema
(suites/fixtures/doc_schema.json) with a small settings model and health registry: any change
to how reference pages look shows up as a diff. Accept an intended change with
``nox -s regression -- --force-regen``."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from pytest_regressions.file_regression import FileRegressionFixture

from app.capabilities.docs.generator import DocumentationGenerator, HealthDocs

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "doc_schema.json"


class Limits(BaseModel):
    widgets: int = Field(default=10, ge=1, le=100, description="Widgets per account.")


class FixtureSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WIDGETS_", env_nested_delimiter="__")

    name: str = Field(default="Widgets", description="Shown in the API docs.")
    redis_url: str | None = Field(default=None, description="Redis (optional).")
    limits: Limits = Field(default_factory=Limits)


HEALTH = HealthDocs(
    probes=[{"path": "/ready", "purpose": "Ready to serve.", "status_codes": {200: "ready"}}],
    checks=[
        {
            "name": "database",
            "kind": "database",
            "critical": True,
            "timeout_seconds": 3.0,
            "interval_seconds": 10.0,
            "ttl_seconds": 60.0,
            "failure_threshold": 3,
            "affected_endpoints": ["* /api/*"],
            "troubleshooting": {
                "symptom": "/ready answers 503.",
                "cause": "The database is down.",
                "fix": "Start it.",
                "docs_anchor": "database",
            },
        }
    ],
)


def generated_site() -> str:
    schema = json.loads(FIXTURE.read_text(encoding="utf-8"))
    pages = DocumentationGenerator(schema, settings_model=FixtureSettings, health=HEALTH).pages()
    return "".join(f"===== {name}\n{text}" for name, text in pages.items())


def test_generated_reference(file_regression: FileRegressionFixture) -> None:
    file_regression.check(generated_site(), extension=".md")


def test_generation_is_deterministic() -> None:
    assert generated_site() == generated_site()
