"""The metrics capability: `GET /metrics` in the Prometheus text format: the app's registry
(``app.core.metrics``: what every capability defines, added up across workers, and this
process's collectors) and a few gauges read when scraped. Switched off with
``RENUM_METRICS__ENABLED=false``: the route does not exist."""

from __future__ import annotations

from fastapi import FastAPI

from app.capabilities.base import Capability
from app.capabilities.metrics import routes
from app.capabilities.metrics.collector import CONTENT_TYPE, ScrapedGauges
from app.core.config import Settings

__all__ = ["CAPABILITY", "CONTENT_TYPE", "ScrapedGauges"]


def install(app: FastAPI, settings: Settings) -> None:
    app.state.scraped_gauges = ScrapedGauges(app.state.metrics)
    app.include_router(routes.router)


CAPABILITY = Capability(
    name="metrics",
    summary="GET /metrics in the Prometheus text format.",
    install=install,
)
