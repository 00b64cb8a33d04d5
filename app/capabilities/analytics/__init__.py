"""The analytics capability (PremiumMonitor): business figures for the people who pay for
agent teams, read from the rollups the base keeps as executions end (``app.models.rollup``):
a period's executions, success rates, spend split by who paid, top spenders and models
(``/api/v1/analytics/summary``) and any of those figures per hour or day
(``/api/v1/analytics/timeseries``). Account owners see their account, platform admins every
account. Switched off with ``RENUM_ANALYTICS__ENABLED=false``: the routes do not exist; the
rollups (and ``GET /api/v1/usage``, which reads them) stay, as part of the base."""

from __future__ import annotations

from fastapi import FastAPI

from app.capabilities.analytics import routes
from app.capabilities.base import Capability
from app.core.config import Settings

__all__ = ["CAPABILITY", "PremiumMonitor"]


class PremiumMonitor:
    """What the capability adds to one app (``app.state.analytics``): its routes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.analytics

    def install(self, app: FastAPI) -> None:
        app.include_router(routes.router)


def install(app: FastAPI, settings: Settings) -> None:
    app.state.analytics = monitor = PremiumMonitor(settings)
    monitor.install(app)


CAPABILITY = Capability(
    name="analytics",
    summary="Business figures from the rollups: summaries and time series per account.",
    install=install,
)
