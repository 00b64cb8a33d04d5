"""DependencyValidator and ValidationReport: package problems simulated through the metadata
lookup, fix texts, status aggregation, timeouts and broken checks, tuning, report shapes."""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from app.capabilities.health.checks import CheckContext, PackagesCheck, package_outcomes
from app.capabilities.health.registry import (
    CheckOutcome,
    CheckSpec,
    HealthCheck,
    Status,
    Troubleshooting,
)
from app.capabilities.health.validator import (
    DependencyEntry,
    DependencyValidator,
    ValidationReport,
    aggregate,
    tuned,
)
from app.core.config import Settings
from app.db import migrate
from app.db.database import SQLAlchemyManager
from suites.unit.conftest import MakeSettings

pytestmark = pytest.mark.anyio

REQUIRES = [
    "fastapi<1,>=0.115",
    "pydantic<3,>=2.7",
    'redis<7,>=5; extra == "redis"',
    'pytest<10,>=8.2; extra == "qa"',
    'renum[redis]; extra == "qa"',
    'pywin32>=300; sys_platform == "win32"',
]


class FakeMetadata:
    """Installed versions by name; a missing name is a missing package."""

    def __init__(self, versions: dict[str, str], requires: list[str] | None = REQUIRES) -> None:
        self.versions = versions
        self._requires = requires

    def requires(self, distribution: str) -> list[str] | None:
        if self._requires is None:
            raise importlib.metadata.PackageNotFoundError(distribution)
        return self._requires

    def version(self, distribution: str) -> str:
        try:
            return self.versions[distribution]
        except KeyError:
            raise importlib.metadata.PackageNotFoundError(distribution) from None


HEALTHY = {"fastapi": "0.120.0", "pydantic": "2.9.1", "redis": "6.2.0"}


def by_name(outcomes: list[CheckOutcome]) -> dict[str, CheckOutcome]:
    return {outcome.component_id: outcome for outcome in outcomes}


# --- packages -------------------------------------------------------------------------------


def test_every_core_and_feature_requirement_is_checked_harness_and_platform_ones_skipped() -> None:
    outcomes = by_name(package_outcomes(FakeMetadata(HEALTHY)))
    assert set(outcomes) == {"fastapi", "pydantic", "redis"}
    assert all(o.status is Status.passed for o in outcomes.values())
    assert outcomes["fastapi"].observed_value == "0.120.0"
    assert outcomes["fastapi"].observed_unit == "version"
    assert outcomes["fastapi"].critical is True
    assert outcomes["redis"].critical is False


def test_missing_core_package_fails_with_the_exact_pip_command() -> None:
    outcomes = by_name(package_outcomes(FakeMetadata({"pydantic": "2.9.1", "redis": "6.0"})))
    missing = outcomes["fastapi"]
    assert missing.status is Status.fail
    assert missing.critical is True
    assert missing.observed_value is None
    assert missing.message == "fastapi is not installed (renum needs <1,>=0.115)"
    assert missing.fix == 'python -m pip install "fastapi<1,>=0.115"'
    assert missing.affected_endpoints == ["* /api/v1/*"]


def test_incompatible_core_package_names_installed_version_and_required_range() -> None:
    # The incident: a settings class that moved between Pydantic major versions.
    outcomes = by_name(package_outcomes(FakeMetadata({**HEALTHY, "pydantic": "1.10.13"})))
    wrong = outcomes["pydantic"]
    assert wrong.status is Status.fail
    assert wrong.observed_value == "1.10.13"
    assert "pydantic 1.10.13 is installed but renum needs pydantic<3,>=2.7" in wrong.message
    assert wrong.fix == 'python -m pip install "pydantic<3,>=2.7"'


def test_unparseable_installed_version_is_incompatible() -> None:
    outcomes = by_name(package_outcomes(FakeMetadata({**HEALTHY, "fastapi": "not-a-version"})))
    assert outcomes["fastapi"].status is Status.fail


def test_missing_optional_package_warns_and_disables_only_its_feature() -> None:
    outcomes = by_name(package_outcomes(FakeMetadata({"fastapi": "0.120.0", "pydantic": "2.9"})))
    redis = outcomes["redis"]
    assert redis.status is Status.warn
    assert redis.critical is False
    assert "the optional feature 'redis' is disabled" in redis.message
    assert redis.fix == 'python -m pip install "renum[redis]"'
    assert redis.affected_endpoints == [
        "GET /api/v1/executions/{execution_id}/events",
        "WS /api/v1/executions/{execution_id}/ws",
    ]


