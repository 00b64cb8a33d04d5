"""The offline vulnerability scanner: the installed distributions against the OSV database.

``scan`` reads the Python environment this process runs in (``importlib.metadata``) and the
advisory database (``advisories``), and returns a ``ScanResult``: one ``Finding`` per known
vulnerability of an installed version (an advisory published both as GHSA and as PYSEC, which
name each other as aliases, is one finding), with the version that fixes it and the command
that upgrades to it.

A result is only as good as its database, so ``ScanResult.doubts`` lists why "nothing found"
would not mean "nothing known": no database, an empty one, entries that could not be read, or
a stale one. Staleness is judged by the newest ``modified`` time among the advisories, not
by the file's mtime: a copy made yesterday of a month-old export is a month old, and OSV
modifies some PyPI advisory every day, so a current export is never older than a day or two.
``ScanResult.verdict`` turns this into what the check and ``renum security scan`` say.

In the server, ``VulnerabilityScanner`` runs ``scan`` off the event loop at start-up and
every ``security.scanner.interval_hours``, keeps the latest result for the dependency report,
and puts the findings per severity and the database's age on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import Version

from app.capabilities.security.advisories import (
    DatabaseError,
    DatabaseRead,
    Severity,
    read_database,
)
from app.core.alerts import AlertReporter
from app.core.config import ScannerSettings
from app.core.logging import get_logger
from app.core.metrics import Metrics

log = get_logger("app.security")

UNSET_DATABASE = (
    "no advisory database is configured: set RENUM_SECURITY__SCANNER__DATABASE to the OSV "
    "export (PyPI/all.zip)"
)


@dataclass(frozen=True)
class Installed:
    """One installed distribution: its name as published, and its version."""

    name: str
    version: str

    @property
    def canonical(self) -> str:
        return canonicalize_name(self.name)


def installed_distributions() -> list[Installed]:
    """The distributions of this interpreter's environment, once each (the first on the
    path, as the import system would find it), sorted by name."""
    seen: dict[str, Installed] = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"] if distribution.metadata else None
        if not name:
            continue  # a broken installation left without metadata
        found = Installed(str(name), distribution.version)
        seen.setdefault(found.canonical, found)
    return sorted(seen.values(), key=lambda d: d.canonical)


def upgrade_command(name: str, fixed: str) -> str:
    """The command that upgrades ``name`` to a fixed version, quoted for a POSIX shell."""
    return f"python -m pip install '{name}>={fixed}'"


@dataclass(frozen=True)
class Finding:
    """A known vulnerability of an installed distribution."""

    package: str
    version: str
    advisory: str
    aliases: tuple[str, ...]
    severity: Severity
    summary: str
    fixed: str | None

    @property
    def upgrade(self) -> str | None:
        """The upgrade command, or ``None`` when no fixed version is published."""
        return None if self.fixed is None else upgrade_command(self.package, self.fixed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "package": self.package,
            "version": self.version,
            "advisory": self.advisory,
            "aliases": list(self.aliases),
            "severity": self.severity.value,
            "summary": self.summary,
            "fixed": self.fixed,
            "upgrade": self.upgrade,
        }


def _merged(first: Finding, second: Finding) -> Finding:
    """One finding from two advisories of the same vulnerability (they alias each other):
    every name kept, the higher known severity, and the higher fix (it satisfies both)."""
    aliases = ({second.advisory} | set(first.aliases) | set(second.aliases)) - {first.advisory}
    severity = max(first.severity, second.severity, key=lambda s: s.rank)
    fixes = [Version(f) for f in (first.fixed, second.fixed) if f is not None]
    return replace(
        first,
        aliases=tuple(sorted(aliases)),
        severity=severity,
        summary=first.summary or second.summary,
        fixed=str(max(fixes)) if fixes else None,
    )


def _deduplicated(findings: list[Finding]) -> list[Finding]:
    kept: list[Finding] = []
    for finding in sorted(findings, key=lambda f: (canonicalize_name(f.package), f.advisory)):
        names = {finding.advisory, *finding.aliases}
        for index, other in enumerate(kept):
            if other.package == finding.package and names & {other.advisory, *other.aliases}:
                kept[index] = _merged(other, finding)
                break
        else:
            kept.append(finding)
    return kept


def reaches(severity: Severity, fail_on: str) -> bool:
    """Whether a finding of ``severity`` fails the check under ``security.scanner.fail_on``
    (``unknown`` never does: it is not guessed up)."""
    return fail_on != "never" and severity.rank >= Severity(fail_on).rank


class Verdict(StrEnum):
    """What a scan says: ``clean`` (nothing known, and the database can be trusted to say
    so), ``vulnerable`` (findings below ``fail_on``), ``failing`` (a finding at or above
    it), ``unknown`` (nothing found, but the database cannot rule anything out)."""

    clean = "clean"
    vulnerable = "vulnerable"
    failing = "failing"
    unknown = "unknown"


@dataclass(frozen=True)
class ScanResult:
    """One scan: when, of which database, what it found, and what could not be read.
    ``problem`` is set when the database could not be read at all (nothing was checked)."""

    at: datetime
    database: Path | None
    packages: int
    findings: tuple[Finding, ...] = ()
    advisories: int = 0
    withdrawn: int = 0
    newest_modified: datetime | None = None
    unreadable: tuple[str, ...] = ()
    problem: str | None = None

    def age_seconds(self, now: datetime) -> float | None:
        """How old the database is: now minus its newest advisory's ``modified`` time."""
        if self.newest_modified is None:
            return None
        return max(0.0, (now - self.newest_modified).total_seconds())

    def doubts(self, max_age_days: float, now: datetime) -> list[str]:
        """Why an empty list of findings would not mean that none is known."""
        if self.problem is not None:
            return [self.problem]
        doubts = []
        if self.advisories == 0:
            doubts.append(f"the advisory database {self.database} holds no advisory")
        elif self.newest_modified is None:
            doubts.append("no advisory says when it was modified: the database's age is unknown")
        elif now - self.newest_modified > timedelta(days=max_age_days):
            days = (now - self.newest_modified).total_seconds() / 86400
            doubts.append(
                f"the advisory database is stale: its newest advisory was modified "
                f"{days:.1f} days ago (more than {max_age_days:g}); refresh it from the OSV "
                "export"
            )
        if self.unreadable:
            shown = "; ".join(self.unreadable[:3])
            more = f" and {len(self.unreadable) - 3} more" if len(self.unreadable) > 3 else ""
            doubts.append(f"{len(self.unreadable)} advisories could not be read ({shown}{more})")
        return doubts

    def verdict(self, fail_on: str, max_age_days: float, now: datetime) -> Verdict:
        """``failing`` > ``vulnerable`` > ``unknown`` > ``clean``: what is found counts even
        from a stale database; nothing found counts only from a trustworthy one."""
        if self.findings:
            if any(reaches(f.severity, fail_on) for f in self.findings):
                return Verdict.failing
            return Verdict.vulnerable
        if self.doubts(max_age_days, now):
            return Verdict.unknown
        return Verdict.clean

    def counts(self) -> dict[Severity, int]:
        """Findings per severity (every severity present, zero or more)."""
        counts = dict.fromkeys(Severity, 0)
        for finding in self.findings:
            counts[finding.severity] += 1
        return counts

    def as_dict(self, settings: ScannerSettings, now: datetime) -> dict[str, Any]:
        age = self.age_seconds(now)
        return {
            "verdict": self.verdict(settings.fail_on, settings.max_age_days, now).value,
            "scanned_at": self.at.isoformat(),
            "packages": self.packages,
            "database": {
                "path": None if self.database is None else str(self.database),
                "advisories": self.advisories,
                "withdrawn": self.withdrawn,
                "newest_modified": (
                    None if self.newest_modified is None else self.newest_modified.isoformat()
                ),
                "age_days": None if age is None else round(age / 86400, 2),
                "max_age_days": settings.max_age_days,
                "unreadable": list(self.unreadable),
            },
            "doubts": self.doubts(settings.max_age_days, now),
            "findings": [finding.as_dict() for finding in self.findings],
        }


