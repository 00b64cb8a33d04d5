"""The security capability's entries in the dependency report (``/health/dependencies``,
``renum doctor``), optional checks, so they never take the instance out of the load balancer:
the vulnerability scanner's, and the encryption keys' (stored secrets sealed with a key that
is not configured fail it; values under an older key are counted, a rotation pending).

The vulnerability check reads the running scanner's latest result (a server) or scans now
(``renum doctor``). A finding warns, or fails at or above ``security.scanner.fail_on``; a
database that is missing, unreadable, empty, partly unreadable or stale warns that the result
is unknown: such a result never passes. Both are registered with the health capability's
registry (``CHECK_MODULES``)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime

from packaging.version import Version
from sqlalchemy.exc import SQLAlchemyError

from app.capabilities.health import (
    CheckContext,
    CheckOutcome,
    CheckSpec,
    HealthCheck,
    Status,
    Troubleshooting,
    register,
)
from app.capabilities.security.keys import key_use_on
from app.capabilities.security.manager import CHECK_NAME, SecurityManager
from app.capabilities.security.scanner import (
    Finding,
    ScanResult,
    Verdict,
    reaches,
    scan,
    upgrade_command,
)
from app.core.config import ScannerSettings
from app.core.crypto import SecretBox

DATABASE_COMPONENT = "advisory-database"


@register
class VulnerabilityCheck(HealthCheck):
    spec = CheckSpec(
        name=CHECK_NAME,
        kind="security",
        critical=False,
        description="No installed Python package has a known vulnerability in the OSV "
        "advisory database on disk (security.scanner.database), and that database is "
        "readable and younger than security.scanner.max_age_days. Runs when "
        "security.scanner.enabled is on (the production and staging profiles).",
        measurement="count",
        timeout_seconds=60.0,
        interval_seconds=300.0,
        ttl_seconds=3600.0,
        failure_threshold=1,
        troubleshooting=Troubleshooting(
            symptom="`vulnerabilities:count` warns or fails: an installed package has a known "
            "vulnerability, or the advisory database is missing, unreadable or stale (the "
            "result is unknown).",
            cause="A dependency's installed version is affected by a published advisory; or "
            "the OSV export was never copied to RENUM_SECURITY__SCANNER__DATABASE, or has not "
            "been refreshed for longer than RENUM_SECURITY__SCANNER__MAX_AGE_DAYS.",
            fix="Run `renum security scan` for each finding's upgrade command and apply it "
            "(then restart); refresh the database from the OSV export (PyPI/all.zip); see the "
            "security guide.",
            docs_anchor=CHECK_NAME,
        ),
    )

    async def run(self, context: CheckContext) -> list[CheckOutcome]:
        security = context.settings.security
        if not security.enabled or not security.scanner.enabled:
            return [
                CheckOutcome(
                    DATABASE_COMPONENT,
                    Status.passed,
                    "the vulnerability scanner is off (RENUM_SECURITY__SCANNER__ENABLED=false): "
                    "nothing is scanned",
                )
            ]
        result: ScanResult | None
        if context.state is None:  # renum doctor: no server, so scan now
            result = await asyncio.to_thread(scan, security.scanner.database)
        else:
            manager = getattr(context.state, "security", None)
            scanner = manager.scanner if isinstance(manager, SecurityManager) else None
            result = scanner.status if scanner is not None else None
        if result is None:
            return [
                CheckOutcome(
                    DATABASE_COMPONENT,
                    Status.warn,
                    "the first vulnerability scan has not finished yet: the result is unknown",
                )
            ]
        return outcomes(result, security.scanner, datetime.now(UTC), self._fix())

    def _fix(self) -> str | None:
        return self.spec.troubleshooting.fix if self.spec.troubleshooting else None


def outcomes(
    result: ScanResult, settings: ScannerSettings, now: datetime, fix: str | None = None
) -> list[CheckOutcome]:
    """The report's entries for one scan: the database's, then one per vulnerable package."""
    verdict = result.verdict(settings.fail_on, settings.max_age_days, now)
    doubts = result.doubts(settings.max_age_days, now)
    age = result.age_seconds(now)
    age_days = None if age is None else round(age / 86400, 2)
    count = None if result.problem is not None else len(result.findings)
    entries = []
    if doubts:
        said = "; ".join(doubts)
        message = said if result.findings else f"the result is unknown: {said}"
        entries.append(
            CheckOutcome(DATABASE_COMPONENT, Status.warn, message, count, "vulnerabilities", fix)
        )
    elif verdict is Verdict.clean:
        entries.append(
            CheckOutcome(
                DATABASE_COMPONENT,
                Status.passed,
                f"no known vulnerability among {result.packages} installed packages "
                f"({result.advisories} advisories, the newest modified {age_days} days ago)",
                count,
                "vulnerabilities",
            )
        )
    else:
        entries.append(
            CheckOutcome(
                DATABASE_COMPONENT,
                Status.passed,
                f"{result.advisories} advisories read, the newest modified {age_days} days ago",
                count,
                "vulnerabilities",
            )
        )
    by_package: dict[str, list[Finding]] = defaultdict(list)
    for finding in result.findings:
        by_package[finding.package].append(finding)
    for package, findings in by_package.items():
        failing = any(reaches(f.severity, settings.fail_on) for f in findings)
        status = Status.fail if failing else Status.warn
        described = "; ".join(_described(f) for f in findings)
        fixes = [Version(f.fixed) for f in findings if f.fixed is not None]
        upgrade = (
            upgrade_command(package, str(max(fixes)))
            if fixes
            else f"no fixed version is published: remove or replace {package}"
        )
        entries.append(
            CheckOutcome(
                package,
                status,
                f"{package} {findings[0].version}: {described}",
                len(findings),
                "vulnerabilities",
                fix=upgrade,
            )
        )
    return entries


def _described(finding: Finding) -> str:
    aliases = f" ({', '.join(finding.aliases)})" if finding.aliases else ""
    fixed = f", fixed in {finding.fixed}" if finding.fixed else ", no fixed version"
    return f"{finding.advisory}{aliases}, {finding.severity.value}{fixed}"


KEYS_CHECK = "encryption-keys"


@register
class EncryptionKeyCheck(HealthCheck):
    spec = CheckSpec(
        name=KEYS_CHECK,
        kind="security",
        critical=False,
        description="Every stored secret (provider keys, webhook and delivery secrets) and "
        "every row of executions' content sealed at rest is sealed with a key of "
        "RENUM_ENCRYPTION_KEYS; values still under an older key are counted (a rotation is "
        "pending).",
        measurement="values",
        timeout_seconds=10.0,
        interval_seconds=300.0,
        ttl_seconds=900.0,
        failure_threshold=1,
        troubleshooting=Troubleshooting(
            symptom="`encryption-keys:values` fails: some stored secrets are sealed with a key "
            "that is not configured, so they cannot be opened (the agents and webhooks using "
            "them fail).",
            cause="A key was removed from RENUM_ENCRYPTION_KEYS while values still used it "
            "(before `renum keys rotate` had sealed them again with the first key).",
            fix="Put the key back in RENUM_ENCRYPTION_KEYS (after the first), restart, run "
            "`renum keys rotate`, and remove the key only once `renum keys status` says it "
            "seals nothing; see the security guide.",
            docs_anchor=KEYS_CHECK,
        ),
    )

    async def run(self, context: CheckContext) -> list[CheckOutcome]:
        if not context.settings.security.enabled:
            return [
                CheckOutcome(
                    KEYS_CHECK,
                    Status.passed,
                    "the security capability is off (RENUM_SECURITY__ENABLED=false): the keys "
                    "are not checked",
                )
            ]
        box = SecretBox.from_settings(context.settings)
        try:
            use = await context.database.on_probe_connection(lambda conn: key_use_on(conn, box))
        except (SQLAlchemyError, OSError) as exc:  # the database check says what is wrong
            return [
                CheckOutcome(
                    KEYS_CHECK,
                    Status.warn,
                    "the stored secrets could not be counted: the database did not answer "
                    f"({type(exc).__name__}; see the database check)",
                )
            ]
        unknown = use.unknown
        if unknown:
            named = ", ".join(f"{n} under {key_id!r}" for key_id, n in sorted(unknown.items()))
            fix = self.spec.troubleshooting.fix if self.spec.troubleshooting else None
            return [
                CheckOutcome(
                    KEYS_CHECK,
                    Status.fail,
                    f"stored secrets sealed with keys that are not configured cannot be opened: "
                    f"{named}",
                    sum(unknown.values()),
                    "values",
                    fix,
                )
            ]
        pending = use.pending
        message = (
            f"every stored secret is sealed with the first key ({use.primary})"
            if not pending
            else f"{pending} stored secrets are still under an older key: run `renum keys rotate`"
        )
        return [CheckOutcome(KEYS_CHECK, Status.passed, message, pending, "values")]