def test_optional_package_outside_its_range_warns() -> None:
    # The incident: a renamed Redis client in an incompatible major version.
    outcomes = by_name(package_outcomes(FakeMetadata({**HEALTHY, "redis": "4.6.0"})))
    assert outcomes["redis"].status is Status.warn
    assert "redis 4.6.0 is installed but renum needs redis<7,>=5" in outcomes["redis"].message


def test_distribution_not_installed_is_a_warning_with_the_install_command() -> None:
    [outcome] = package_outcomes(FakeMetadata(HEALTHY, requires=None))
    assert outcome.status is Status.warn
    assert outcome.component_id == "renum"
    assert "pip install -e" in (outcome.fix or "")


def test_unreadable_requirement_line_is_reported_not_raised() -> None:
    outcomes = by_name(package_outcomes(FakeMetadata(HEALTHY, requires=["fastapi>=>1"])))
    assert outcomes["fastapi>=>1"].status is Status.warn


def test_the_installed_renum_distribution_satisfies_its_own_requirements() -> None:
    from app.capabilities.health.checks import InstalledMetadata

    outcomes = package_outcomes(InstalledMetadata())
    assert outcomes, "the renum distribution declares requirements"
    assert [o.message for o in outcomes if o.status is not Status.passed] == []


# --- the validator and its report -----------------------------------------------------------


@pytest.fixture
async def database(make_settings: MakeSettings) -> AsyncIterator[SQLAlchemyManager]:
    db = SQLAlchemyManager(make_settings().database)
    await migrate.upgrade(db.engine)
    yield db
    await db.dispose()


def spec(name: str, *, critical: bool = True, timeout: float = 1.0) -> CheckSpec:
    return CheckSpec(
        name=name,
        kind="component",
        critical=critical,
        description="test check",
        measurement="status",
        timeout_seconds=timeout,
        affected_endpoints=["GET /api/v1/things"],
        troubleshooting=Troubleshooting("it breaks", "a test", "fix the test", name),
    )


class Fixed(HealthCheck):
    def __init__(self, name: str, status: Status, *, critical: bool = True) -> None:
        self.spec = spec(name, critical=critical)  # type: ignore[misc]
        self.status = status

    async def run(self, context: CheckContext) -> list[CheckOutcome]:
        return [CheckOutcome(self.spec.name, self.status, f"{self.spec.name} is {self.status}")]


class Hangs(HealthCheck):
    spec = spec("hangs", timeout=0.2)

    async def run(self, context: CheckContext) -> list[CheckOutcome]:
        await asyncio.sleep(30)
        return []


class Raises(HealthCheck):
    spec = spec("raises")

    async def run(self, context: CheckContext) -> list[CheckOutcome]:
        raise RuntimeError("a bug in the check")


async def test_validate_runs_the_registered_checks_on_a_healthy_database(
    make_settings: MakeSettings, database: SQLAlchemyManager
) -> None:
    settings = make_settings(providers={"openai_base_url": "http://127.0.0.1:9/v1"})
    validator = DependencyValidator(settings, database, metadata=FakeMetadata(HEALTHY))
    report = await validator.validate()
    checks = {entry.check: entry for entry in report.entries}
    assert set(checks) == {
        "packages",
        "database",
        "schema",
        "redis",
        "providers",
        "configuration",
        "backups",
        "vulnerabilities",
        "encryption-keys",
    }
    assert checks["vulnerabilities"].message.startswith("the vulnerability scanner is off")
    assert checks["encryption-keys"].message == (
        "every stored secret is sealed with the first key (derived)"
    )
    assert checks["configuration"].message.startswith("live reload is off")  # no app state
    assert checks["backups"].message.startswith("no verified backup yet")  # none expected here
    assert checks["database"].status is Status.passed
    assert checks["database"].observed_unit == "ms"
    assert checks["schema"].status is Status.passed
    assert checks["schema"].observed_value == migrate.head_revision()
    assert checks["redis"].message.startswith("not configured")
    assert checks["providers"].status is Status.fail  # nothing listens on port 9
    assert report.ready is True
    assert report.status is Status.warn  # an optional dependency fails: warn, not fail


async def test_a_hung_check_fails_at_its_timeout_and_the_others_still_report(
    settings: Settings, database: SQLAlchemyManager
) -> None:
    checks = [Hangs(), Fixed("ok", Status.passed)]
    validator = DependencyValidator(settings, database, checks=checks)
    report = await validator.validate()
    assert report.entries[1].status is Status.passed
    hung = report.entries[0]
    assert hung.status is Status.fail
    assert hung.message == "no answer within 0.2s"
    assert hung.fix == "fix the test"  # the troubleshooting entry's fix
    assert hung.docs_link == "troubleshooting.md#hangs"
    assert report.status is Status.fail
    assert [e.check for e in report.critical_failures()] == ["hangs"]


