"""The ``renum`` command: serve the API, migrate the database, manage admins, show the version.

Settings come from the environment and ``.env`` exactly as for the server. Errors print a
readable message and exit non-zero; no traceback is shown for expected failures.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from app import __version__
from app.core.config import Environment, Settings
from app.core.config_rules import Severity, UnsafeConfiguration, check_settings, refuse_unsafe
from app.core.config_sources import ConfigFileError, setting_sources
from app.core.config_view import effective_configuration

T = TypeVar("T")
APP_FACTORY = "app.main:create_app"

cli = typer.Typer(
    name="renum",
    help="Renum: run teams of AI agents. Settings come from RENUM_* variables and .env.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_cli = typer.Typer(
    help="The database: migrations, schema drift, retention.", no_args_is_help=True
)
users_cli = typer.Typer(help="User administration.", no_args_is_help=True)
docs_cli = typer.Typer(help="The docs site's generated reference.", no_args_is_help=True)
config_cli = typer.Typer(help="The effective configuration and its checks.", no_args_is_help=True)
backup_cli = typer.Typer(
    help="Backups of the SQLite database: take, list, verify, restore.", no_args_is_help=True
)
security_cli = typer.Typer(
    help="Security: known vulnerabilities of the installed packages (offline), the SBOM.",
    no_args_is_help=True,
)
cli.add_typer(db_cli, name="db")
cli.add_typer(users_cli, name="users")
cli.add_typer(docs_cli, name="docs")
cli.add_typer(config_cli, name="config")
cli.add_typer(backup_cli, name="backup")
cli.add_typer(security_cli, name="security")
keys_cli = typer.Typer(
    help="The keys that seal stored secrets and executions' content: which values each one "
    "seals, rotation, and sealing the content stored before an account was listed.",
    no_args_is_help=True,
)
cli.add_typer(keys_cli, name="keys")
audit_cli = typer.Typer(
    help="The audit trail: check that no entry was changed, removed or reordered.",
    no_args_is_help=True,
)
cli.add_typer(audit_cli, name="audit")
alerts_cli = typer.Typer(
    help="The monitor's alert rules for other tools (Prometheus).", no_args_is_help=True
)
cli.add_typer(alerts_cli, name="alerts")
grafana_cli = typer.Typer(
    help="A Grafana dashboard of the metrics Renum serves.", no_args_is_help=True
)
cli.add_typer(grafana_cli, name="grafana")
analytics_cli = typer.Typer(
    help="Business analytics: the rollups behind the usage and analytics figures.",
    no_args_is_help=True,
)
cli.add_typer(analytics_cli, name="analytics")

# Through a pipe or into a file, Rich would wrap at 80 columns, splitting URLs and paths in
# two; there the lines are as long as they need (up to PIPED_WIDTH), in a terminal its width.
PIPED_WIDTH = 200


def _console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else PIPED_WIDTH
    return Console(stderr=stderr, width=width)


out = _console()
err = _console(stderr=True)


def read_settings(**overrides: Any) -> Settings:
    """The settings from every source; on invalid values, every problem and exit code 2."""
    try:
        return Settings(**overrides)
    except (ValidationError, ConfigFileError) as exc:
        err.print("[bold red]Invalid configuration:[/]")
        if isinstance(exc, ConfigFileError):
            err.print(f"  {exc}")
        else:
            for error in exc.errors():
                loc = [str(part) for part in error["loc"]]
                where = f"{'.'.join(loc)} (RENUM_{'__'.join(loc).upper()}): " if loc else ""
                err.print(f"  {where}{error['msg']}")
        raise typer.Exit(2) from None


def load_settings(*, holds_secrets: bool = True, **overrides: Any) -> Settings:
    """The settings, refused (exit code 2, every problem listed) when unsafe for their
    environment (unless the command ``holds_secrets`` not: it neither serves, signs nor
    unseals anything) or when the database URL's driver is not installed."""
    from app.db.database import missing_driver

    settings = read_settings(**overrides)
    try:
        if holds_secrets:
            refuse_unsafe(settings, setting_sources(Settings))
    except UnsafeConfiguration as exc:
        err.print(f"[bold red]{escape(str(exc))}[/]")
        raise typer.Exit(2) from None
    driver = missing_driver(settings.database)
    if driver is not None:
        err.print(f"[bold red]Renum will not start:[/] {escape(driver)}")
        raise typer.Exit(2)
    return settings


def run_with_engine(work: Callable[..., Awaitable[T]], *args: object) -> T:
    """Run ``work(engine, *args)`` against the configured database and dispose of it."""
    from app.db.database import build_engine

    settings = load_settings()

    async def runner() -> T:
        engine = build_engine(settings.database)
        try:
            return await work(engine, *args)
        finally:
            await engine.dispose()

    from sqlalchemy.exc import SQLAlchemyError

    try:
        return asyncio.run(runner())
    except OSError as exc:
        err.print(f"[bold red]Cannot reach the database:[/] {exc}")
        raise typer.Exit(1) from None
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        err.print(
            f"[bold red]Database error:[/] {reason}\n"
            "If the schema is missing or old, run `renum db upgrade` first."
        )
        raise typer.Exit(1) from None


