"""The retention purge: removes the data of ended executions once it is older than its kind's
retention (``RENUM_DATABASE_MANAGER__RETENTION__*``), in bounded batches, and reports what it
removed; a background loop runs it every ``interval_seconds`` while the app runs, and
``renum db purge`` runs it (or previews it, ``--dry-run``) on demand.

What goes, by kind (each kind only when its ``*_days`` is set):

- ``events``, ``messages``, ``context``, ``steps``, ``ledger``: the rows of executions in a
  terminal status (completed, failed, cancelled, timed out) that **ended** more than that many
  days ago (the execution's ``finished_at``). Rows of pending or running executions are never
  touched, whatever their age; all rows of one kind of one execution go in the same round.
  Ledger rows whose execution was deleted with its team go by their own ``created_at``.
- ``rollups``: daily totals (``ledger_daily_totals``) of days that ended more than that many
  days ago. Those calls then leave the usage figures: that is what the setting is for.

Ledger rows are folded into their day's total in the transaction that deletes them (see
``app.repositories.retention``), so ``GET /api/v1/usage`` reports the same figures before and
after a purge. Each batch is one short transaction deleting at most ``batch_size`` rows of one
kind; the loop yields to the event loop between batches. Several processes may purge at once:
rows are deleted by id and only what a ``DELETE`` removed is counted and folded.

Each round logs ``retention_purged`` (rows removed and batches per kind, the oldest ledger row
and daily total kept) and counts the rows on ``renum_database_purged_rows_total{kind}``. A
round never raises out of the loop: a database outage skips it (``retention_skipped``), any
other failure is logged (``retention_failed``) and the next round tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.config import RetentionSettings
from app.core.errors import ServiceUnavailable
from app.core.logging import get_logger
from app.core.metrics import Metrics
from app.db.base import utcnow
from app.db.database import READ_ONLY
from app.db.pool import is_connection_failure, is_transient
from app.repositories import retention as repository

log = get_logger("app.database")

T = TypeVar("T")

# Every kind, in the order a round purges them. Daily totals first: what a dry run counts of
# them is what is there now (totals folded by this round are left to the next one). Steps
# last: ledger rows refer to them.
KINDS = ("rollups", "ledger", "events", "messages", "context", "steps")
# The kinds that belong to executions, purged page by page of ended executions.
EXECUTION_KINDS = ("ledger", "events", "messages", "context", "steps")
SETTINGS = {kind: f"{kind}_days" for kind in KINDS}

PURGED_METRIC = "renum_database_purged_rows"
# Ended executions visited per page (their ids are bound in each batch's statements).
PAGE_SIZE = 200
# The first round, this long after start-up at most (then every interval_seconds).
FIRST_ROUND_SECONDS = 60.0


@dataclass(frozen=True)
class Cutoff:
    """One kind's retention: rows older than ``before`` (``days`` before the round) go."""

    kind: str
    days: int
    before: datetime

    @property
    def day(self) -> date:
        """The first day kept (daily totals of earlier days go)."""
        return self.before.date()


def cutoffs(settings: RetentionSettings, now: datetime) -> dict[str, Cutoff]:
    """The configured kinds' cut-offs at ``now``, in purge order; empty when no retention is
    set."""
    found = {}
    for kind in KINDS:
        days = getattr(settings, SETTINGS[kind])
        if days is not None:
            found[kind] = Cutoff(kind, days, now - timedelta(days=days))
    return found


def _iso(value: datetime | date | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass
class KindReport:
    """What a round did to one kind (or, in a dry run, would do)."""

    kind: str
    days: int
    cutoff: datetime
    removed: int = 0
    batches: int = 0
    oldest_kept: datetime | date | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "days": self.days,
            "cutoff": _iso(self.cutoff),
            "removed": self.removed,
            "batches": self.batches,
            "oldest_kept": _iso(self.oldest_kept),
        }


