"""The offline vulnerability scanner: an OSV database written by the test (as a directory and
as a zip, like the published PyPI export) against the packages really installed here; range
and severity rules; what the dependency check, /metrics and `renum security scan` say for a
vulnerable, clean, stale, missing or damaged database; and the CycloneDX SBOM. No test may
open a network connection: the scanner reads files only, and a guard fails any attempt."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import math
import os
import re
import socket
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packaging.version import Version
from pydantic import ValidationError
from starlette.datastructures import State
from typer.testing import CliRunner

from app.capabilities.health import CheckContext, Status
from app.capabilities.health.registry import registered_checks
from app.capabilities.security import (
    SecurityManager,
    Severity,
    Verdict,
    VulnerabilityScanner,
    installed_distributions,
    parse_advisory,
    sbom_json,
    scan,
)
from app.capabilities.security.advisories import Affected, cvss_severity
from app.capabilities.security.checks import VulnerabilityCheck
from app.cli import cli
from app.core.config import ScannerSettings, SecuritySettings, Settings
from app.core.metrics import Metrics
from app.core.profiles import profile_value

runner = CliRunner()

# A real installed dependency, named in the advisory as its author might spell it: the match
# must normalise it (PEP 503) to the installed `pydantic-settings`.
PACKAGE = "pydantic-settings"
SPELLED = "Pydantic_Settings"
INSTALLED = importlib.metadata.version(PACKAGE)
FIXED = f"{Version(INSTALLED).major + 1}.0.0"
# Another one, affected through an explicit `versions` list.
LISTED_PACKAGE = "typer"
LISTED_VERSION = importlib.metadata.version(LISTED_PACKAGE)
CRITICAL_CVSS = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"  # 9.8


def now() -> datetime:
    return datetime.now(UTC)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def advisory(
    osv_id: str,
    name: str,
    *,
    events: list[dict[str, str]] | None = None,
    versions: list[str] | None = None,
    modified: datetime | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An OSV advisory as the PyPI export holds them."""
    affected: dict[str, Any] = {"package": {"ecosystem": "PyPI", "name": name}}
    if events is not None:
        affected["ranges"] = [{"type": "ECOSYSTEM", "events": events}]
    if versions is not None:
        affected["versions"] = versions
    return {
        "schema_version": "1.6.0",
        "id": osv_id,
        "modified": stamp(modified or now() - timedelta(hours=6)),
        "published": "2026-01-01T00:00:00Z",
        "summary": f"{osv_id}: a test advisory",
        "affected": [affected],
        **extra,
    }


def standard_advisories(modified: datetime | None = None) -> list[dict[str, Any]]:
    """The installed version affected (with aliases and a fix); a version not installed; a
    withdrawn one; one through a versions list; another ecosystem; a package not installed."""
    when = {"modified": modified} if modified else {}
    return [
        advisory(
            "GHSA-aaaa-bbbb-cccc",
            SPELLED,
            events=[{"introduced": "0"}, {"fixed": FIXED}],
            aliases=["CVE-2026-1111", "PYSEC-2026-11"],
            database_specific={"severity": "HIGH"},
            **when,
        ),
        advisory(
            "PYSEC-2026-22",
            PACKAGE,
            events=[{"introduced": "0"}, {"fixed": "0.0.1"}],
            database_specific={"severity": "CRITICAL"},
            **when,
        ),
        advisory(
            "GHSA-wwww-wwww-wwww",
            PACKAGE,
            events=[{"introduced": "0"}],
            withdrawn="2026-02-01T00:00:00Z",
            **when,
        ),
        advisory(
            "PYSEC-2026-33",
            LISTED_PACKAGE,
            versions=["0.0.1", LISTED_VERSION],
            severity=[{"type": "CVSS_V3", "score": CRITICAL_CVSS}],
            **when,
        ),
        {
            **advisory("GHSA-npmx-npmx-npmx", PACKAGE, events=[{"introduced": "0"}], **when),
            "affected": [
                {
                    "package": {"ecosystem": "npm", "name": PACKAGE},
                    "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}]}],
                }
            ],
        },
        advisory(
            "PYSEC-2026-44", "surely-not-installed-here", events=[{"introduced": "0"}], **when
        ),
    ]