@cli.command()
def version() -> None:
    """Print Renum's version."""
    out.print(f"renum {__version__}")


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Worker processes (default: RENUM_WORKERS, 1)."),
    ] = None,
) -> None:
    """Serve the API with Uvicorn. On SIGTERM or Ctrl+C it stops within
    RENUM_SHUTDOWN_TIMEOUT_SECONDS: live streams end at once, running executions are released
    to another process, and requests still open past the timeout are cancelled. SIGHUP reloads
    the configuration (with several workers: validated once, then applied by every worker)."""
    import uvicorn

    overrides: dict[str, Any] = {} if workers is None else {"workers": workers}
    settings = load_settings(**overrides)
    processes = 1 if reload else settings.workers
    out.print(
        f"Renum {__version__} ({settings.environment.value}) on http://{host}:{port} "
        f"with {processes} worker{'s' if processes > 1 else ''} "
        f"- API docs at http://{host}:{port}/docs"
    )
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        "workers": processes,
        "log_config": None,
        "timeout_graceful_shutdown": max(1, math.ceil(settings.shutdown_timeout_seconds)),
        # uvicorn would take the client's address from X-Forwarded-For of any loopback peer;
        # Renum reads it itself, from the proxies in RENUM_SECURITY__THROTTLE__TRUSTED_PROXIES.
        "proxy_headers": False,
    }
    if processes > 1:
        _share_metrics_across_workers()
    if processes == 1 or not settings.configuration.enabled:
        # One process handles SIGHUP itself (the configuration capability); with the
        # capability off, uvicorn's supervisor restarts the workers on SIGHUP instead.
        uvicorn.run(APP_FACTORY, reload=reload, **options)
        return
    from app.capabilities.configuration import serve_workers
    from app.core.config_sources import config_file_path
    from app.core.logging import configure_logging

    configure_logging(settings)
    watch = config_file_path() if settings.configuration.watch_file else None
    serve_workers(uvicorn.Config(APP_FACTORY, **options), watch)


def _share_metrics_across_workers() -> None:
    """Give the workers a fresh folder for prometheus_client's multiprocess mode (each worker
    writes its metrics there; a scrape adds them up), removed when the server stops. An
    operator's own ``PROMETHEUS_MULTIPROC_DIR`` is kept."""
    import atexit
    import os
    import shutil
    import tempfile

    from app.core.metrics import MULTIPROCESS_ENV

    if os.environ.get(MULTIPROCESS_ENV):
        return
    directory = tempfile.mkdtemp(prefix="renum-metrics-")
    os.environ[MULTIPROCESS_ENV] = directory
    atexit.register(shutil.rmtree, directory, ignore_errors=True)


