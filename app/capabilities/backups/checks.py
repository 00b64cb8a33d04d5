"""The backups' entry in the dependency report (``/health/dependencies``, ``renum doctor``):
the watch's judgement of the backups (``watch.assess``), read from the running watch or, outside
a server, from the catalogue. Registered with the health capability's registry
(``CHECK_MODULES``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from app.capabilities.backups.catalogue import BackupError, catalogue_for
from app.capabilities.backups.watch import BackupStatus, BackupWatch, assess, expected
from app.capabilities.health import (
    CheckContext,
    CheckOutcome,
    CheckSpec,
    HealthCheck,
    Status,
    Troubleshooting,
    register,
)


@register
class BackupCheck(HealthCheck):
    spec = CheckSpec(
        name="backups",
        kind="backup",
        critical=False,
        description="The newest backup that passed its verification is younger than "
        "backups.max_age_hours, and the most recent verification passed (SQLite snapshots, "
        "pgBackRest backups of PostgreSQL).",
        measurement="age",
        timeout_seconds=5.0,
        interval_seconds=60.0,
        ttl_seconds=300.0,
        failure_threshold=1,
        troubleshooting=Troubleshooting(
            symptom="`backups:age` is 'warn': no verified backup, the newest is too old, or "
            "the last verification failed.",
            cause="Backups are not taken (no schedule, no timer running `renum backup run`), "
            "or a backup's file was damaged after it was taken.",
            fix="Run `renum backup run` and `renum backup verify`, and schedule them "
            "(RENUM_BACKUPS__EVERY_HOURS, or a timer); see the backups guide.",
            docs_anchor="backups",
        ),
    )

    async def run(self, context: CheckContext) -> list[CheckOutcome]:
        settings = context.settings
        if not settings.backups.enabled:
            return [
                CheckOutcome(
                    "backups",
                    Status.passed,
                    "the backups capability is off (RENUM_BACKUPS__ENABLED=false): nothing is "
                    "watched",
                )
            ]
        watch = getattr(context.state, "backup_watch", None)
        status = watch.status if isinstance(watch, BackupWatch) else None
        if status is None:
            try:
                catalogue = catalogue_for(settings)
                backups = await asyncio.to_thread(catalogue.backups)
            except BackupError as exc:
                if not settings.database.is_sqlite and not expected(settings):
                    message = f"not configured here: {exc}"
                    return [CheckOutcome("backups", Status.passed, message)]
                return [CheckOutcome("backups", Status.warn, str(exc), fix=self._fix())]
            except OSError as exc:  # a directory this process may not read
                said = f"the backups cannot be read: {exc}"
                return [CheckOutcome("backups", Status.warn, said, fix=self._fix())]
            now = datetime.now(UTC)
            status = assess(
                backups, now, settings.backups.max_age_hours, expected=expected(settings)
            )
        return [self._outcome(status)]

    def _fix(self) -> str | None:
        return self.spec.troubleshooting.fix if self.spec.troubleshooting else None

    def _outcome(self, status: BackupStatus) -> CheckOutcome:
        age = status.age_seconds(datetime.now(UTC))
        observed = None if status.newest_verified is None else round(age / 3600, 2)
        if status.problem is not None:
            return CheckOutcome(
                "backups", Status.warn, status.problem, observed, "h", fix=self._fix()
            )
        if status.newest_verified is None:
            return CheckOutcome(
                "backups",
                Status.passed,
                "no verified backup yet (none expected here: no schedule, not staging or "
                "production)",
            )
        return CheckOutcome(
            "backups",
            Status.passed,
            f"the newest verified backup ({status.newest_verified.id}) is {age / 3600:.1f} h old",
            observed,
            "h",
        )
