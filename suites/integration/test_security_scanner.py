"""The vulnerability scanner in a running backend (SQLite; the scan does not touch the
database): switched on with an OSV database the test writes, it scans at start-up, its
finding shows in /health/dependencies as an optional check (the instance stays ready) and on
/metrics; the launched backend runs under the harness's loopback guard, so any attempt to
reach the network would fail the test."""

from __future__ import annotations

import importlib.metadata
import json
import re
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from packaging.version import Version

from qa.client import ApiClient
from qa.factories import expect
from qa.launcher import LaunchedBackend
from qa.polling import wait_until

PACKAGE = "pydantic-settings"
INSTALLED = importlib.metadata.version(PACKAGE)
FIXED = f"{Version(INSTALLED).major + 1}.0.0"
KEY = "vulnerabilities:count"


def write_database(path: Path) -> Path:
    """A PyPI/all.zip with one advisory affecting the installed version, and one that does not."""
    modified = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    affected = {
        "id": "GHSA-test-live-scan",
        "modified": modified,
        "aliases": ["CVE-2026-9999"],
        "summary": "a test advisory",
        "database_specific": {"severity": "HIGH"},
        "affected": [
            {
                "package": {"ecosystem": "PyPI", "name": PACKAGE},
                "ranges": [
                    {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": FIXED}]}
                ],
            }
        ],
    }
    other = {**affected, "id": "PYSEC-test-old", "aliases": []}
    other["affected"] = [{"package": {"ecosystem": "PyPI", "name": PACKAGE}, "versions": ["0.0.1"]}]
    with zipfile.ZipFile(path, "w") as archive:
        for advisory in (affected, other):
            archive.writestr(f"{advisory['id']}.json", json.dumps(advisory))
    return path


def scanner_entries(admin: ApiClient) -> dict[str, dict[str, Any]]:
    body = expect(admin.get("/health/dependencies"), 200)
    return {entry["componentId"]: entry for entry in body["checks"].get(KEY, [])}


def figure(client: ApiClient, series: str) -> float | None:
    found = re.search(rf"^{re.escape(series)} (\S+)$", client.get("/metrics").text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_the_running_scanner_reports_a_vulnerable_package(tmp_path: Path) -> None:
    database = write_database(tmp_path / "all.zip")
    backend = LaunchedBackend.start(
        "sqlite",
        extra_env={
            "RENUM_SECURITY__SCANNER__ENABLED": "true",
            "RENUM_SECURITY__SCANNER__DATABASE": str(database),
        },
    )
    try:
        with ApiClient(backend.base_url) as client:
            admin = client.login(backend.admin_email, backend.admin_password)
            wait_until(
                lambda: PACKAGE in scanner_entries(admin),
                timeout=60,
                what="the scan's finding in the dependency report",
            )
            entries = scanner_entries(admin)
            finding = entries[PACKAGE]
            assert finding["status"] == "warn"  # high, below the default fail_on (critical)
            assert "GHSA-test-live-scan (CVE-2026-9999), high" in finding["output"]
            assert finding["fix"] == f"python -m pip install '{PACKAGE}>={FIXED}'"
            assert entries["advisory-database"]["status"] == "pass"
            assert entries["advisory-database"]["observedValue"] == 1

            assert expect(admin.get("/health/dependencies"), 200)["status"] == "warn"
            assert client.get("/health/ready").status_code == 200  # optional: still ready
            assert figure(admin, 'renum_security_vulnerabilities{severity="high"}') == 1.0
            assert figure(admin, 'renum_security_vulnerabilities{severity="critical"}') == 0.0
            age = figure(admin, "renum_security_database_age_seconds")
            assert age is not None
            assert 3600 < age < 4 * 3600
    finally:
        backend.stop()