@db_cli.command()
def upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply migrations up to REVISION (default: the latest)."""
    from app.db import migrate

    run_with_engine(migrate.upgrade, revision)
    out.print(f"Database upgraded to {revision}.")


@db_cli.command()
def downgrade(
    revision: Annotated[
        str, typer.Argument(help="Target revision: 0005, base, or -- -1 (one step).")
    ],
) -> None:
    """Revert migrations down to REVISION (`renum db downgrade -- -1` is one step, `base` is
    empty)."""
    from app.db import migrate

    run_with_engine(migrate.downgrade, revision)
    out.print(f"Database downgraded to {revision}.")


@db_cli.command()
def current() -> None:
    """Show the database's revision and the code's head."""
    from app.db import migrate

    revision = run_with_engine(migrate.current_revision)
    head = migrate.head_revision()
    state = "up to date" if revision == head else "migrations pending: run `renum db upgrade`"
    out.print(f"current: {revision or 'none'}  head: {head}  ({state})")


@db_cli.command()
def check(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Compare the models with the live schema and report drift (missing or extra tables,
    columns, indexes and constraints; changed types, nullability and defaults), one line per
    difference, without changing anything. Alembic's alembic_version and other components'
    tables (procrastinate_*) are left out. Exit code: 0 no drift, 1 drift, 2 could not check."""
    import json

    import app.models  # noqa: F401  (registers every table on Base.metadata)
    from app.db.base import Base
    from app.db.drift import CannotCheck, check_database

    settings = load_settings()
    try:
        report = asyncio.run(check_database(settings.database, Base.metadata))
    except CannotCheck as exc:
        if as_json:
            typer.echo(json.dumps({"status": "error", "error": str(exc)}, indent=2))
        err.print(f"[bold red]Cannot check the schema:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for difference in report.differences:
            typer.echo(difference.line())
        typer.echo(report.summary())
    raise typer.Exit(1 if report.drift else 0)


@db_cli.command()
def purge(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be removed; change nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Remove the data of ended executions older than its retention
    (RENUM_DATABASE_MANAGER__RETENTION__*_DAYS) now, in batches, and print the rows removed per
    kind; ledger rows are folded into daily totals first, so usage figures stay the same. With
    --dry-run, print what would go and each kind's cut-off instead. Exit code: 0 done (or
    nothing configured), 2 the database could not be used."""
    import json
    from typing import NoReturn

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from app.capabilities.database_manager.retention import PurgeReport, Retention
    from app.db.base import utcnow
    from app.db.database import build_engine

    settings = load_settings()
    retention = settings.database_manager.retention
    url = make_url(settings.database.url)
    where = url.render_as_string(hide_password=True)

    def fail(reason: str) -> NoReturn:
        if as_json:
            typer.echo(json.dumps({"status": "error", "error": reason}, indent=2))
        err.print(f"[bold red]Cannot purge:[/] {escape(reason)}", soft_wrap=True)
        raise typer.Exit(2)

    def first_line(exc: BaseException) -> str:
        text = str(getattr(exc, "orig", None) or exc).strip()
        return text.splitlines()[0] if text else type(exc).__name__

    async def work() -> PurgeReport:
        engine = build_engine(settings.database)
        try:
            purger = Retention(engine, lambda: retention)
            return await (purger.preview() if dry_run else purger.purge())
        finally:
            await engine.dispose()

    report = PurgeReport.planned(retention, utcnow(), dry_run=dry_run)
    if report.kinds:
        sqlite_file = url.database if settings.database.is_sqlite else None
        if sqlite_file and sqlite_file != ":memory:" and not Path(sqlite_file).is_file():
            fail(f"no SQLite database at {sqlite_file}: run `renum db upgrade` to create it")
        try:
            report = asyncio.run(work())
        except (OSError, TimeoutError) as exc:
            fail(f"cannot reach the database at {where}: {first_line(exc)}")
        except SQLAlchemyError as exc:
            fail(
                f"database error at {where}: {first_line(exc)} (if the schema is missing or "
                "old, run `renum db upgrade` first)"
            )
    if as_json:
        typer.echo(json.dumps({"status": "ok", **report.as_dict()}, indent=2))
    elif not report.kinds:
        typer.echo(
            "No retention is configured (RENUM_DATABASE_MANAGER__RETENTION__<KIND>_DAYS): "
            "nothing to purge."
        )
    else:
        verb = "would remove" if dry_run else "removed"
        typer.echo(f"{'kind':<8}  {'days':>5}  {'cut-off (UTC)':<19}  {verb:>12}  batches")
        for kind in report.kinds.values():
            cutoff = kind.cutoff.strftime("%Y-%m-%d %H:%M:%S")
            batches = "-" if dry_run else str(kind.batches)
            typer.echo(
                f"{kind.kind:<8}  {kind.days:>5}  {cutoff:<19}  {kind.removed:>12}  {batches}"
            )
        if dry_run:
            typer.echo(f"dry run: {report.total} rows would be removed; nothing was changed")
        else:
            typer.echo(f"purged {report.total} rows in {report.seconds:.1f} s")


@cli.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check every dependency (packages, database, migrations, Redis, model providers) and say
    how to fix what fails. Exit code: 0 pass, 1 warn, 2 fail."""
    import json

    from app.capabilities.health import EXIT_CODES, diagnose, report_table

    report = asyncio.run(diagnose(load_settings()))
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        out.print(report_table(report))
    raise typer.Exit(EXIT_CODES[report.status])


@config_cli.command("check")
def config_check(
    environment: Annotated[
        Environment | None,
        typer.Option(help="Check as if RENUM_ENVIRONMENT were this (its profile too)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the problems as JSON.")] = False,
) -> None:
    """Validate the configuration without starting: every problem at once, each with the
    setting, where its value came from, why and the fix. Exit code: 0 pass, 1 warnings,
    2 errors (invalid values, or what the environment refuses)."""
    import json

    overrides = {} if environment is None else {"environment": environment}
    settings = read_settings(**overrides)
    problems = check_settings(settings, setting_sources(Settings, **overrides))
    errors = [p for p in problems if p.severity is Severity.error]
    if as_json:
        body = {
            "environment": settings.environment.value,
            "status": "fail" if errors else "warn" if problems else "pass",
            "problems": [asdict(p) for p in problems],
        }
        typer.echo(json.dumps(body, indent=2))
    else:
        for problem in problems:
            style = "bold red" if problem.severity is Severity.error else "yellow"
            out.print(f"[{style}]{escape(problem.line())}[/]")
        verdict = f"{len(errors)} errors, {len(problems) - len(errors)} warnings"
        out.print(f"configuration for {settings.environment.value}: {verdict}")
    raise typer.Exit(2 if errors else 1 if problems else 0)


@config_cli.command("show")
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="Print the settings as JSON.")] = False,
) -> None:
    """The effective configuration: every setting, its value (secrets masked) and where it
    came from (environment, dotenv, config_file, profile, default)."""
    import json

    settings = read_settings()
    views = effective_configuration(settings, setting_sources(Settings))
    if as_json:
        typer.echo(json.dumps([view.as_dict() for view in views], indent=2))
        return
    table = Table("variable", "value", "source")
    for view in views:
        table.add_row(view.variable, escape(json.dumps(view.value)), view.source)
    out.print(table)


@docs_cli.command("generate")
def generate_docs(
    directory: Annotated[Path, typer.Argument(help="Where the reference pages go.")] = Path(
        "docs/reference"
    ),
) -> None:
    """Write the reference pages (API, configuration, health) generated from this backend's
    schema, settings model and health registry; print which ones changed."""
    from app.main import reference_docs

    changed = reference_docs().write(directory)
    for name in changed:
        typer.echo(f"updated {directory / name}")
    typer.echo(f"reference pages in {directory}: {len(changed)} changed")


