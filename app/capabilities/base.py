"""What an operations capability is.

A capability is one package under ``app/capabilities/`` (health, metrics, docs, ...). It owns a
settings section of the same name with an ``enabled`` switch, and exports one ``Capability``
value. The app factory walks one list of them (``app.main.CAPABILITIES``): for each enabled
one it calls ``install`` (routes, middleware) when the app is built, and enters ``running``
(background tasks, checks, start-up work) for the app's lifespan. A capability that is
switched off is neither installed nor run, so the switch is its rollback: the base API works
unchanged without it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from app.core.config import Settings
from app.db.database import SQLAlchemyManager
from app.services.runtime import Runtime
from app.services.startup import StartUp


@dataclass(frozen=True)
class AppContext:
    """What a running capability may use: the app, its settings and the base's resources."""

    app: FastAPI
    settings: Settings
    database: SQLAlchemyManager
    runtime: Runtime
    startup: StartUp


def _installs_nothing(app: FastAPI, settings: Settings) -> None:
    """For capabilities without routes or middleware."""


@asynccontextmanager
async def _runs_nothing(context: AppContext) -> AsyncIterator[None]:
    yield


@dataclass(frozen=True)
class Capability:
    """One operations capability: its name (also its settings section), what it adds to the
    app, and what it runs while the app runs."""

    name: str
    summary: str
    install: Callable[[FastAPI, Settings], None] = _installs_nothing
    running: Callable[[AppContext], AbstractAsyncContextManager[None]] = _runs_nothing

    def enabled(self, settings: Settings) -> bool:
        """The section's ``enabled`` switch."""
        return bool(getattr(settings, self.name).enabled)