def scan(
    database: Path | None,
    installed: list[Installed] | None = None,
    now: datetime | None = None,
) -> ScanResult:
    """Match ``installed`` (default: this environment's distributions) against the database
    at ``database``. Reads files only; a database that cannot be read gives a result whose
    ``problem`` says why, never an exception."""
    now = now or datetime.now(UTC)
    packages = installed if installed is not None else installed_distributions()
    if database is None:
        return ScanResult(now, None, len(packages), problem=UNSET_DATABASE)
    by_name = {package.canonical: package for package in packages}
    try:
        read: DatabaseRead = read_database(database, set(by_name))
    except DatabaseError as exc:
        return ScanResult(now, database, len(packages), problem=str(exc))
    findings = []
    for advisory in read.advisories:
        for name, package in by_name.items():
            match = advisory.matches(name, package.version)
            if match is None:
                continue
            findings.append(
                Finding(
                    package=package.name,
                    version=package.version,
                    advisory=advisory.id,
                    aliases=advisory.aliases,
                    severity=advisory.severity,
                    summary=advisory.summary,
                    fixed=match.fixed,
                )
            )
    return ScanResult(
        at=now,
        database=database,
        packages=len(packages),
        findings=tuple(_deduplicated(findings)),
        advisories=read.read,
        withdrawn=read.withdrawn,
        newest_modified=read.newest_modified,
        unreadable=tuple(read.unreadable),
    )