@users_cli.command("create-admin")
def create_admin(
    email: Annotated[str, typer.Option(prompt=True, help="The admin's email.")],
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            envvar="RENUM_ADMIN_PASSWORD",
            help="The admin's password (or RENUM_ADMIN_PASSWORD).",
        ),
    ],
) -> None:
    """Create a platform admin."""
    from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

    from app.repositories.users import UserRepository
    from app.services.bootstrap import create_admin as create

    email = _checked_credentials(email, password)

    async def work(engine: AsyncEngine) -> bool:
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        async with sessions() as session:
            if await UserRepository(session).by_email(email) is not None:
                return False
            user = await create(session, email, password)
        await _cli_audit(sessions).record(
            "user.create",
            actor_kind="cli",
            account_id=user.account_id,
            target=f"user:{user.id}",
            details={"email": user.email, "role": user.role},
        )
        return True

    if not run_with_engine(work):
        err.print(f"[bold red]A user with the email {email} already exists.[/]")
        raise typer.Exit(1)
    out.print(f"Admin {email} created.")


@users_cli.command("reset-password")
def reset_password(
    email: Annotated[str, typer.Option(prompt=True, help="The user's email.")],
    password: Annotated[
        str,
        typer.Option(
            prompt="New password",
            hide_input=True,
            confirmation_prompt=True,
            envvar="RENUM_NEW_PASSWORD",
            help="The new password (or RENUM_NEW_PASSWORD).",
        ),
    ],
) -> None:
    """Set a user's password (an admin's whose password was lost, too); ends their sessions."""
    from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

    from app.services.bootstrap import reset_password as reset

    email = _checked_credentials(email, password)

    async def work(engine: AsyncEngine) -> bool:
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        async with sessions() as session:
            if not await reset(session, email, password):
                return False
        await _cli_audit(sessions).record(
            "user.password_change", actor_kind="cli", target=email.lower()
        )
        return True

    if not run_with_engine(work):
        err.print(f"[bold red]No user has the email {email}.[/]")
        raise typer.Exit(1)
    out.print(f"Password of {email} changed; their sessions ended.")


def _cli_audit(sessions: Any) -> Any:
    """The audit trail for a command that changes users (as the server would record it)."""
    from app.services.audit import AuditTrail

    return AuditTrail.for_settings(load_settings(), sessions)


def _checked_credentials(email: str, password: str) -> str:
    """The email, normalized as the API normalizes it (with the special-use domains the
    settings accept); exit 2 with a message for an invalid email, a short password, or one the
    API's examples print (where the settings refuse those)."""
    from email_validator import EmailNotValidError

    from app.core.emails import accept_special_use_domains, normalized_email
    from app.core.example_passwords import example_password_problem, refuse_example_passwords
    from app.core.security import configure_password_hashing

    settings = load_settings()
    accept_special_use_domains(settings.auth.special_use_email_domains)
    refuse_example_passwords(settings.auth.refuse_example_passwords)
    configure_password_hashing(settings.auth.password_hash)
    try:
        email = normalized_email(email)
    except EmailNotValidError as exc:
        err.print(f"[bold red]Invalid email:[/] {exc}")
        raise typer.Exit(2) from None
    if len(password) < 8:
        err.print("[bold red]The password must have at least 8 characters.[/]")
        raise typer.Exit(2)
    problem = example_password_problem(password)
    if problem is not None:
        err.print(f"[bold red]Refused password:[/] {problem}.")
        raise typer.Exit(2)
    return email


# --- backups -------------------------------------------------------------------------------