@dataclass
class PurgeReport:
    """A round's outcome: per configured kind, rows removed (or that would be) and batches."""

    dry_run: bool
    now: datetime
    kinds: dict[str, KindReport] = field(default_factory=dict)
    seconds: float = 0.0

    @classmethod
    def planned(cls, settings: RetentionSettings, now: datetime, *, dry_run: bool) -> PurgeReport:
        planned = cutoffs(settings, now).items()
        return cls(dry_run, now, {kind: KindReport(kind, c.days, c.before) for kind, c in planned})

    @property
    def removed(self) -> dict[str, int]:
        return {kind: report.removed for kind, report in self.kinds.items()}

    @property
    def total(self) -> int:
        return sum(self.removed.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "now": _iso(self.now),
            "configured": bool(self.kinds),
            "total": self.total,
            "seconds": round(self.seconds, 3),
            "kinds": [report.as_dict() for report in self.kinds.values()],
        }

    def log_fields(self) -> dict[str, Any]:
        return {
            "removed": self.removed,
            "batches": {kind: report.batches for kind, report in self.kinds.items()},
            "oldest_kept": {
                kind: _iso(report.oldest_kept)
                for kind, report in self.kinds.items()
                if report.oldest_kept is not None
            },
            "total": self.total,
            "seconds": round(self.seconds, 3),
        }


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Retention:
    """Purges expired rows (``purge``), counts what would go (``preview``), and runs a round
    every ``interval_seconds`` in the background (``start``/``stop``).

    ``settings`` is read at every round (a configuration reload applies to the next one).
    ``metrics``, when given, gets ``renum_database_purged_rows_total{kind}``."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Callable[[], RetentionSettings],
        metrics: Metrics | None = None,
        *,
        retries: int = 3,
        page_size: int = PAGE_SIZE,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.reader = engine.execution_options(**READ_ONLY)
        self.settings = settings
        self.retries = retries
        self.page_size = page_size
        self.clock = clock
        self.rounds = 0
        self.last_report: PurgeReport | None = None
        self._task: asyncio.Task[None] | None = None
        self.purged: Counter | None = None
        if metrics is not None:
            self.purged = Counter(
                PURGED_METRIC,
                "Rows the retention purge removed, by kind.",
                ["kind"],
                registry=metrics.shared,
            )
            for kind in KINDS:
                self.purged.labels(kind)  # every kind shows, at 0 until purged

    # -- transactions ---------------------------------------------------------------------------

    async def _write(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """``work`` in one transaction, run again (from scratch) after a transient failure
        (``app.db.pool.is_transient``). Safe even when a lost connection hid a commit: the
        rows that commit removed are simply not found again."""
        attempt = 0
        while True:
            try:
                async with self.engine.begin() as conn:
                    return await work(conn)
            except Exception as exc:
                if attempt >= self.retries or not is_transient(exc):
                    raise
            attempt += 1
            await asyncio.sleep(0.05 * 2**attempt)

    async def _read(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """``work`` in one read-only transaction (on SQLite, without the write lock)."""
        async with self.reader.begin() as conn:
            return await work(conn)

    async def _drain(
        self,
        report: KindReport,
        limit: int,
        batch: Callable[[AsyncConnection], Awaitable[repository.Batch]],
    ) -> None:
        """Run ``batch`` transactions until one selects fewer than ``limit`` rows."""
        while True:
            done = await self._write(batch)
            if done.selected:
                report.batches += 1
                report.removed += done.removed
                if self.purged is not None and done.removed:
                    self.purged.labels(report.kind).inc(done.removed)
            await asyncio.sleep(0)  # let the event loop serve requests between batches
            if done.selected < limit:
                return

    # -- the purge ------------------------------------------------------------------------------

    async def purge(self, now: datetime | None = None) -> PurgeReport:
        """Remove every expired row of every configured kind now; the report of what went."""
        settings = self.settings()
        report = PurgeReport.planned(settings, now or self.clock(), dry_run=False)
        await self._purge_into(report, settings)
        return report

    async def _purge_into(self, report: PurgeReport, settings: RetentionSettings) -> None:
        started = time.monotonic()
        plan = cutoffs(settings, report.now)
        limit = settings.batch_size
        kinds = report.kinds
        if "rollups" in plan:
            before_day = plan["rollups"].day
            await self._drain(
                kinds["rollups"],
                limit,
                lambda conn: repository.purge_rollups(conn, before_day, limit),
            )
        await self._purge_executions(report, plan, limit)
        if "ledger" in plan:
            before = plan["ledger"].before
            await self._drain(
                kinds["ledger"],
                limit,
                lambda conn: repository.purge_orphan_ledger_rows(conn, before, limit),
            )
            kinds["ledger"].oldest_kept = await self._read(repository.oldest_ledger_row)
        if "rollups" in plan:
            kinds["rollups"].oldest_kept = await self._read(repository.oldest_rollup)
        report.seconds = time.monotonic() - started

    async def _purge_executions(
        self, report: PurgeReport, plan: dict[str, Cutoff], limit: int
    ) -> None:
        """Visit the executions that ended before the latest cut-off, a page at a time (each
        once), and purge each expired kind of their rows."""
        kinds = [kind for kind in EXECUTION_KINDS if kind in plan]
        if not kinds:
            return
        latest = max(plan[kind].before for kind in kinds)
        after: uuid.UUID | None = None
        while True:
            page = await self._read(
                functools.partial(
                    repository.ended_executions, before=latest, after=after, limit=self.page_size
                )
            )
            for kind in kinds:
                ids = [e.id for e in page if e.ended_at < plan[kind].before]
                if not ids:
                    continue
                if kind == "ledger":
                    batch = functools.partial(
                        repository.purge_ledger_rows, execution_ids=ids, limit=limit
                    )
                else:
                    batch = functools.partial(
                        repository.purge_execution_rows, kind=kind, execution_ids=ids, limit=limit
                    )
                await self._drain(report.kinds[kind], limit, batch)
            if len(page) < self.page_size:
                return
            after = page[-1].id

    async def preview(self, now: datetime | None = None) -> PurgeReport:
        """What ``purge`` would remove now, per kind, changing nothing (a dry run)."""
        started = time.monotonic()
        settings = self.settings()
        report = PurgeReport.planned(settings, now or self.clock(), dry_run=True)
        for kind, cutoff in cutoffs(settings, report.now).items():
            if kind == "rollups":
                count = functools.partial(repository.count_rollups, before=cutoff.day)
            else:
                count = functools.partial(
                    repository.count_execution_rows, kind=kind, before=cutoff.before
                )
            report.kinds[kind].removed = await self._read(count)
        report.seconds = time.monotonic() - started
        return report

    # -- the background loop --------------------------------------------------------------------

    async def round(self) -> PurgeReport | None:
        """One background round: purge and log the report. Never raises (except when
        cancelled): a database outage skips the round, any other failure is logged."""
        settings = self.settings()
        report = PurgeReport.planned(settings, self.clock(), dry_run=False)
        if not report.kinds:
            return None
        self.rounds += 1
        try:
            await self._purge_into(report, settings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            unavailable = isinstance(exc, ServiceUnavailable) or is_connection_failure(exc)
            (log.warning if unavailable else log.error)(
                "retention_skipped" if unavailable else "retention_failed",
                reason="database unavailable" if unavailable else _first_line(exc),
                error_type=type(exc).__name__,
                removed=report.removed,
            )
            return None
        self.last_report = report
        log.info("retention_purged", **report.log_fields())
        return report

    async def _run(self) -> None:
        delay = min(self.settings().interval_seconds, FIRST_ROUND_SECONDS)
        while True:
            await asyncio.sleep(delay)
            await self.round()
            delay = self.settings().interval_seconds

    def start(self) -> None:
        """Run a round every ``interval_seconds`` (the first one within a minute)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="renum-retention")

    async def stop(self) -> None:
        """Stop the loop; a batch in progress is rolled back."""
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