def write_database(
    where: Path, form: str, advisories: list[dict[str, Any]], raw: dict[str, bytes] | None = None
) -> Path:
    """The advisories as one `<ID>.json` each: in a directory, or in a zip like PyPI/all.zip."""
    files = {f"{a['id']}.json": json.dumps(a).encode() for a in advisories} | (raw or {})
    if form == "dir":
        directory = where / "osv"
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (directory / name).write_bytes(content)
        return directory
    where.mkdir(parents=True, exist_ok=True)
    path = where / "all.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return path


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any connection or name lookup fails the test: the scanner must read files only."""
    attempts: list[str] = []

    def refused(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args))
        raise AssertionError(f"the scanner attempted network access: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refused)
    monkeypatch.setattr(socket.socket, "connect_ex", refused)
    monkeypatch.setattr(socket, "getaddrinfo", refused)
    monkeypatch.setattr(socket, "create_connection", refused)
    return attempts


@pytest.fixture(params=["dir", "zip"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return write_database(tmp_path, request.param, standard_advisories())


def scanner_settings(database: Path | None, **values: Any) -> ScannerSettings:
    return ScannerSettings(enabled=True, database=database, **values)


# --- matching ------------------------------------------------------------------------------


def test_the_installed_versions_are_matched_with_names_normalised(
    database: Path, no_network: list[str]
) -> None:
    result = scan(database)
    assert result.problem is None
    assert result.unreadable == ()
    assert result.advisories == 6
    assert result.withdrawn == 1
    assert result.packages == len(installed_distributions()) > 10
    by_id = {f.advisory: f for f in result.findings}
    assert set(by_id) == {"GHSA-aaaa-bbbb-cccc", "PYSEC-2026-33"}

    ranged = by_id["GHSA-aaaa-bbbb-cccc"]
    assert (ranged.package, ranged.version) == (PACKAGE, INSTALLED)
    assert ranged.aliases == ("CVE-2026-1111", "PYSEC-2026-11")
    assert ranged.severity is Severity.high
    assert ranged.fixed == FIXED
    assert ranged.upgrade == f"python -m pip install '{PACKAGE}>={FIXED}'"

    listed = by_id["PYSEC-2026-33"]
    assert (listed.package, listed.version) == (LISTED_PACKAGE, LISTED_VERSION)
    assert listed.severity is Severity.critical  # from the CVSS vector
    assert listed.fixed is None
    assert listed.upgrade is None

    assert result.verdict("critical", 7, now()) is Verdict.failing
    assert result.verdict("never", 7, now()) is Verdict.vulnerable
    assert result.counts()[Severity.high] == 1
    assert result.counts()[Severity.critical] == 1
    assert no_network == []


def test_the_same_vulnerability_under_two_ids_is_one_finding(tmp_path: Path) -> None:
    both = [
        advisory(
            "GHSA-dddd-eeee-ffff",
            PACKAGE,
            events=[{"introduced": "0"}, {"fixed": FIXED}],
            aliases=["CVE-2026-2222"],
            database_specific={"severity": "MODERATE"},
        ),
        advisory(
            "PYSEC-2026-55",
            PACKAGE,
            events=[{"introduced": "0"}, {"fixed": f"{FIXED}.post1"}],
            aliases=["CVE-2026-2222", "GHSA-dddd-eeee-ffff"],
            severity=[{"type": "CVSS_V3", "score": CRITICAL_CVSS}],
        ),
    ]
    (finding,) = scan(write_database(tmp_path, "zip", both)).findings
    assert finding.advisory == "GHSA-dddd-eeee-ffff"
    assert finding.aliases == ("CVE-2026-2222", "PYSEC-2026-55")
    assert finding.severity is Severity.critical  # the higher of the two
    assert finding.fixed == f"{FIXED}.post1"  # the fix that satisfies both


@pytest.mark.parametrize(
    ("events", "versions", "installed", "fixed"),
    [
        ([{"introduced": "0"}, {"fixed": "2.0"}], [], "1.5", "2.0"),
        ([{"introduced": "0"}, {"fixed": "2.0"}], [], "2.0", None),
        ([{"introduced": "1.0"}, {"fixed": "2.0"}], [], "0.9", None),
        ([{"introduced": "1.0"}, {"last_affected": "1.4"}], [], "1.4", "none"),
        ([{"introduced": "1.0"}, {"last_affected": "1.4"}], [], "1.4.1", None),
        # Two affected stretches: 1.x until 1.2, 2.x until 2.3; the fix is the next one above.
        (
            [{"introduced": "1.0"}, {"fixed": "1.2"}, {"introduced": "2.0"}, {"fixed": "2.3"}],
            [],
            "2.1",
            "2.3",
        ),
        (
            [{"introduced": "1.0"}, {"fixed": "1.2"}, {"introduced": "2.0"}, {"fixed": "2.3"}],
            [],
            "1.5",
            None,
        ),
        ([{"introduced": "0"}, {"fixed": "1.0rc1"}], [], "1.0b2", "1.0rc1"),  # pre-releases order
        ([{"introduced": "0"}, {"fixed": "not a version"}], [], "1.0", "none"),
        ([], ["1.0", "1.1"], "1.1", "none"),
        ([], ["1.0", "1.1"], "1.1.0", "none"),  # PEP 440: 1.1 == 1.1.0
        ([], ["1.0", "1.1"], "1.2", None),
        ([], ["weird-1"], "weird-1", "none"),  # a version PEP 440 cannot read, listed as is
    ],
)
def test_ranges_and_version_lists_follow_the_osv_rules(
    events: list[dict[str, str]], versions: list[str], installed: str, fixed: str | None
) -> None:
    affected = Affected("pkg", ((*events,),) if events else (), frozenset(versions))
    match = affected.match(installed)
    if fixed is None:
        assert match is None
    else:
        assert match is not None
        assert match.fixed == (None if fixed == "none" else fixed)


def test_git_ranges_and_other_ecosystems_are_not_matched() -> None:
    parsed = parse_advisory(
        {
            "id": "OSV-1",
            "affected": [
                {
                    "package": {"ecosystem": "PyPI", "name": "pkg"},
                    "ranges": [{"type": "GIT", "events": [{"introduced": "0"}]}],
                },
                {"package": {"ecosystem": "Go", "name": "pkg"}, "versions": ["1.0"]},
            ],
        }
    )
    assert parsed is not None
    assert parsed.matches("pkg", "1.0") is None


@pytest.mark.parametrize(
    ("document", "severity"),
    [
        ({"database_specific": {"severity": "MODERATE"}}, Severity.moderate),
        ({"database_specific": {"severity": "medium"}}, Severity.moderate),
        ({"database_specific": {"severity": "LOW"}}, Severity.low),
        ({"severity": [{"type": "CVSS_V3", "score": CRITICAL_CVSS}]}, Severity.critical),
        (
            {
                "severity": [
                    {"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:H/PR:L/UI:R/S:U/C:L/I:N/A:N"}
                ]
            },
            Severity.low,
        ),
        (
            {
                "severity": [
                    {
                        "type": "CVSS_V4",
                        "score": "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N",
                    }
                ]
            },
            Severity.critical,
        ),
        ({"severity": [{"type": "CVSS_V2", "score": "AV:N/AC:L/Au:N/C:P/I:P/A:P"}]}, Severity.high),
        # The reviewed rating wins over the vector.
        (
            {
                "database_specific": {"severity": "LOW"},
                "severity": [{"type": "CVSS_V3", "score": CRITICAL_CVSS}],
            },
            Severity.low,
        ),
        ({"severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/garbage"}]}, Severity.unknown),
        ({"severity": [{"type": "Ubuntu", "score": "high"}]}, Severity.unknown),
        ({"database_specific": {"severity": "UNRATED"}}, Severity.unknown),
        ({}, Severity.unknown),
    ],
)
def test_severity_comes_from_the_rating_or_the_cvss_vector(
    document: dict[str, Any], severity: Severity
) -> None:
    parsed = parse_advisory({"id": "OSV-2", **document})
    assert parsed is not None
    assert parsed.severity is severity


def test_cvss_types_without_a_calculator_stay_unknown() -> None:
    assert cvss_severity("CVSS_V5", "anything") is Severity.unknown


# --- databases that cannot be trusted ------------------------------------------------------


@pytest.mark.parametrize("form", ["dir", "zip"])
def test_a_stale_database_still_reports_what_it_knows_but_never_a_clean_result(
    tmp_path: Path, form: str
) -> None:
    old = now() - timedelta(days=30)
    path = write_database(tmp_path, form, standard_advisories(modified=old))
    result = scan(path)
    assert len(result.findings) == 2
    age = result.age_seconds(now())
    assert age is not None
    assert 29.9 < age / 86400 < 30.1
    (doubt,) = result.doubts(7, now())
    assert "stale" in doubt
    assert "30.0 days ago" in doubt
    assert result.verdict("critical", 7, now()) is Verdict.failing  # findings still count
    assert result.verdict("critical", 60, now()) is Verdict.failing

    clean = scan(path, installed=[])
    assert clean.verdict("critical", 7, now()) is Verdict.unknown
    assert clean.verdict("critical", 60, now()) is Verdict.clean


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda tmp: None, "no advisory database is configured"),
        (lambda tmp: tmp / "missing.zip", "does not exist"),
        (lambda tmp: _written(tmp / "plain.zip", b"not a zip"), "neither a directory nor a zip"),
    ],
)
def test_a_missing_or_unreadable_database_means_unknown(
    tmp_path: Path, make: Any, said: str
) -> None:
    result = scan(make(tmp_path))
    assert said in (result.problem or "")
    assert result.findings == ()
    assert result.doubts(7, now()) == [result.problem]
    assert result.verdict("critical", 7, now()) is Verdict.unknown


def _written(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("form", ["dir", "zip"])
def test_corrupt_entries_are_reported_and_the_rest_is_read(tmp_path: Path, form: str) -> None:
    raw = {
        "PYSEC-2026-broken.json": b'{"id": "PYSEC-2026-broken", "affected": [',
        "not-an-advisory.json": b'["a list"]',
        "latin1.json": b'{"id": "\xff"}',
    }
    path = write_database(tmp_path, form, standard_advisories(), raw)
    result = scan(path)
    assert {f.advisory for f in result.findings} == {"GHSA-aaaa-bbbb-cccc", "PYSEC-2026-33"}
    assert sorted(line.split(":")[0] for line in result.unreadable) == [
        "PYSEC-2026-broken.json",
        "latin1.json",
        "not-an-advisory.json",
    ]
    clean = scan(path, installed=[])
    (doubt,) = clean.doubts(7, now())
    assert doubt.startswith("3 advisories could not be read (")
    assert clean.verdict("critical", 7, now()) is Verdict.unknown


def test_an_empty_database_or_one_without_dates_is_unknown(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no advisory" in scan(empty).doubts(7, now())[0]
    undated = advisory("PYSEC-2026-66", "surely-not-installed-here", events=[])
    del undated["modified"]
    path = write_database(tmp_path, "zip", [undated])
    assert "age is unknown" in scan(path).doubts(7, now())[0]


def test_an_oversized_entry_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.capabilities.security import advisories

    monkeypatch.setattr(advisories, "MAX_ADVISORY_BYTES", 100)
    big = advisory("PYSEC-2026-77", PACKAGE, events=[{"introduced": "0"}], details="x" * 500)
    for form in ("dir", "zip"):
        result = scan(write_database(tmp_path / form, form, [big]))
        assert result.findings == ()
        assert result.unreadable == ("PYSEC-2026-77.json: larger than 100 bytes",)


def test_links_devices_and_pipes_in_the_directory_are_never_opened(tmp_path: Path) -> None:
    """A link to /dev/zero would fill the memory and a pipe would hang the scan for ever."""
    path = write_database(tmp_path, "dir", standard_advisories())
    (path / "zero.json").symlink_to("/dev/zero")
    (path / "linked.json").symlink_to(next(path.glob("GHSA-*.json")))
    os.mkfifo(path / "pipe.json")
    result = scan(path)
    assert {f.advisory for f in result.findings} == {"GHSA-aaaa-bbbb-cccc", "PYSEC-2026-33"}
    assert sorted(result.unreadable) == [
        "linked.json: a symbolic link",
        "pipe.json: not a regular file",
        "zero.json: a symbolic link",
    ]
    assert result.verdict("critical", 7, now()) is not Verdict.clean


def _damaged_zips(where: Path) -> dict[str, Path]:
    """Zips with one sound advisory and one entry that cannot be decompressed: corrupt
    deflate data, an unknown compression method, an encrypted entry."""
    sound = {f"{a['id']}.json": json.dumps(a).encode() for a in standard_advisories()}
    made = {}
    for kind in ("corrupt", "method", "encrypted"):
        path = where / f"{kind}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, content in sound.items():
                archive.writestr(name, content)
            archive.writestr("bad.json", json.dumps(advisory("PYSEC-2026-90", PACKAGE)) * 20)
        data = bytearray(path.read_bytes())
        header = data.rfind(b"PK\x03\x04", 0, data.find(b"bad.json") + 1)
        central = data.rfind(b"PK\x01\x02", 0, data.rfind(b"bad.json") + 1)
        if kind == "corrupt":
            start = data.find(b"bad.json") + len(b"bad.json")
            data[start : start + 16] = b"\xff" * 16
        elif kind == "method":
            for at in (header + 8, central + 10):
                data[at : at + 2] = (99).to_bytes(2, "little")
        else:
            for at in (header + 6, central + 8):
                data[at] |= 1  # the encrypted flag
        path.write_bytes(bytes(data))
        made[kind] = path
    return made


def test_a_damaged_zip_entry_is_reported_and_the_rest_is_read(tmp_path: Path) -> None:
    for kind, path in _damaged_zips(tmp_path).items():
        result = scan(path)
        assert result.problem is None, kind
        assert {f.advisory for f in result.findings} == {
            "GHSA-aaaa-bbbb-cccc", "PYSEC-2026-33"
        }, kind  # fmt: skip
        assert [line.split(":")[0] for line in result.unreadable] == ["bad.json"], kind
        assert result.verdict("critical", 7, now()) is not Verdict.clean


def test_what_the_database_says_reaches_the_terminal_without_control_characters(
    tmp_path: Path,
) -> None:
    hostile = advisory("GHSA-hostile-text", PACKAGE, events=[{"introduced": "0"}])
    hostile["summary"] = "ok\x1b[2J\x1b]0;owned\x07 done"
    hostile["aliases"] = ["CVE-2026-1\x1b[31m"]
    raw = {"name\x1b[5m.json": b"not json"}
    result = scan(write_database(tmp_path, "zip", [hostile], raw))
    [finding] = result.findings
    assert finding.summary == "ok?[2J?]0;owned? done"
    assert finding.aliases == ("CVE-2026-1?[31m",)
    assert all(line.isprintable() for line in result.unreadable)


def test_an_advisory_dated_in_the_future_does_not_make_an_old_database_current(
    tmp_path: Path,
) -> None:
    old = [
        advisory("PYSEC-2020-1", "surely-not-installed-here", modified=now() - timedelta(days=90))
    ]
    forged = advisory(
        "PYSEC-2099-1", "surely-not-installed-here", modified=datetime(2099, 1, 1, tzinfo=UTC)
    )
    result = scan(write_database(tmp_path, "dir", [*old, forged]), installed=[])
    assert result.unreadable == (
        "PYSEC-2099-1.json: modified in the future (2099-01-01T00:00:00+00:00)",
    )
    assert result.verdict("critical", 7, now()) is Verdict.unknown  # 90 days old: stale


# --- the dependency check ------------------------------------------------------------------


def check_settings(make_settings: Any, database: Path | None, **scanner: Any) -> Settings:
    section = {"enabled": True, "database": database, **scanner}
    settings: Settings = make_settings(security={"scanner": section})
    return settings


async def run_check(settings: Settings, state: State | None = None) -> list[Any]:
    context = CheckContext(settings=settings, database=None, state=state)  # type: ignore[arg-type]  # the check never touches the database
    return await VulnerabilityCheck().run(context)


def test_the_check_is_registered_optional_and_documented() -> None:
    (spec,) = [s for s in registered_checks() if s.name == "vulnerabilities"]
    assert spec.critical is False
    assert spec.key == "vulnerabilities:count"
    assert spec.troubleshooting is not None
    assert "renum security scan" in spec.troubleshooting.fix


@pytest.mark.anyio
async def test_the_check_fails_on_critical_and_warns_below(
    make_settings: Any, tmp_path: Path
) -> None:
    path = write_database(tmp_path, "zip", standard_advisories())
    database, *packages = await run_check(check_settings(make_settings, path))
    assert database.status is Status.passed
    assert database.observed_value == 2
    by_package = {o.component_id: o for o in packages}
    assert by_package[PACKAGE].status is Status.warn  # high, below fail_on=critical
    assert "GHSA-aaaa-bbbb-cccc (CVE-2026-1111, PYSEC-2026-11), high" in by_package[PACKAGE].message
    assert by_package[PACKAGE].fix == f"python -m pip install '{PACKAGE}>={FIXED}'"
    assert by_package[LISTED_PACKAGE].status is Status.fail  # critical
    assert "no fixed version is published" in (by_package[LISTED_PACKAGE].fix or "")

    high = await run_check(check_settings(make_settings, path, fail_on="high"))
    assert {o.component_id: o.status for o in high[1:]} == {
        PACKAGE: Status.fail,
        LISTED_PACKAGE: Status.fail,
    }
    never = await run_check(check_settings(make_settings, path, fail_on="never"))
    assert {o.status for o in never[1:]} == {Status.warn}


@pytest.mark.anyio
async def test_the_check_passes_only_on_a_clean_fresh_database(
    make_settings: Any, tmp_path: Path
) -> None:
    clean = [advisory("PYSEC-2026-44", "surely-not-installed-here", events=[{"introduced": "0"}])]
    path = write_database(tmp_path, "dir", clean)
    (outcome,) = await run_check(check_settings(make_settings, path))
    assert outcome.status is Status.passed
    assert outcome.message.startswith("no known vulnerability among")
    assert outcome.observed_value == 0


@pytest.mark.anyio
async def test_the_check_warns_that_the_result_is_unknown(
    make_settings: Any, tmp_path: Path
) -> None:
    stale_path = write_database(
        tmp_path,
        "zip",
        [advisory("PYSEC-1", "surely-not-installed-here", modified=now() - timedelta(days=8))],
    )
    for database in (None, tmp_path / "missing", stale_path):
        (outcome,) = await run_check(check_settings(make_settings, database))
        assert outcome.status is Status.warn, database
        assert outcome.message.startswith("the result is unknown: ")
        assert outcome.fix is not None
    (missing,) = await run_check(check_settings(make_settings, tmp_path / "missing"))
    assert missing.observed_value is None  # not "0 vulnerabilities"


@pytest.mark.anyio
async def test_the_check_when_the_scanner_is_off(make_settings: Any) -> None:
    for section in (
        {"scanner": {"enabled": False}},
        {"enabled": False, "scanner": {"enabled": True}},
    ):
        (outcome,) = await run_check(make_settings(security=section))
        assert outcome.status is Status.passed
        assert "scanner is off" in outcome.message


@pytest.mark.anyio
async def test_in_a_server_the_check_reads_the_scanners_result(
    make_settings: Any, tmp_path: Path
) -> None:
    path = write_database(tmp_path, "zip", standard_advisories())
    settings = check_settings(make_settings, path)
    state = State()
    (before,) = await run_check(settings, state)  # the capability has not started yet
    assert before.status is Status.warn
    assert "has not finished" in before.message

    refreshed: list[str] = []

    async def refresh() -> None:
        refreshed.append("report")

    manager = SecurityManager(settings.security, Metrics("test", "test"), refresh)
    state.security = manager
    (waiting,) = await run_check(settings, state)
    assert "has not finished" in waiting.message
    assert manager.scanner is not None
    await manager.scanner.tick()
    assert refreshed == ["report"]
    outcomes = await run_check(settings, state)
    assert [o.component_id for o in outcomes] == ["advisory-database", PACKAGE, LISTED_PACKAGE]
    path.unlink()  # the server reports its last scan, not the file as it is now
    assert len(await run_check(settings, state)) == 3


# --- the scanner in the server and its figures ---------------------------------------------


def figures(metrics: Metrics) -> dict[str, float]:
    text = metrics.exposition().decode()
    return {
        key: float(value)
        for key, value in re.findall(r"^(renum_security_\S+) (\S+)$", text, re.MULTILINE)
    }


@pytest.mark.anyio
async def test_the_scanner_runs_in_the_background_and_counts_on_metrics(tmp_path: Path) -> None:
    path = write_database(tmp_path, "dir", standard_advisories())
    metrics = Metrics("test", "test")
    manager = SecurityManager(
        SecuritySettings(scanner=scanner_settings(path, interval_hours=24)), metrics
    )
    scanner = manager.scanner
    assert isinstance(scanner, VulnerabilityScanner)
    before = figures(metrics)
    assert math.isnan(before['renum_security_vulnerabilities{severity="high"}'])
    assert math.isnan(before["renum_security_last_scan_timestamp_seconds"])

    manager.start()  # the first scan runs at once
    try:
        for _ in range(200):
            if scanner.status is not None:
                break
            await asyncio.sleep(0.05)
        assert scanner.status is not None
    finally:
        await manager.stop()
    after = figures(metrics)
    assert after['renum_security_vulnerabilities{severity="high"}'] == 1
    assert after['renum_security_vulnerabilities{severity="critical"}'] == 1
    assert after['renum_security_vulnerabilities{severity="low"}'] == 0
    assert after['renum_security_vulnerabilities{severity="unknown"}'] == 0
    assert 0 < after["renum_security_database_age_seconds"] < 86400
    assert after["renum_security_last_scan_timestamp_seconds"] > 0

    path.rename(tmp_path / "gone")
    await scanner.tick()
    gone = figures(metrics)
    assert math.isnan(gone['renum_security_vulnerabilities{severity="high"}'])  # not "0"
    assert math.isnan(gone["renum_security_database_age_seconds"])


def test_the_manager_holds_no_scanner_when_it_is_off() -> None:
    manager = SecurityManager(SecuritySettings(), Metrics("test", "test"))
    assert manager.scanner is None
    manager.start()  # nothing to start


# --- settings and profiles -----------------------------------------------------------------


def test_the_scanner_is_off_in_development_and_test_and_on_in_staging_and_production() -> None:
    assert ScannerSettings().enabled is False
    for environment, on in (
        ("development", None),
        ("test", None),
        ("staging", True),
        ("production", True),
    ):
        assert profile_value(environment, "security.scanner.enabled") is on, environment
    assert Settings(environment="production").security.scanner.enabled is True
    assert Settings(environment="development").security.scanner.enabled is False


@pytest.mark.parametrize(
    "values",
    [
        {"database": "relative/all.zip"},
        {"database": "/srv/a\nb"},
        {"max_age_days": 0},
        {"interval_hours": 0},
        {"fail_on": "severe"},
    ],
)
def test_scanner_settings_are_checked(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ScannerSettings(**values)


# --- the command line ----------------------------------------------------------------------


def test_scan_exit_codes_and_readable_output(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    vulnerable = write_database(tmp_path / "v", "zip", standard_advisories())
    monkeypatch.setenv("RENUM_SECURITY__SCANNER__DATABASE", str(vulnerable))
    found = runner.invoke(cli, ["security", "scan"])
    assert found.exit_code == 1, found.output
    lines = found.stdout.splitlines()
    assert (
        f"{PACKAGE} {INSTALLED}: GHSA-aaaa-bbbb-cccc (CVE-2026-1111, PYSEC-2026-11), severity "
        "high - GHSA-aaaa-bbbb-cccc: a test advisory"
    ) in lines
    assert f"  fixed in {FIXED}: python -m pip install '{PACKAGE}>={FIXED}'" in lines
    assert f"{LISTED_PACKAGE} {LISTED_VERSION}: PYSEC-2026-33, severity critical" in "\n".join(
        lines
    )
    assert "  no fixed version is published: remove or replace the package" in lines
    assert lines[-1] == (
        "Known vulnerabilities: 2, 1 of them critical or above (RENUM_SECURITY__SCANNER__FAIL_ON)."
    )
    monkeypatch.setenv("RENUM_SECURITY__SCANNER__FAIL_ON", "never")
    below = runner.invoke(cli, ["security", "scan"])
    assert below.exit_code == 1
    assert below.stdout.splitlines()[-1] == "Known vulnerabilities: 2."
    monkeypatch.delenv("RENUM_SECURITY__SCANNER__FAIL_ON")

    clean = write_database(
        tmp_path / "c", "dir", [advisory("PYSEC-1", "surely-not-installed-here")]
    )
    ok = runner.invoke(cli, ["security", "scan", "--database", str(clean)])
    assert ok.exit_code == 0, ok.output
    assert "No known vulnerability among" in ok.stdout

    missing = runner.invoke(cli, ["security", "scan", "--database", str(tmp_path / "none")])
    assert missing.exit_code == 2
    assert "does not exist" in missing.stderr
    assert "Could not check" in missing.stdout

    monkeypatch.delenv("RENUM_SECURITY__SCANNER__DATABASE")
    unset = runner.invoke(cli, ["security", "scan"])
    assert unset.exit_code == 2
    assert "RENUM_SECURITY__SCANNER__DATABASE" in unset.stderr

    stale = write_database(
        tmp_path / "s",
        "zip",
        [advisory("PYSEC-1", "surely-not-installed-here", modified=now() - timedelta(days=9))],
    )
    old = runner.invoke(cli, ["security", "scan", "--database", str(stale)])
    assert old.exit_code == 2
    assert "stale" in old.stderr
    monkeypatch.setenv("RENUM_SECURITY__SCANNER__MAX_AGE_DAYS", "10")
    assert runner.invoke(cli, ["security", "scan", "--database", str(stale)]).exit_code == 0


def test_scan_json(tmp_path: Path) -> None:
    path = write_database(tmp_path, "dir", standard_advisories())
    result = runner.invoke(cli, ["security", "scan", "--json", "--database", str(path)])
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert body["verdict"] == "failing"
    assert body["doubts"] == []
    assert body["database"]["path"] == str(path)
    assert body["database"]["advisories"] == 6
    assert body["database"]["withdrawn"] == 1
    assert body["database"]["age_days"] < 1
    finding = next(f for f in body["findings"] if f["package"] == PACKAGE)
    assert finding == {
        "package": PACKAGE,
        "version": INSTALLED,
        "advisory": "GHSA-aaaa-bbbb-cccc",
        "aliases": ["CVE-2026-1111", "PYSEC-2026-11"],
        "severity": "high",
        "summary": "GHSA-aaaa-bbbb-cccc: a test advisory",
        "fixed": FIXED,
        "upgrade": f"python -m pip install '{PACKAGE}>={FIXED}'",
    }
    missing = runner.invoke(cli, ["security", "scan", "--json", "--database", "/nonexistent"])
    assert missing.exit_code == 2
    assert json.loads(missing.stdout)["verdict"] == "unknown"


# --- the SBOM ------------------------------------------------------------------------------


def test_the_sbom_is_valid_cyclonedx_of_the_installed_environment(tmp_path: Path) -> None:
    printed = runner.invoke(cli, ["security", "sbom"])
    assert printed.exit_code == 0, printed.output
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(printed.stdout) is None
    bom = json.loads(printed.stdout)
    assert bom["bomFormat"] == "CycloneDX"
    assert bom["specVersion"] == "1.6"
    assert bom["serialNumber"].startswith("urn:uuid:")
    assert bom["metadata"]["component"]["name"] == "renum"
    components = {c["name"].lower(): c for c in bom["components"]}
    assert len(components) == len(installed_distributions()) - 1  # renum is the application
    ours = components[PACKAGE]
    assert ours["purl"] == f"pkg:pypi/{PACKAGE}@{INSTALLED}"
    assert ours["version"] == INSTALLED
    assert all(re.fullmatch(r"pkg:pypi/[a-z0-9.-]+@\S+", c["purl"]) for c in bom["components"])
    graph = {d["ref"]: set(d.get("dependsOn", [])) for d in bom["dependencies"]}
    fastapi = components["fastapi"]["bom-ref"]
    assert fastapi in graph[bom["metadata"]["component"]["bom-ref"]]
    assert any(ref.startswith("pkg:pypi/starlette@") for ref in graph[fastapi])

    target = tmp_path / "sbom.json"
    written = runner.invoke(cli, ["security", "sbom", "--output", str(target)])
    assert written.exit_code == 0
    assert json.loads(target.read_text())["specVersion"] == "1.6"
    refused = runner.invoke(cli, ["security", "sbom", "-o", str(tmp_path / "no" / "such.json")])
    assert refused.exit_code == 2
    assert "Cannot write the SBOM" in refused.stderr


def test_the_sbom_of_given_distributions_reads_their_licences() -> None:
    wanted = {"fastapi", "starlette", "pydantic-settings"}
    chosen = [
        d
        for d in importlib.metadata.distributions()
        if d.metadata["Name"] and d.metadata["Name"].lower() in wanted
    ]
    bom = json.loads(sbom_json(chosen))
    assert {c["name"].lower() for c in bom["components"]} == wanted
    licensed = [c for c in bom["components"] if c.get("licenses")]
    assert licensed, "at least one of them declares its licence"
    # Without renum's own metadata, the application depends on the top of the graph.
    graph = {d["ref"]: set(d.get("dependsOn", [])) for d in bom["dependencies"]}
    tops = {ref.split("@")[0] for ref in graph[bom["metadata"]["component"]["bom-ref"]]}
    assert tops == {"pkg:pypi/fastapi", "pkg:pypi/pydantic-settings"}  # starlette: fastapi's


class Alerts:
    """An alert reporter that keeps what it was told, in order."""

    def __init__(self) -> None:
        self.told: list[tuple[str, str, str]] = []

    async def report(self, source: str, severity: str, message: str, *, labels: Any = None) -> None:
        self.told.append((source, severity, message))

    async def clear(self, source: str, *, labels: Any = None) -> None:
        self.told.append((source, "cleared", ""))


@pytest.mark.anyio
async def test_a_scan_alerts_while_it_is_not_clean_and_clears_once_it_is(tmp_path: Path) -> None:
    path = write_database(tmp_path, "dir", standard_advisories())
    alerts = Alerts()
    scanner = VulnerabilityScanner(
        scanner_settings(path, fail_on="critical"),
        Metrics("test", "test"),
        alerts=lambda: alerts,
    )
    await scanner.tick()
    source, severity, message = alerts.told[-1]
    assert (source, severity) == ("vulnerabilities", "critical")
    assert scanner.status is not None
    assert f"{len(scanner.status.findings)} known vulnerabilities" in message
    assert "renum security scan" in message
    scanner.settings = scanner_settings(path, fail_on="never")
    await scanner.tick()
    assert alerts.told[-1][1] == "warning"  # found, below the failing severity
    path.rename(tmp_path / "gone")
    await scanner.tick()
    assert alerts.told[-1][1] == "warning"
    assert "cannot rule anything out" in alerts.told[-1][2]
    nothing_installed = [
        advisory("PYSEC-2026-44", "surely-not-installed-here", events=[{"introduced": "0"}])
    ]
    clean = write_database(tmp_path / "clean", "dir", nothing_installed)
    scanner.settings = scanner_settings(clean)
    await scanner.tick()
    assert alerts.told[-1] == ("vulnerabilities", "cleared", "")
