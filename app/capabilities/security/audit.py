"""The security capability's part of the audit trail: the enabled trail for the app, the
periodic checkpoints and pruning, and what it records itself: platform admins' reads (a
request observer), refusals for a role (a problem observer of the error handler) and the
intrusion detection's events (a listener).

The trail itself (recording, the chain, verification) is the base's (``app.services.audit``):
services record what they did into ``app.state.audit``, which is a disabled trail until this
capability puts an enabled one there (``security.audit.enabled``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from starlette.types import Scope

from app.api.deps import PRINCIPAL_KEY
from app.capabilities.security.events import SecurityEvent
from app.core.config import AuditSettings
from app.core.errors import ProblemError
from app.core.logging import get_logger
from app.core.metrics import Metrics
from app.core.request_context import ACCOUNT_READS, AccountRead, route_template
from app.db.database import SQLAlchemyManager
from app.services.audit import AuditTrail, Detail
from app.services.audit_chain import AuditSigner
from app.services.principal import Principal

log = get_logger("app.audit")

INITIALISE_RETRY_SECONDS = 5.0


class AuditKeeper:
    """The enabled trail of one app, its checkpoints and pruning every
    ``checkpoint_interval_minutes``, and what it records in the background (admins' reads,
    refusals for a role)."""

    def __init__(self, settings: AuditSettings, metrics: Metrics) -> None:
        self.settings = settings
        self._failures = Counter(
            "renum_audit_write_failures",
            "Audit entries that could not be written (the actions stood), by action.",
            ["action"],
            registry=metrics.shared,
        )
        self.trail = AuditTrail.disabled()
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def attach(self, database: SQLAlchemyManager, signer: AuditSigner) -> None:
        """Record into ``database`` from now on (the app's lifespan has opened it)."""
        self.trail = AuditTrail(
            database.session, signer, on_failure=lambda action: self._failures.labels(action).inc()
        )

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep(), name="renum-audit")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def _keep(self) -> None:
        """Sign the head of a trail never written to (tried again each round until the
        database answers: a server may start degraded), then checkpoint and prune."""
        interval = self.settings.checkpoint_interval_minutes * 60
        initialised = False
        while not initialised:
            try:
                await self.trail.initialise()
                initialised = True
            except Exception as exc:
                log.warning("audit_initialise_failed", error_type=type(exc).__name__)
                await asyncio.sleep(min(interval, INITIALISE_RETRY_SECONDS))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.trail.checkpoint()
                await self.trail.prune(self.settings.retention_days, datetime.now(UTC))
            except Exception as exc:  # the next round tries again
                log.error("audit_checkpoint_failed", error_type=type(exc).__name__)

    async def security_event(self, event: SecurityEvent) -> None:
        """A detection of the intrusion detection, in the trail (a listener of its events)."""
        await self.trail.record(
            "security.event",
            outcome="denied",
            actor_kind="anonymous",
            target=event.subject,
            source=event.source,
            details={
                "kind": event.kind,
                "action": event.action,
                "seconds": event.seconds,
                **{f"count_{name}": value for name, value in event.counts.items()},
            },
        )

    # The request observer: a platform admin's successful read of account data is audited.
    def request_started(self, scope: Scope) -> None:
        """Nothing to do before the answer."""

    def request_finished(self, scope: Scope, status: int, seconds: float) -> None:
        """A platform admin's successful request that read account data (noted by the
        repositories, ``ACCOUNT_READS``) is recorded: one entry per account whose rows it
        got, in that account (its owners see it), and one for its queries across every
        account."""
        reads: list[AccountRead] | None = scope.get(ACCOUNT_READS)
        principal = scope.get(PRINCIPAL_KEY)
        if not reads or not isinstance(principal, Principal) or not 200 <= status < 300:
            return
        rows: dict[Any, list[str]] = {}
        for account_id, table, row_id in reads:
            if row_id is not None:
                rows.setdefault(account_id, []).append(f"{table}:{row_id}")
        listed = sorted(
            {table for account_id, table, row_id in reads if row_id is None}
            - {target.split(":", 1)[0] for targets in rows.values() for target in targets}
        )
        entries = [
            (account_id, ", ".join(dict.fromkeys(targets))) for account_id, targets in rows.items()
        ]
        if listed:
            entries.append((None, "every account: " + ", ".join(listed)))
        details: dict[str, Detail] = {
            "method": str(scope.get("method")),
            "route": route_template(scope),
        }
        source = self.trail.address(scope)
        for account_id, target in entries:
            self._spawn(
                self.trail.record(
                    "admin.read",
                    principal=principal,
                    account_id=account_id,
                    target=target,
                    details=details,
                    source=source,  # the task keeps the request's id, not its scope
                )
            )

    async def problem(self, scope: Scope, problem: ProblemError) -> None:
        """A request refused for its role (403) is recorded, after the answer (a problem
        observer of the error handler)."""
        principal = scope.get(PRINCIPAL_KEY)
        if problem.status != 403 or not isinstance(principal, Principal):
            return
        self._spawn(
            self.trail.record(
                "access.denied",
                outcome="denied",
                principal=principal,
                target=f"{scope.get('method')} {scope.get('path')}",
                details={"route": route_template(scope)},
                source=self.trail.address(scope),
            )
        )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
