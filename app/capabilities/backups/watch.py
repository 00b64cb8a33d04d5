"""The server's watch over the backups: it takes the scheduled ones and says how they stand.

Every ``backups.check_seconds`` the watch reads the catalogue and judges it (``assess``): the newest
backup whose verification passed must be younger than ``backups.max_age_hours``, and the most
recent verification must have passed. A problem is reported through ``app.state.alerts`` (the
monitor's alerts, or the log) and cleared when it is over; the figures go to ``/metrics`` and
the dependency report reads the same judgement. With ``backups.every_hours`` set, the watch
takes and verifies a backup when the newest is that old, holding a lock file in the backups'
directory so two processes never take one at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from app.capabilities.backups.catalogue import Backup, BackupCatalogue, BackupError, Verification
from app.capabilities.backups.replication import Replication
from app.core.alerts import AlertReporter
from app.core.config import Environment, Settings
from app.core.logging import get_logger
from app.core.metrics import Metrics

log = get_logger("app.backups")

ALERT_SOURCE = "backups"
EXPECTED_ENVIRONMENTS = frozenset({Environment.staging, Environment.production})


@dataclass(frozen=True)
class BackupStatus:
    """How the backups stand at ``at``: the newest one verified good, the most recent
    verification (of any backup), and the problem an operator must hear about, if any."""

    at: datetime
    kept: int
    newest_verified: Backup | None
    last_verification: Verification | None
    problem: str | None

    def age_seconds(self, now: datetime) -> float:
        """The newest verified backup's age; NaN when there is none."""
        if self.newest_verified is None:
            return math.nan
        return (now - self.newest_verified.taken_at).total_seconds()


def assess(
    backups: list[Backup], now: datetime, max_age_hours: float, *, expected: bool
) -> BackupStatus:
    """Judge ``backups``: a failed last verification, a newest verified backup older than
    ``max_age_hours``, or none at all where backups are ``expected``, is a problem."""
    verified = [b for b in backups if b.verification is not None]
    last = max(verified, key=lambda b: b.verification.at, default=None)  # type: ignore[union-attr]
    good = [b for b in verified if b.verification and b.verification.passed]
    newest = max(good, key=lambda b: b.taken_at, default=None)
    problem = None
    if last is not None and last.verification and not last.verification.passed:
        at = last.verification.at.strftime("%Y-%m-%d %H:%M")
        problem = f"the last verification (backup {last.id}, at {at}Z) failed: " + "; ".join(
            last.verification.problems
        )
    elif newest is None:
        if expected:
            problem = "no backup has passed a verification: run `renum backup run`, then verify"
    elif now - newest.taken_at > timedelta(hours=max_age_hours):
        problem = f"the newest verified backup ({newest.id}) is older than {max_age_hours:g} h"
    return BackupStatus(
        at=now,
        kept=len(backups),
        newest_verified=newest,
        last_verification=last.verification if last else None,
        problem=problem,
    )


def expected(settings: Settings) -> bool:
    """Whether a deployment without a verified backup is a problem: where the server takes
    them on a schedule, and in staging and production."""
    return settings.backups.every_hours is not None or settings.environment in EXPECTED_ENVIRONMENTS


class BackupWatch:
    """See the module's docstring. ``settings`` is read at each tick (live reloads apply)."""

    def __init__(
        self,
        catalogue: BackupCatalogue,
        settings: Callable[[], Settings],
        metrics: Metrics,
        alerts: Callable[[], AlertReporter],
        replication: Replication | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.replication = replication
        self.settings = settings
        self.alerts = alerts
        self.status: BackupStatus | None = None
        self._reported: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._age = metrics.gauge(
            "renum_backup_last_verified_age_seconds",
            "Age of the newest backup that passed its verification (NaN: none).",
            mode="max",
        )
        self._success = metrics.gauge(
            "renum_backup_last_verification_success",
            "1 when the most recent verification of a backup passed, 0 when it failed "
            "(NaN: none yet).",
            mode="max",
        )
        self._kept = metrics.gauge("renum_backups_kept", "Backups kept.", mode="max")
        self._replicating = metrics.gauge(
            "renum_backup_replication_running",
            "1 while Litestream replicates the database (across workers: in any of them), 0 "
            "when it does not (NaN: no replica configured).",
            mode="max",
        )
        metrics.before_collect(self._fold)

    def _fold(self) -> None:
        replication = self.replication
        if replication is None:
            self._replicating.set(math.nan)
        else:  # a worker that leaves it to another says 0: the workers' maximum tells
            self._replicating.set(float(replication.running))
        status = self.status
        if status is None:
            return
        self._age.set(status.age_seconds(datetime.now(UTC)))
        last = status.last_verification
        self._success.set(math.nan if last is None else float(last.passed))
        self._kept.set(status.kept)

    def _scheduled_backup(self, every_hours: float, now: datetime) -> Backup | None:
        """Take and verify a backup if the newest is ``every_hours`` old (or none exists),
        unless another process is taking one."""
        with self.catalogue.exclusive() as mine:
            if not mine:
                return None
            backups = self.catalogue.backups()
            if backups and now - backups[0].taken_at < timedelta(hours=every_hours):
                return None
            backup = self.catalogue.run(now)
            verification = self.catalogue.verify(backup, now)
            return replace(backup, verification=verification)

    async def tick(self, now: datetime | None = None) -> BackupStatus:
        """One look: the scheduled backup if it is due, then the judgement, its figures and
        its alert."""
        now = now or datetime.now(UTC)
        settings = self.settings()
        every = settings.backups.every_hours
        if every is not None:
            try:
                taken = await asyncio.to_thread(self._scheduled_backup, every, now)
            except (BackupError, OSError) as exc:
                log.error("scheduled_backup_failed", error=str(exc))
            else:
                if taken is not None and taken.verification is not None:
                    log.info(
                        "scheduled_backup_taken",
                        backup=taken.id,
                        bytes=taken.size,
                        verified=taken.verification.passed,
                    )
        try:
            backups = await asyncio.to_thread(self.catalogue.backups)
        except OSError as exc:
            status = BackupStatus(now, 0, None, None, f"the backups cannot be read: {exc}")
        else:
            status = assess(
                backups, now, settings.backups.max_age_hours, expected=expected(settings)
            )
            if self.catalogue.unreadable:
                unreadable = "; ".join(self.catalogue.unreadable)
                both = unreadable if status.problem is None else f"{status.problem}; {unreadable}"
                status = replace(status, problem=both)
        replicating = self.replication.problem if self.replication else None
        if replicating is not None:
            both = replicating if status.problem is None else f"{status.problem}; {replicating}"
            status = replace(status, problem=both)
        self.status = status
        await self._tell(status)
        return status

    async def _tell(self, status: BackupStatus) -> None:
        if status.problem is not None and status.problem != self._reported:
            await self.alerts().report(ALERT_SOURCE, "warning", status.problem)
            self._reported = status.problem
        elif status.problem is None and self._reported is not None:
            await self.alerts().clear(ALERT_SOURCE)
            self._reported = None

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except Exception as exc:  # the watch outlives one bad look, and says so
                log.error("backup_watch_failed", error_type=type(exc).__name__, exc_info=exc)
                failed = f"the backup watch could not look at the backups ({type(exc).__name__})"
                self.status = BackupStatus(datetime.now(UTC), 0, None, None, failed)
                with contextlib.suppress(Exception):
                    await self._tell(self.status)
            every = self.settings().backups.check_seconds
            await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="backup-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