def _backups() -> Any:
    """The configured database's backup catalogue; exit 2 when it has none."""
    from app.capabilities.backups import BackupError, catalogue_for

    try:  # backups need the database and their own settings only: the timers that run them
        return catalogue_for(load_settings(holds_secrets=False))  # get none of the API's secrets
    except BackupError as exc:
        err.print(f"[bold red]Cannot back up:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


def _backup_step(work: Callable[[], T], catalogue: Any = None) -> T:
    """``work()`` (holding ``catalogue``'s lock when given), with a BackupError or a file
    system error shown as a message and exit code 2."""
    from app.capabilities.backups import BackupError

    try:
        if catalogue is None:
            return work()
        with catalogue.exclusive() as mine:
            if not mine:
                raise BackupError(
                    "another backup, verification or restore is under way on these backups "
                    "(the backend's schedule, or another command): try again in a moment"
                )
            return work()
    except BackupError as exc:
        err.print(f"[bold red]{escape(str(exc))}[/]", soft_wrap=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        err.print(f"[bold red]File system error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


@backup_cli.command("keygen")
def backup_keygen() -> None:
    """Print a new age identity for RENUM_BACKUPS__AGE_IDENTITY (SQLite snapshots encrypted
    at rest) and its public recipient. Keep a copy of the identity away from the backups."""
    from app.capabilities.backups.sealing import SealingError, new_identity

    try:
        identity, recipient = new_identity()
    except SealingError as exc:
        err.print(f"[bold red]{escape(str(exc))}[/]", soft_wrap=True)
        raise typer.Exit(2) from None
    typer.echo(f"# public key: {recipient}")
    typer.echo(identity)


@backup_cli.command("setup")
def backup_setup() -> None:
    """PostgreSQL: write pgBackRest's configuration, create the stanza in the encrypted
    repository, and print the WAL archiving settings PostgreSQL needs (SQLite needs none)."""
    catalogue = _backups()
    if catalogue.engine != "postgresql":
        out.print("SQLite needs no setup: `renum backup run` takes a backup now.")
        return
    _backup_step(catalogue.prepare, catalogue)
    out.print(
        f"pgBackRest is configured ({escape(str(catalogue.config))}); the repository "
        f"is {escape(str(catalogue.repository))}. Set these in PostgreSQL's configuration "
        "and restart it:",
        soft_wrap=True,
    )
    command = catalogue.archive_command().replace("'", "''")  # a quoted setting's quotes
    typer.echo("archive_mode = on")
    typer.echo(f"archive_command = '{command}'")
    typer.echo("archive_timeout = 5  # seconds: the last writes of a quiet server archived too")


@backup_cli.command("run")
def backup_run(
    kind: Annotated[
        str | None,
        typer.Option(
            "--type",
            help="PostgreSQL: full, diff or incr (default incr, full when there is none yet). "
            "SQLite backups are whole snapshots.",
        ),
    ] = None,
) -> None:
    """Take a backup of the database now (while the backend runs) and record what it holds;
    SQLite keeps RENUM_BACKUPS__KEEP of them, PostgreSQL follows pgBackRest's retention."""
    catalogue = _backups()
    if catalogue.engine != "postgresql":
        if kind is not None:
            err.print("[bold red]--type is for PostgreSQL: SQLite backups are whole snapshots.[/]")
            raise typer.Exit(2)
        backup = _backup_step(catalogue.run, catalogue)
        where = str(backup.path)
    else:
        backup = _backup_step(lambda: catalogue.run(kind=kind or "incr"), catalogue)
        where = backup.where
    tables = len(backup.facts.tables)
    out.print(
        f"Backup {backup.id}: {escape(where)} ({backup.size} bytes, {tables} tables, "
        f"revision {backup.facts.revision or 'none'}).",
        soft_wrap=True,
    )


@backup_cli.command("list")
def backup_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the backups, newest first, with the result of each one's last verification."""
    import json

    catalogue = _backups()
    backups = _backup_step(catalogue.backups)
    if as_json:
        typer.echo(json.dumps([backup.manifest() for backup in backups], indent=2))
        return
    if not backups:
        typer.echo(f"No backup in {catalogue.directory}: take one with `renum backup run`.")
        return
    table = Table("id", "taken at (UTC)", "bytes", "revision", "verified")
    for backup in backups:
        checked = backup.verification
        verified = "never" if checked is None else ("passed" if checked.passed else "FAILED")
        table.add_row(
            backup.id,
            backup.taken_at.strftime("%Y-%m-%d %H:%M:%S"),
            str(backup.size),
            backup.facts.revision or "none",
            verified,
        )
    out.print(table)


def _timestamp(value: str | None) -> Any:
    """An ISO 8601 time (UTC when it names no offset); exit 2 when it is not one."""
    from datetime import UTC, datetime

    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        err.print(f"[bold red]Not a time:[/] {escape(value)} (ISO 8601, e.g. 2026-12-05T09:30:00Z)")
        raise typer.Exit(2) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@backup_cli.command("verify")
def backup_verify(
    backup_id: Annotated[
        str | None, typer.Argument(help="The backup's id (default: the newest).")
    ] = None,
) -> None:
    """Restore a backup into a throwaway copy and check it against what it recorded: on
    SQLite the file's size and SHA-256 and SQLite's integrity check, on PostgreSQL pgBackRest's
    verify of the repository and a throwaway server recovered to the backup's restore point;
    then the migration revision, the schema, every table's rows and checksum. Exit code: 0
    passed, 1 failed, 2 could not verify."""
    catalogue = _backups()
    backup = _backup_step(lambda: catalogue.find(backup_id))
    verification = _backup_step(lambda: catalogue.verify(backup), catalogue)
    if verification.passed:
        out.print(f"Backup {backup.id} verified: it restores to what it recorded.")
        return
    err.print(f"[bold red]Backup {backup.id} failed its verification:[/]")
    for problem in verification.problems:
        err.print(f"  {escape(problem)}", soft_wrap=True)
    raise typer.Exit(1)


@backup_cli.command("restore")
def backup_restore(
    backup_id: Annotated[
        str | None, typer.Argument(help="The backup's id (default: see --to).")
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="The time to go back to (ISO 8601; UTC without an offset): on PostgreSQL, "
            "or with a replica configured, the database exactly as it was then; else the "
            "newest backup taken at or before it. Without it and without an id: the latest "
            "state the archive or the replica holds, else the newest backup.",
        ),
    ] = None,
    into: Annotated[
        Path | None,
        typer.Option(
            "--into",
            help="PostgreSQL: restore into this empty data directory instead (a copy to read "
            "from, e.g. an account deleted by mistake; it never archives into the repository).",
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm: the database's data is replaced.")
    ] = False,
) -> None:
    """Replace the database with a backup (once it passes its verification) or with the
    continuous replica's state; the replaced file is kept beside it. Stop the backend first.
    On PostgreSQL, pgBackRest restores into the stopped server's data directory, and the
    server recovers to the chosen point when started. Exit code: 0 restored, 2 refused."""
    if backup_id is not None and to is not None:
        err.print("[bold red]Give a backup id or --to, not both.[/]")
        raise typer.Exit(2)
    moment = _timestamp(to)
    catalogue = _backups()
    if catalogue.engine == "postgresql":
        _restore_postgres(catalogue, backup_id, moment, into, yes=yes)
        return
    if into is not None:
        err.print(
            "[bold red]--into is for PostgreSQL:[/] on SQLite, restore into a copy by pointing "
            "RENUM_DATABASE__URL at another file.",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    if backup_id is None and catalogue.replica is not None:
        _restore_replica(catalogue, moment, yes=yes)
        return
    backup = _backup_step(lambda: catalogue.find(backup_id, at_or_before=moment))
    if not yes:
        err.print(
            f"[bold red]This replaces {escape(str(catalogue.database))} with backup "
            f"{backup.id}:[/] stop the backend, then run again with --yes.",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    kept = _backup_step(lambda: catalogue.restore(backup), catalogue)
    out.print(f"Restored backup {backup.id} (taken {backup.taken_at.isoformat()}).", soft_wrap=True)
    if kept is not None:
        out.print(f"The replaced database is kept at {escape(str(kept))}.", soft_wrap=True)


def _restore_postgres(
    catalogue: Any, backup_id: str | None, moment: Any, into: Path | None, *, yes: bool
) -> None:
    """``renum backup restore`` on PostgreSQL: into the stopped server's data directory, or
    into an empty one for a copy."""
    backup = None if backup_id is None else _backup_step(lambda: catalogue.find(backup_id))
    target = escape(str(into or catalogue.database))
    if not yes:
        what = (
            f"This restores a copy into {target}:[/] run again with --yes."
            if into
            else f"This replaces the data in {target}:[/] stop PostgreSQL, then run again with "
            "--yes."
        )
        err.print(f"[bold red]{what}", soft_wrap=True)
        raise typer.Exit(2)
    said = _backup_step(lambda: catalogue.restore(backup, moment, into), catalogue)
    out.print(
        f"Restored {said} into {target}: start PostgreSQL on it; it replays the archived WAL "
        "to that point and then accepts writes.",
        soft_wrap=True,
    )


def _restore_replica(catalogue: Any, moment: Any, *, yes: bool) -> None:
    """``renum backup restore`` from the continuous replica: its latest state, or ``moment``."""
    state = "latest state" if moment is None else f"state at {moment.isoformat()}"
    if not yes:
        err.print(
            f"[bold red]This replaces {escape(str(catalogue.database))} with the replica's "
            f"{state}:[/] stop "
            "the backend, then run again with --yes.",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    facts, kept = _backup_step(lambda: catalogue.restore_from_replica(moment), catalogue)
    out.print(
        f"Restored the replica's {state} (revision {facts.revision}, {len(facts.tables)} tables).",
        soft_wrap=True,
    )
    if kept is not None:
        out.print(f"The replaced database is kept at {escape(str(kept))}.", soft_wrap=True)


# --- security ------------------------------------------------------------------------------


@security_cli.command("scan")
def security_scan(
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    database: Annotated[
        Path | None,
        typer.Option(
            help="The OSV database (PyPI/all.zip or its unpacked directory) instead of "
            "RENUM_SECURITY__SCANNER__DATABASE.",
        ),
    ] = None,
) -> None:
    """Check the installed packages against the OSV advisory database on disk (nothing is
    downloaded). Exit code: 0 nothing known, 1 vulnerabilities found, 2 could not check (no,
    unreadable, partly unreadable or stale database)."""
    import json
    from datetime import UTC, datetime

    from app.capabilities.security import Verdict, reaches, scan

    settings = read_settings().security.scanner
    if database is not None:
        settings = settings.model_copy(update={"database": database.absolute()})
    result = scan(settings.database)
    now = datetime.now(UTC)
    verdict = result.verdict(settings.fail_on, settings.max_age_days, now)
    code = {Verdict.clean: 0, Verdict.unknown: 2}.get(verdict, 1)
    if as_json:
        typer.echo(json.dumps(result.as_dict(settings, now), indent=2))
        raise typer.Exit(code)
    for doubt in result.doubts(settings.max_age_days, now):
        err.print(f"[yellow]{escape(doubt)}[/]", soft_wrap=True)
    for finding in result.findings:  # plain lines: an upgrade command is copied whole
        aliases = f" ({', '.join(finding.aliases)})" if finding.aliases else ""
        typer.echo(
            f"{finding.package} {finding.version}: {finding.advisory}{aliases}, "
            f"severity {finding.severity.value}"
            + (f" - {finding.summary}" if finding.summary else "")
        )
        if finding.upgrade is not None:
            typer.echo(f"  fixed in {finding.fixed}: {finding.upgrade}")
        else:
            typer.echo("  no fixed version is published: remove or replace the package")
    failing = sum(reaches(f.severity, settings.fail_on) for f in result.findings)
    said = {
        Verdict.clean: f"No known vulnerability among {result.packages} installed packages "
        f"(advisories read: {result.advisories}).",
        Verdict.unknown: "Could not check: the result is unknown.",
        Verdict.vulnerable: f"Known vulnerabilities: {len(result.findings)}.",
    }.get(
        verdict,
        f"Known vulnerabilities: {len(result.findings)}, {failing} of them "
        f"{settings.fail_on} or above (RENUM_SECURITY__SCANNER__FAIL_ON).",
    )
    out.print(escape(said), soft_wrap=True)
    raise typer.Exit(code)


@security_cli.command("sbom")
def security_sbom(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write it to this file.")
    ] = None,
) -> None:
    """Print a software bill of materials of the installed environment (CycloneDX 1.6
    JSON): every distribution with its package URL, licence and dependencies."""
    from app.capabilities.security import sbom_json

    _emit(sbom_json(), output, "SBOM")


def _emit(document: str, output: Path | None, what: str) -> None:
    """Print ``document``, or write it to ``output`` (exit code 2 when that fails)."""
    if output is None:
        typer.echo(document)
        return
    try:
        output.write_text(document + "\n", encoding="utf-8")
    except OSError as exc:
        err.print(f"[bold red]Cannot write the {what}:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    typer.echo(f"{what} written to {output}")


# --- keys ----------------------------------------------------------------------------------


def _box(settings: Settings) -> Any:
    from app.core.crypto import CryptoError, SecretBox

    try:
        return SecretBox.from_settings(settings)
    except CryptoError as exc:
        err.print(f"[bold red]RENUM_ENCRYPTION_KEYS:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


@keys_cli.command("status")
def keys_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """How many stored secrets each key seals, which keys can be removed, and whether any
    value is sealed with a key that is not configured. Exit code: 0 every value under the
    primary key, 1 a rotation is pending, 2 values under keys not configured (or no database)."""
    import json

    from app.capabilities.security.keys import key_use

    settings = load_settings()
    box = _box(settings)
    use = run_with_engine(key_use, box)
    code = 2 if use.unknown else 1 if use.pending else 0
    if as_json:
        typer.echo(json.dumps(use.as_dict(), indent=2))
        raise typer.Exit(code)
    typer.echo(f"primary key: {use.primary} (configured: {', '.join(use.configured)})")
    for column, counts in use.counts.items():
        shown = ", ".join(f"{key} {n}" for key, n in sorted(counts.items())) or "none"
        typer.echo(f"  {column}: {shown}")
    for key_id, count in sorted(use.unknown.items()):
        err.print(
            f"[bold red]{count} values are sealed with key {escape(key_id)!r}, which is not "
            "configured: they cannot be opened. Put it back in RENUM_ENCRYPTION_KEYS.[/]",
            soft_wrap=True,
        )
    if use.pending:
        typer.echo(f"{use.pending} values are under an older key: run `renum keys rotate`.")
    for key_id in use.retirable():
        typer.echo(f"Key {key_id} seals nothing: it can be removed from RENUM_ENCRYPTION_KEYS.")
    raise typer.Exit(code)


@keys_cli.command("rotate")
def keys_rotate(
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Values sealed again per transaction.")
    ] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Seal every stored secret under an older key again with the primary key (the first of
    RENUM_ENCRYPTION_KEYS), in batches, while the service runs; run it again after an
    interruption. Exit code: 0 done, 1 some values did not open (left as they are), 2 error."""
    from app.capabilities.security.keys import rotate

    settings = load_settings()
    box = _box(settings)

    def progress(column: str, done: int) -> None:
        if not as_json:
            err.print(f"{column}: {done} sealed again", soft_wrap=True)

    async def rotate_and_record(engine: Any) -> Any:
        from sqlalchemy.ext.asyncio import async_sessionmaker

        done = await rotate(engine, box, batch=batch_size, progress=progress)
        await _cli_audit(async_sessionmaker(engine, expire_on_commit=False)).record(
            "keys.rotate",
            outcome="failure" if done.unopened else "success",
            actor_kind="cli",
            target=f"encryption key {box.current_key_id}",
            details={
                "resealed": done.total,
                "changed_meanwhile": done.changed_meanwhile,
                "unopened": sum(len(ids) for ids in done.unopened.values()),
            },
        )
        return done

    result = run_with_engine(rotate_and_record)
    _report_sealing(
        result,
        as_json,
        f"{result.total} values sealed again with key {box.current_key_id}.",
        lambda column, count: (
            f"{count} {escape(column)} did not open[/] (a key not configured, or damaged)"
        ),
    )


@keys_cli.command("seal-content")
def keys_seal_content(
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Rows sealed per transaction.")
    ] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Seal at rest, with the primary key, the content stored in plaintext of the ended
    executions of the accounts in RENUM_SECURITY__CONTENT_ENCRYPTION__ACCOUNTS (what they ran
    before they were listed), in batches, while the service runs; run it again after an
    interruption, or for executions that were running. Exit code: 0 done, 1 some rows did not
    open, 2 nothing to do it for (no account listed, or the security capability off)."""
    from app.capabilities.security.keys import seal_content
    from app.services.content import SealingPolicy

    settings = load_settings()
    policy = SealingPolicy.from_settings(settings.security.content_encryption)
    if not settings.security.enabled or not policy.active:
        err.print(
            "[bold red]No account's content is sealed:[/] list accounts (or *) in "
            "RENUM_SECURITY__CONTENT_ENCRYPTION__ACCOUNTS, with RENUM_SECURITY__ENABLED on.",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    box = _box(settings)

    def progress(table: str, done: int) -> None:
        if not as_json:
            err.print(f"{table}: {done} rows sealed", soft_wrap=True)

    result = run_with_engine(
        lambda engine: seal_content(engine, box, policy, batch=batch_size, progress=progress)
    )
    _report_sealing(
        result,
        as_json,
        f"{result.total} rows sealed with key {box.current_key_id}.",
        lambda table, count: f"{count} rows of {escape(table)} did not open[/]",
    )


def _report_sealing(
    result: Any, as_json: bool, summary: str, unopened: Callable[[str, int], str]
) -> None:
    """Print what ``renum keys rotate`` or ``seal-content`` did (``summary``; ``unopened``
    words the values of one column or table that did not open) and exit: 0 done, 1 some
    values did not open (left as they are)."""
    import json

    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
    else:
        typer.echo(summary)
        if result.changed_meanwhile:
            typer.echo(f"{result.changed_meanwhile} changed meanwhile and were left as they are.")
        for where, ids in result.unopened.items():
            err.print(
                f"[bold red]{unopened(where, len(ids))}: "
                f"{escape(', '.join(ids[:10]))}{' ...' if len(ids) > 10 else ''}",
                soft_wrap=True,
            )
    raise typer.Exit(1 if result.unopened else 0)


def main() -> None:
    cli()


@audit_cli.command("verify")
def audit_verify(
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    expect: Annotated[
        str | None,
        typer.Option(
            "--expect",
            metavar="SEQ:HASH",
            help="An entry the trail must still hold, from an `audit_checkpoint` log line kept "
            "outside the database: shows a trail cut back to an older state.",
        ),
    ] = None,
) -> None:
    """Check the whole audit trail: each entry's hash and link to the one before, the signed
    checkpoints, and the signed head against the newest entry. Exit code: 0 intact, 1 broken
    (where and why is printed), 2 could not check (no database, or a signature by a key that
    RENUM_SECURITY__AUDIT__SIGNING_KEYS does not hold)."""
    import json

    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.db.database import build_probe_engine
    from app.services.audit import verify_trail
    from app.services.audit_chain import AuditKeyError, AuditSigner

    settings = load_settings()
    expected = None
    if expect is not None:
        seq, _, digest = expect.partition(":")
        if not seq.isdigit() or (digest and not re.fullmatch(r"[0-9a-f]{64}", digest)):
            err.print("[bold red]--expect:[/] give SEQ:HASH from an audit_checkpoint log line")
            raise typer.Exit(2)
        expected = (int(seq), digest or None)

    async def check() -> Any:
        engine = build_probe_engine(settings.database)  # looking changes and creates nothing
        try:
            async with AsyncSession(engine) as session:
                signer = AuditSigner.from_settings(settings)
                return await verify_trail(session, signer, expected)
        finally:
            await engine.dispose()

    try:
        verdict = asyncio.run(check())
    except AuditKeyError as exc:
        err.print(f"[bold red]Cannot check the audit trail:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    except (OSError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        err.print(
            f"[bold red]Cannot check the audit trail:[/] {escape(reason)}\n"
            "If the schema is missing or old, run `renum db upgrade` first.",
            soft_wrap=True,
        )
        raise typer.Exit(2) from None
    code = 0 if verdict.intact else 1
    if as_json:
        typer.echo(json.dumps(verdict.as_dict(), indent=2))
        raise typer.Exit(code)
    for note in verdict.notes:
        typer.echo(note)
    span = f"entries {verdict.first_seq} to {verdict.last_seq}" if verdict.entries else "no entries"
    if verdict.intact:
        typer.echo(
            f"The audit trail is intact: {verdict.entries} entries ({span}), "
            f"{verdict.checkpoints} signed checkpoints."
        )
        raise typer.Exit(0)
    err.print(
        f"[bold red]The audit trail is broken at entry {verdict.broken_at}:[/] "
        f"{escape(verdict.problem or '')}",
        soft_wrap=True,
    )
    raise typer.Exit(code)


# --- exports for other monitoring tools ------------------------------------------------------


@alerts_cli.command("export")
def alerts_export(
    format_: Annotated[
        str, typer.Option("--format", help="The rule format: prometheus (a rule file).")
    ] = "prometheus",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write it to this file.")
    ] = None,
) -> None:
    """Print the alert rules as a Prometheus rule file (YAML; check it with `promtool check
    rules`), with the bounds, durations and severities of RENUM_MONITOR__ALERTS__RULES."""
    import yaml

    from app.capabilities.monitor.exports import prometheus_rules

    if format_ != "prometheus":
        err.print(
            f"[bold red]Unknown format {escape(format_)!r}:[/] the rules export as prometheus.",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    rules = prometheus_rules(read_settings().monitor.alerts.rules)
    _emit(yaml.safe_dump(rules, sort_keys=False, width=1000).rstrip("\n"), output, "Rules")


@grafana_cli.command("export")
def grafana_export(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write it to this file.")
    ] = None,
) -> None:
    """Print a Grafana dashboard (JSON, to import) of the metrics Renum serves on /metrics,
    with a Prometheus data source variable."""
    import json

    from app.capabilities.monitor.exports import grafana_dashboard

    _emit(json.dumps(grafana_dashboard(), indent=2), output, "Dashboard")


@analytics_cli.command("rebuild")
def analytics_rebuild() -> None:
    """Recompute every rollup (the hourly and daily sums of model calls and ended executions)
    from the raw rows, in one transaction, while the backend runs or not (its folds wait)."""
    from app.services.rollups import Folded, rebuild

    batch_size = load_settings().rollups.batch_size

    async def work(engine: Any) -> Folded:
        return await rebuild(engine, batch_size)

    folded = run_with_engine(work)
    out.print(
        f"Rebuilt the rollups from {folded.executions} ended executions and "
        f"{folded.calls} model calls (with the daily totals of purged calls)."
    )
