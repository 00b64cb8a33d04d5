"""The backups capability in a running backend (SQLite, the database it covers): the scheduled
backup taken and verified by the server, its figures on /metrics, its entry in the dependency
report, the catalogue shared with `renum backup`, and an alert while the last verification
failed, cleared once a new backup passes."""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from integration_support import Cli, cli_env

from app.capabilities.backups.replication import ReplicationError, restore_replica
from qa.client import ApiClient
from qa.factories import DEFAULT_PASSWORD, expect, unique_email, unique_name
from qa.launcher import LaunchedBackend
from qa.polling import wait_until

# A long scenario: run by `nox -s drills`, not the default run (qa.plugin's DRILL).
pytestmark = pytest.mark.drill

ALERTS = "/api/v1/ops/alerts"


def figure(client: ApiClient, name: str) -> float | None:
    found = re.search(rf"^{name} (\S+)$", client.get("/metrics").text, re.MULTILINE)
    return float(found.group(1)) if found else None


def backups_entry(admin: ApiClient) -> dict[str, Any]:
    (entry,) = expect(admin.get("/health/dependencies"), 200)["checks"]["backups:age"]
    return dict(entry)


def backups_alert(admin: ApiClient) -> dict[str, Any] | None:
    body = expect(admin.get(ALERTS), 200)
    for alert in body["active"]:
        if alert["rule"] == "reported:backups":
            return dict(alert)
    return None


def test_the_server_takes_watches_and_alerts_on_its_backups() -> None:
    backend = LaunchedBackend.start(
        "sqlite",
        extra_env={
            "RENUM_BACKUPS__EVERY_HOURS": "24",
            "RENUM_BACKUPS__CHECK_SECONDS": "0.2",
            "RENUM_HEALTH__CHECKS": json.dumps({"backups": {"interval_seconds": 0.2}}),
        },
    )
    try:
        database = backend.sqlite_file
        renum = Cli(
            cli_env(RENUM_DATABASE__URL=backend.env["RENUM_DATABASE__URL"]), database.parent
        )
        with ApiClient(backend.base_url) as client:
            admin = client.login(backend.admin_email, backend.admin_password)
            wait_until(
                lambda: figure(admin, "renum_backup_last_verification_success") == 1.0,
                timeout=30,
                what="the scheduled backup, verified",
            )
            assert figure(admin, "renum_backups_kept") == 1.0
            age = figure(admin, "renum_backup_last_verified_age_seconds")
            assert age is not None
            assert 0 <= age < 3600
            wait_until(
                lambda: backups_entry(admin)["status"] == "pass",
                timeout=30,
                what="the dependency report's backups entry to pass",
            )
            assert backups_entry(admin)["observedUnit"] == "h"

            listed = renum("backup", "list", "--json")
            assert listed.returncode == 0, listed.stderr
            (backup,) = json.loads(listed.stdout)
            assert backup["verification"]["passed"] is True
            assert backup["revision"] is not None

            (database.parent / "backups" / backup["file"]).write_bytes(b"damaged")
            failed = renum("backup", "verify")
            assert failed.returncode == 1
            wait_until(lambda: backups_alert(admin) is not None, timeout=30, what="the alert")
            alert = backups_alert(admin)
            assert alert is not None
            assert "failed" in alert["message"]
            assert figure(admin, "renum_backup_last_verification_success") == 0.0
            wait_until(
                lambda: backups_entry(admin)["status"] == "warn",
                timeout=30,
                what="the dependency report's backups entry to warn",
            )

            taken = renum("backup", "run")
            assert taken.returncode == 0, taken.stderr
            assert renum("backup", "verify").returncode == 0
            wait_until(lambda: backups_alert(admin) is None, timeout=30, what="the alert cleared")
            assert figure(admin, "renum_backup_last_verification_success") == 1.0
    finally:
        backend.stop()


def new_account(admin: ApiClient) -> str:
    name = unique_name()
    body = {"name": name, "owner_email": unique_email("owner"), "owner_password": DEFAULT_PASSWORD}
    expect(admin.post("/api/v1/accounts", json=body), 201)
    return name


def account_in(replica: Path, scratch: Path, name: str) -> bool:
    """Whether the replica's latest state holds the account ``name``."""
    restored = scratch / f"probe-{uuid.uuid4().hex}.db"
    try:
        restore_replica(replica, restored)
    except ReplicationError:
        return False
    connection = sqlite3.connect(restored)
    try:
        query = "SELECT count(*) FROM accounts WHERE name = ?"
        return bool(connection.execute(query, (name,)).fetchone()[0])
    finally:
        connection.close()
        restored.unlink(missing_ok=True)


def test_the_server_replicates_continuously_and_recovers_to_a_point_in_time(
    tmp_path: Path,
) -> None:
    replica = tmp_path / "replica"
    backend = LaunchedBackend.start(
        "sqlite", extra_env={"RENUM_BACKUPS__REPLICA_DIRECTORY": str(replica)}
    )
    url = backend.env["RENUM_DATABASE__URL"]
    database = backend.sqlite_file
    try:
        with ApiClient(backend.base_url) as client:
            admin = client.login(backend.admin_email, backend.admin_password)
            assert figure(admin, "renum_backup_replication_running") == 1.0
            first = new_account(admin)
            wait_until(
                lambda: account_in(replica, tmp_path, first), 30, "the 1st write", interval=0.2
            )
            moment = datetime.now(UTC)
            second = new_account(admin)
            wait_until(
                lambda: account_in(replica, tmp_path, second), 30, "the second write", interval=0.2
            )
    finally:
        backend.stop()
    renum = Cli(
        cli_env(RENUM_DATABASE__URL=url, RENUM_BACKUPS__REPLICA_DIRECTORY=str(replica)),
        database.parent,
    )
    to_the_moment = renum("backup", "restore", "--to", moment.isoformat(), "--yes")
    assert to_the_moment.returncode == 0, to_the_moment.stderr
    connection = sqlite3.connect(database)
    try:
        accounts = {row[0] for row in connection.execute("SELECT name FROM accounts")}
    finally:
        connection.close()
    assert first in accounts
    assert second not in accounts
