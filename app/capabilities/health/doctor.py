"""``renum doctor``: the start-up validation from the command line, as a Rich table or JSON,
with an exit code for scripts (0 pass, 1 warn, 2 fail)."""

from __future__ import annotations

from dataclasses import replace

from rich.table import Table
from rich.text import Text

from app.capabilities.health.registry import Status
from app.capabilities.health.validator import DependencyValidator, ValidationReport
from app.core.config import DocsSettings, Settings
from app.db.database import SQLAlchemyManager

EXIT_CODES = {Status.passed: 0, Status.warn: 1, Status.fail: 2}
# Checks with more passing components than this show them as one row.
COLLAPSE_ABOVE = 3
STYLES = {Status.passed: "green", Status.warn: "yellow", Status.fail: "bold red"}


async def diagnose(settings: Settings) -> ValidationReport:
    """Validate every dependency with a database of its own, closed afterwards; the
    documentation links point at the docs site (``docs.site_url``)."""
    database = SQLAlchemyManager(settings.database)
    try:
        return with_site_links(
            await DependencyValidator(settings, database).validate(), settings.docs
        )
    finally:
        await database.dispose()


def _observed(value: float | str | None, unit: str | None) -> str:
    if value is None:
        return ""
    if unit == "ms":
        return f"{value} ms"
    return str(value)


def with_site_links(report: ValidationReport, docs: DocsSettings) -> ValidationReport:
    """The report with each entry's documentation link as an address on the docs site."""
    entries = [
        replace(entry, docs_link=docs.page_url(entry.docs_link)) if entry.docs_link else entry
        for entry in report.entries
    ]
    return replace(report, entries=entries)


def report_table(report: ValidationReport) -> Table:
    """One row per dependency; failing rows carry their fix and documentation link."""
    table = Table(title=f"Renum {report.release}: dependencies ({report.status.value})")
    for column in ("check", "component", "status", "observed", "message and fix"):
        table.add_column(column, overflow="fold")
    passing: dict[str, int] = {}
    for entry in report.entries:
        if entry.status is Status.passed:
            passing[entry.check] = passing.get(entry.check, 0) + 1
    collapsed: set[str] = set()
    for entry in report.entries:
        many = passing[entry.check] > COLLAPSE_ABOVE if entry.status is Status.passed else False
        if many and entry.check in collapsed:
            continue
        if many:  # e.g. twenty packages that are fine: one row; problems keep their own
            collapsed.add(entry.check)
            count = passing[entry.check]
            table.add_row(
                entry.check,
                f"{count} components",
                Text("pass", style=STYLES[Status.passed]),
                "",
                f"all {count} pass (`renum doctor --json` lists each)",
            )
            continue
        details = Text(entry.message)
        if entry.status is not Status.passed and entry.fix:
            details.append(f"\nfix: {entry.fix}", style="cyan")
        if entry.status is not Status.passed and entry.docs_link:
            details.append(f"\ndocs: {entry.docs_link}", style="dim")
        kind = "" if entry.critical else " (optional)"
        table.add_row(
            f"{entry.check}{kind}",
            entry.component_id,
            Text(entry.status.value, style=STYLES[entry.status]),
            _observed(entry.observed_value, entry.observed_unit),
            details,
        )
    return table
