"""The ASGI application: ``create_app(settings)`` wires settings, database, middleware and
routers together, and enables the operations capabilities listed in ``CAPABILITIES`` whose
switch is on. Nothing connects at import time; the lifespan opens and closes resources."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.middleware.cors import CORSMiddleware

from app import __version__
from app.api import server_rules
from app.api.input_guard import CheckInputs
from app.api.roles import declare_required_roles
from app.api.router import PrefixRouter, index_routes
from app.api.routes import (
    accounts,
    agents,
    api_keys,
    auth,
    execution_ws,
    landing,
    provider_keys,
    team_executions,
    team_members,
    teams,
    usage,
    users,
    webhooks,
)
from app.capabilities import (
    analytics,
    backups,
    configuration,
    database_manager,
    docs,
    health,
    metrics,
    monitor,
    performance,
    security,
)
from app.capabilities.base import AppContext, Capability
from app.core.alerts import LogAlertReporter
from app.core.config import Environment, Settings
from app.core.config_rules import refuse_unsafe
from app.core.crypto import SecretBox
from app.core.emails import accept_special_use_domains
from app.core.error_reporting import flush_error_reports
from app.core.errors import install_error_handlers
from app.core.example_passwords import refuse_example_passwords
from app.core.logging import configure_logging, get_logger
from app.core.metrics import Metrics
from app.core.middleware import RequestContextMiddleware
from app.core.security import TokenCodec, configure_password_hashing, warm_up_password_checks
from app.core.shutdown import GracefulShutdown
from app.db.database import SQLAlchemyManager, require_driver
from app.services.audit import AuditTrail
from app.services.runtime import Runtime
from app.services.startup import StartUp

API_PREFIX = "/api/v1"
# Every operations capability, in the order they start (and the reverse order they stop).
CAPABILITIES: tuple[Capability, ...] = (
    configuration.CAPABILITY,
    database_manager.CAPABILITY,
    health.CAPABILITY,
    metrics.CAPABILITY,
    monitor.CAPABILITY,
    performance.CAPABILITY,
    backups.CAPABILITY,
    security.CAPABILITY,
    analytics.CAPABILITY,
    docs.CAPABILITY,
)
log = get_logger("app")


def _operation_id(route: APIRoute) -> str:
    return route.name


def enabled_capabilities(settings: Settings) -> list[Capability]:
    return [capability for capability in CAPABILITIES if capability.enabled(settings)]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    database = SQLAlchemyManager(settings.database)
    app.state.database = database
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(database.dispose)
        startup = StartUp(settings, database)
        stack.push_async_callback(startup.stop)
        await startup.begin()
        await asyncio.to_thread(warm_up_password_checks)
        runtime = Runtime.build(settings, database, app.state.box)
        app.state.runtime = runtime
        context = AppContext(app, settings, database, runtime, startup)
        for capability in enabled_capabilities(settings):
            await stack.enter_async_context(capability.running(context))
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
                capabilities=[c.name for c in enabled_capabilities(settings)],
            )
            yield
        finally:
            shutdown.begin("lifespan")
            shutdown.unhook_signals()
            try:
                async with asyncio.timeout(settings.shutdown_timeout_seconds):
                    await runtime.stop()
            except TimeoutError:
                log.warning("shutdown_timed_out", timeout_seconds=settings.shutdown_timeout_seconds)
    Metrics.process_exited()  # this worker's live gauges leave the sums of the others
    log.info("shutdown_complete")
    await asyncio.to_thread(flush_error_reports)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings)
    accept_special_use_domains(settings.auth.special_use_email_domains)
    refuse_example_passwords(settings.auth.refuse_example_passwords)
    warnings = refuse_unsafe(settings)  # UnsafeConfiguration lists every error at once
    configure_password_hashing(settings.auth.password_hash)
    require_driver(settings.database)  # MissingDriver names the install command
    app = FastAPI(
        title=f"{settings.app_name} API",
        version=__version__,
        description="Compose teams of AI agents, run them, watch them, and account for them.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        docs_url=None,
        redoc_url=None,
        # FastAPI's own OpenTelemetry hooks look up the global providers on every request;
        # Renum measures its requests itself (the monitor), so they stay off.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.metrics = Metrics(__version__, settings.environment.value)
    app.state.request_observers = []  # capabilities add theirs (RequestContextMiddleware)
    app.state.response_headers = []  # added to every answer (RequestContextMiddleware)
    app.state.alerts = LogAlertReporter()  # the monitor replaces it with its alert manager
    app.state.audit = AuditTrail.disabled()  # the security capability enables it
    app.state.request_screen = None  # the security capability's throttling (app.api.deps)
    app.state.problem_observers = []  # told of each problem answered (app.core.errors)
    for problem in warnings:
        log.warning(
            "configuration_warning",
            setting=problem.setting,
            rule=problem.rule,
            message=problem.message,
            fix=problem.fix,
        )
    app.state.codec = TokenCodec(settings)
    app.state.box = SecretBox.from_settings(settings)
    install_error_handlers(app)
    server_rules.install(app)

    # Input limits on every API operation, before anything else runs (probes take no input).
    api = PrefixRouter(prefix=API_PREFIX, dependencies=[CheckInputs])
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
        webhooks,
    ):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(landing.router)  # the page at /
    for capability in enabled_capabilities(settings):
        capability.install(app, settings)
    declare_required_roles(app)  # x-required-role from each route's declared role
    index_routes(app)  # a request tries only the routes its first path segment can reach

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        observers=app.state.request_observers,
        response_headers=app.state.response_headers,
    )
    return app


def reference_docs() -> docs.DocumentationGenerator:
    """The docs site's reference generator for this backend, every capability switched on."""
    settings = Settings.model_construct(environment=Environment.test)  # no warnings to log
    return docs.DocumentationGenerator.for_app(create_app(settings))