# The alert a scan raises (``app.state.alerts``): its source, and how many vulnerable
# packages its message names.
ALERT_SOURCE = "vulnerabilities"
ALERT_NAMES = 5


class VulnerabilityScanner:
    """The scanner in the server: a scan at start-up and every ``interval_hours``, off the
    event loop; the latest result in ``status``; figures on ``/metrics``; an alert through
    ``alerts`` (the monitor's channels when it is on) while the result is not clean.
    ``on_result`` runs after each scan (the capability refreshes the dependency report)."""

    def __init__(
        self,
        settings: ScannerSettings,
        metrics: Metrics,
        on_result: Callable[[], Awaitable[None]] | None = None,
        alerts: Callable[[], AlertReporter] | None = None,
    ) -> None:
        self.settings = settings
        self.on_result = on_result
        self.alerts = alerts
        self.status: ScanResult | None = None
        self._task: asyncio.Task[None] | None = None
        self._vulnerabilities = metrics.gauge(
            "renum_security_vulnerabilities",
            "Known vulnerabilities of the installed packages, by severity, at the last scan "
            "(NaN: the advisory database could not be read).",
            mode="max",
            labelnames=("severity",),
        )
        self._age = metrics.gauge(
            "renum_security_database_age_seconds",
            "Age of the OSV advisory database: now minus its newest advisory's modified time "
            "(NaN: unknown).",
            mode="max",
        )
        self._scanned = metrics.gauge(
            "renum_security_last_scan_timestamp_seconds",
            "When the last vulnerability scan finished (Unix time; NaN: none yet).",
            mode="max",
        )
        metrics.before_collect(self._fold)

    def _fold(self) -> None:
        status = self.status
        if status is None:
            self._scanned.set(math.nan)
            self._age.set(math.nan)
            for severity in Severity:
                self._vulnerabilities.labels(severity=severity.value).set(math.nan)
            return
        self._scanned.set(status.at.timestamp())
        age = status.age_seconds(datetime.now(UTC))
        self._age.set(math.nan if age is None else age)
        for severity, count in status.counts().items():
            value = math.nan if status.problem is not None else float(count)
            self._vulnerabilities.labels(severity=severity.value).set(value)

    async def tick(self) -> ScanResult:
        """One scan (in a thread: reading a full export takes seconds), logged and kept."""
        result = await asyncio.to_thread(scan, self.settings.database)
        self.status = result
        now = datetime.now(UTC)
        verdict = result.verdict(self.settings.fail_on, self.settings.max_age_days, now)
        fields: dict[str, Any] = {
            "verdict": verdict.value,
            "findings": len(result.findings),
            "advisories": result.advisories,
            "packages": result.packages,
        }
        if verdict is Verdict.clean:
            log.info("vulnerability_scan", **fields)
        else:
            fields["doubts"] = result.doubts(self.settings.max_age_days, now)
            fields["vulnerable"] = sorted(
                {f"{f.package} {f.version} ({f.advisory})" for f in result.findings}
            )
            log.warning("vulnerability_scan", **fields)
        await self._alert(result, verdict, now)
        if self.on_result is not None:
            try:
                await self.on_result()
            except Exception as exc:  # the report catches up at its next round
                log.warning("vulnerability_report_refresh_failed", error_type=type(exc).__name__)
        return result

    async def _alert(self, result: ScanResult, verdict: Verdict, now: datetime) -> None:
        """Critical while a finding reaches ``fail_on``, a warning for lesser findings or an
        unknown result (a missing or stale database), cleared once a scan is clean."""
        if self.alerts is None:
            return
        reporter = self.alerts()
        if verdict is Verdict.clean:
            await reporter.clear(ALERT_SOURCE)
            return
        if verdict is Verdict.unknown:
            doubts = "; ".join(result.doubts(self.settings.max_age_days, now))
            message = f"The vulnerability scan cannot rule anything out: {doubts}."
        else:
            vulnerable = sorted({f"{f.package} {f.version}" for f in result.findings})
            named = ", ".join(vulnerable[:ALERT_NAMES])
            more = len(vulnerable) - ALERT_NAMES
            message = (
                f"{len(result.findings)} known vulnerabilities in the installed packages "
                f"({named}{f' and {more} more' if more > 0 else ''}): run `renum security scan` "
                "for the advisories and the upgrade commands."
            )
        await reporter.report(
            ALERT_SOURCE, "critical" if verdict is Verdict.failing else "warning", message
        )

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except Exception as exc:  # the scanner outlives one bad scan, and says so
                log.error("vulnerability_scan_failed", error_type=type(exc).__name__, exc_info=exc)
                failed = f"the vulnerability scan failed ({type(exc).__name__})"
                self.status = ScanResult(
                    datetime.now(UTC), self.settings.database, 0, problem=failed
                )
            every = self.settings.interval_hours * 3600
            await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._loop(), name="vulnerability-scanner"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
