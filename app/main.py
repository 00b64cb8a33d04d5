"""The ASGI application: ``create_app(settings)`` wires settings, database, middleware and
routers together. Nothing connects at import time; the lifespan opens and closes resources."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.middleware.cors import CORSMiddleware

from app import __version__
from app.api import server_rules
from app.api.input_guard import CheckInputs
from app.api.routes import (
    accounts,
    agents,
    api_keys,
    auth,
    execution_ws,
    health,
    metrics,
    provider_keys,
    team_executions,
    team_members,
    teams,
    usage,
    users,
)
from app.core.config import Settings
from app.core.crypto import SecretBox
from app.core.errors import install_error_handlers
from app.core.health.startup import finish_start_up, migrate_if_possible, start_health
from app.core.logging import configure_logging, get_logger
from app.core.middleware import RequestContextMiddleware
from app.core.security import TokenCodec
from app.core.shutdown import GracefulShutdown
from app.db.database import Database
from app.services.bootstrap import bootstrap_admin
from app.services.runtime import Runtime
from app.web.docs import install_docs

API_PREFIX = "/api/v1"
log = get_logger("app")


def _operation_id(route: APIRoute) -> str:
    return route.name


async def _bootstrap(settings: Settings, database: Database) -> None:
    """Create the first admin on an empty database."""
    async with database.session() as session:
        created = await bootstrap_admin(session, settings)
    if created is None:
        return
    log.info("bootstrap_admin_created", email=created.email)
    if created.generated_password is not None:
        # Printed once to the console, deliberately not through the logger.
        print(
            f"\nRenum created the first admin: {created.email}\n"
            f"Its generated password (shown once): {created.generated_password}\n",
            file=sys.stderr,
            flush=True,
        )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    database = Database(settings.database)
    app.state.database = database
    later: asyncio.Task[None] | None = None
    try:
        migrated = not settings.database.auto_migrate or await migrate_if_possible(
            settings, database
        )
        monitor = await start_health(settings, database)
        app.state.health_monitor = monitor
        if monitor.ready:
            await _bootstrap(settings, database)
        else:  # a degraded start: migrate and create the first admin once possible
            later = asyncio.create_task(
                finish_start_up(
                    settings,
                    database,
                    monitor,
                    migrated=migrated,
                    bootstrap=lambda: _bootstrap(settings, database),
                )
            )
        runtime = Runtime.build(settings, database, app.state.box)
        app.state.runtime = runtime
        await runtime.start()
        # SIGTERM ends live streams and releases running executions at once (app.core.shutdown).
        shutdown = app.state.shutdown = GracefulShutdown(settings.shutdown_timeout_seconds)
        shutdown.on_begin(runtime.hub.close)
        shutdown.on_begin(runtime.runner.begin_stop)
        shutdown.hook_signals()
        try:
            log.info(
                "startup_complete",
                version=__version__,
                environment=settings.environment.value,
                database=database.engine.dialect.name,
            )
            yield
        finally:
            shutdown.begin("lifespan")
            shutdown.unhook_signals()
            await monitor.stop()
            try:
                async with asyncio.timeout(settings.shutdown_timeout_seconds):
                    await runtime.stop()
            except TimeoutError:
                log.warning("shutdown_timed_out", timeout_seconds=settings.shutdown_timeout_seconds)
    finally:
        if later is not None:
            later.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await later
        await database.dispose()
        log.info("shutdown_complete")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings)
    app = FastAPI(
        title=f"{settings.app_name} API",
        version=__version__,
        description="Compose teams of AI agents, run them, watch them, and account for them.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.codec = TokenCodec(settings)
    app.state.box = SecretBox.from_settings(settings)
    install_error_handlers(app)
    server_rules.install(app)

    # Input limits on every API operation, before anything else runs (probes take no input).
    api = APIRouter(prefix=API_PREFIX, dependencies=[CheckInputs])
    for module in (
        auth,
        accounts,
        users,
        api_keys,
        provider_keys,
        agents,
        teams,
        team_members,
        team_executions,
        execution_ws,
        usage,
    ):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(health.router)
    app.include_router(metrics.router)
    install_docs(app)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    return app