async def test_a_broken_check_is_reported_and_does_not_stop_the_others(
    settings: Settings, database: SQLAlchemyManager
) -> None:
    validator = DependencyValidator(
        settings, database, checks=[Raises(), Fixed("ok", Status.passed)]
    )
    report = await validator.validate()
    assert report.entries[0].message == "the check raised RuntimeError"  # never its text
    assert report.entries[1].status is Status.passed


def entry(status: Status, *, critical: bool = True, check: str = "c") -> DependencyEntry:
    return DependencyEntry(
        check=check,
        component_id=f"{check}-1",
        kind="database",
        critical=critical,
        measurement="responseTime",
        status=status,
        message=f"{check} {status}",
        time=datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
        observed_value=2.5,
        observed_unit="ms",
        latency_ms=2.6,
        fix="do this" if status is not Status.passed else None,
        docs_link=f"troubleshooting.md#{check}",
        affected_endpoints=["GET /x"],
    )


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], Status.passed),
        ([(Status.passed, True), (Status.passed, False)], Status.passed),
        ([(Status.passed, True), (Status.warn, True)], Status.warn),
        ([(Status.fail, False), (Status.passed, True)], Status.warn),
        ([(Status.warn, False), (Status.fail, True)], Status.fail),
        ([(Status.fail, True), (Status.fail, False)], Status.fail),
    ],
)
def test_aggregation_rules(statuses: list[tuple[Status, bool]], expected: Status) -> None:
    entries = [entry(status, critical=critical) for status, critical in statuses]
    assert aggregate(entries) is expected
    report = ValidationReport(entries)
    assert report.status is expected
    assert report.ready is (expected is not Status.fail)


def test_health_json_status_only_for_anonymous_and_details_per_ietf_draft() -> None:
    report = ValidationReport(
        [entry(Status.passed, check="database"), entry(Status.fail, critical=False, check="redis")],
        time=datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
        release="9.9.9",
    )
    assert report.health_json(details=False) == {"status": "warn"}
    body = report.health_json(details=True)
    assert body["status"] == "warn"
    assert body["version"] == "1"
    assert body["releaseId"] == "9.9.9"
    assert body["time"] == "2026-11-25T10:00:00Z"
    assert body["output"] == "redis:responseTime redis-1: redis fail"
    passing = body["checks"]["database:responseTime"][0]
    assert passing == {
        "componentId": "database-1",
        "componentType": "datastore",
        "kind": "database",
        "critical": True,
        "status": "pass",
        "time": "2026-11-25T10:00:00Z",
        "output": "database pass",
        "observedValue": 2.5,
        "observedUnit": "ms",
        "links": {"about": "troubleshooting.md#database"},
    }
    failing = body["checks"]["redis:responseTime"][0]
    assert failing["fix"] == "do this"
    assert failing["affectedEndpoints"] == ["GET /x"]


def test_report_dict_log_fields_and_summary() -> None:
    report = ValidationReport([entry(Status.passed, check="a"), entry(Status.fail, check="db")])
    as_dict = report.as_dict()
    assert as_dict["status"] == "fail"
    assert as_dict["entries"][1]["fix"] == "do this"
    fields = report.log_fields()
    assert (fields["checked"], fields["passing"]) == (2, 1)
    assert fields["problems"][0]["check"] == "db"
    assert report.summary() == (
        "  - db (db-1): db fail\n    fix: do this\n    docs: troubleshooting.md#db"
    )


def test_tuning_per_check_beats_global_and_unset_keeps_the_default(
    make_settings: MakeSettings,
) -> None:
    base = PackagesCheck.spec
    settings = make_settings(
        health={"interval_seconds": 2, "checks": {"packages": {"failure_threshold": 7}}}
    )
    changed = tuned(base, settings.health)
    assert changed.interval_seconds == 2
    assert changed.failure_threshold == 7
    assert changed.timeout_seconds == base.timeout_seconds
    assert tuned(base, make_settings().health) is base


def test_tuning_keeps_the_ttl_at_least_one_interval_and_timeout(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(health={"interval_seconds": 600, "ttl_seconds": 5})
    changed = tuned(PackagesCheck.spec, settings.health)
    assert changed.ttl_seconds == 600 + PackagesCheck.spec.timeout_seconds
