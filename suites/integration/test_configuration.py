"""Live configuration on a real backend: the effective configuration with its sources, reload
through the endpoint, on SIGHUP and on a change of the config file; live settings take effect
for the next request, restart-only ones are reported and kept, an invalid file changes
nothing and shows on the dependency report; the fingerprint tells two differently configured
backends apart, on the ops endpoint and on /health/dependencies. With `renum serve --workers
2`, the supervisor validates a reload once and every worker applies it; a bad file reaches no
worker and restarts none. SQLite, except the workers (several need PostgreSQL): none of this
depends on the database."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import teams_support as ts
from integration_support import ServedWithWorkers, log_events
from teams_support import TEAMS, create_agent

from qa.client import API, ApiClient
from qa.factories import expect, tenant_with_owner
from qa.launcher import LaunchedBackend
from qa.polling import wait_until

OPS = f"{API}/ops/config"
CHECK = "configuration:fingerprint"
BASE = 'log_level = "INFO"\n[teams]\nmax_members = 10\n'


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "renum.toml"
    path.write_text(BASE)
    return path


def launch(config_file: Path, watch: bool) -> Iterator[LaunchedBackend]:
    env = {"RENUM_CONFIG_FILE": str(config_file), "RENUM_CONFIGURATION__WATCH_FILE": str(watch)}
    backend = LaunchedBackend.start("sqlite", extra_env=env)
    try:
        yield backend
    finally:
        backend.stop()


@pytest.fixture
def configured(config_file: Path) -> Iterator[LaunchedBackend]:
    """A backend reading ``config_file``, reloading only when asked (no file watcher)."""
    yield from launch(config_file, watch=False)


@pytest.fixture
def watching(config_file: Path) -> Iterator[LaunchedBackend]:
    """A backend that also reloads when ``config_file`` changes."""
    yield from launch(config_file, watch=True)


def admin_of(backend: LaunchedBackend) -> ApiClient:
    return ApiClient(backend.base_url).login(backend.admin_email, backend.admin_password)


def settings_of(admin: ApiClient) -> dict[str, Any]:
    body = expect(admin.get(OPS), 200)
    return {row["setting"]: row for row in body["settings"]} | {"_": body}


def configuration_entry(admin: ApiClient) -> dict[str, Any]:
    """The configuration's entry in the dependency report (details: the admin's)."""
    report = admin.get("/health/dependencies").json()
    entry: dict[str, Any] = report["checks"][CHECK][0]
    return entry


def test_reload_applies_live_settings_reports_the_rest_and_refuses_bad_files(
    configured: LaunchedBackend, config_file: Path
) -> None:
    with closing(admin_of(configured)) as admin:
        before = settings_of(admin)
        assert before["teams.max_members"]["source"] == "config_file"
        assert before["teams.max_members"]["live"] is True
        assert before["database.url"]["live"] is False
        assert before["secret_key"]["value"] == "********"
        assert before["_"]["last_reload"] is None

        # Through the endpoint: a live setting applies, a restart-only one is kept.
        config_file.write_text(
            'log_level = "INFO"\nshutdown_timeout_seconds = 9\n[teams]\nmax_members = 1\n'
        )
        result = expect(admin.post(f"{OPS}/reload"), 200)
        assert result["status"] == "applied"
        assert result["applied"] == ["teams.max_members"]
        assert result["restart_required"] == ["shutdown_timeout_seconds"]
        assert result["fingerprint"] != before["_"]["fingerprint"]
        after = settings_of(admin)
        assert after["teams.max_members"]["value"] == 1
        assert after["shutdown_timeout_seconds"]["value"] == 5.0  # kept until a restart

        # The next request sees the new limit.
        _tenant, owner = tenant_with_owner(
            configured.base_url, configured.admin_email, configured.admin_password
        )
        with closing(owner):
            agents = [create_agent(owner)["id"], create_agent(owner)["id"]]
            refused = owner.post(TEAMS, json={"name": "two", "agent_ids": agents})
            assert refused.status_code == 422, refused.text
            assert expect(owner.post(TEAMS, json={"name": "one", "agent_ids": agents[:1]}), 201)

        # An invalid file changes nothing and says why.
        config_file.write_text('log_level = "LOUD"\n[teams]\nmax_members = 5\n')
        refused_reload = expect(admin.post(f"{OPS}/reload"), 200)
        assert refused_reload["status"] == "refused"
        assert any("log_level" in problem for problem in refused_reload["problems"])
        assert settings_of(admin)["teams.max_members"]["value"] == 1
        assert refused_reload["fingerprint"] == result["fingerprint"]
        # ... and so does the dependency report, until a reload succeeds.
        warned = wait_until(
            lambda: (e := configuration_entry(admin))["status"] == "warn" and e,
            timeout=20,
            what="the refused reload on /health/dependencies",
            interval=0.2,
        )
        assert "log_level" in warned["output"]
        assert warned["observedValue"] == result["fingerprint"]
        assert warned["fix"].startswith("Run `renum config check`")


@pytest.mark.drill  # a long scenario: run by `nox -s drills`
def test_reload_on_sighup_and_on_a_file_change(
    watching: LaunchedBackend, config_file: Path
) -> None:
    assert watching.process is not None
    with closing(admin_of(watching)) as admin:
        config_file.write_text(BASE.replace("max_members = 10", "max_members = 3"))

        def last_reload() -> dict[str, Any] | None:
            found: dict[str, Any] | None = settings_of(admin)["_"]["last_reload"]
            return found

        # The file watcher reloads on its own.
        wait_until(
            lambda: (r := last_reload()) is not None and r["status"] == "applied",
            timeout=20,
            what="a reload of the changed config file",
            interval=0.2,
        )
        reloaded = last_reload()
        assert reloaded is not None
        assert reloaded["trigger"] == "config_file"
        assert settings_of(admin)["teams.max_members"]["value"] == 3

        watching.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: (r := last_reload()) is not None and r["trigger"] == "SIGHUP",
            timeout=20,
            what="a reload on SIGHUP",
            interval=0.2,
        )
        by_signal = last_reload()
        assert by_signal is not None
        assert by_signal["status"] == "unchanged"  # nothing changed since the file reload
        assert watching.process.poll() is None  # SIGHUP did not stop the server


def test_template_limits_reload_live(configured: LaunchedBackend, config_file: Path) -> None:
    loop = "{% for i in range(500) %}{% endfor %}looped"
    _tenant, owner = tenant_with_owner(
        configured.base_url, configured.admin_email, configured.admin_password
    )
    with closing(admin_of(configured)) as admin, closing(owner):
        team = ts.create_team(owner, [ts.template_agent(owner, loop)])
        assert ts.run_to_end(owner, team)["status"] == "completed"
        config_file.write_text(BASE + "[templates]\nmax_iterations = 100\n")
        result = expect(admin.post(f"{OPS}/reload"), 200)
        assert result["applied"] == ["templates.max_iterations"]
        failed = ts.run_to_end(owner, team)  # the next render runs under the new limit
        assert failed["status"] == "failed"
        assert "more than 100 iterations" in json.dumps(failed)


def test_only_platform_admins_see_or_reload_the_configuration(
    configured: LaunchedBackend,
) -> None:
    _tenant, owner = tenant_with_owner(
        configured.base_url, configured.admin_email, configured.admin_password
    )
    with closing(owner):
        assert owner.get(OPS).status_code == 403
        assert owner.post(f"{OPS}/reload").status_code == 403
    with ApiClient(configured.base_url) as anonymous:
        assert anonymous.get(OPS).status_code == 401


@pytest.mark.drill  # a long scenario: run by `nox -s drills`
def test_the_fingerprint_differs_between_differently_configured_backends(
    configured: LaunchedBackend,
) -> None:
    other = LaunchedBackend.start("sqlite", extra_env={"RENUM_TEAMS__MAX_MEMBERS": "4"})
    try:
        with closing(admin_of(configured)) as first, closing(admin_of(other)) as second:
            one = expect(first.get(OPS), 200)["fingerprint"]
            two = expect(second.get(OPS), 200)["fingerprint"]
            # The dependency report shows the same fingerprints, for replicas side by side.
            assert configuration_entry(first)["observedValue"] == one
            assert configuration_entry(second)["observedValue"] == two
        assert one != two
    finally:
        other.stop()


def reloads(backend: LaunchedBackend, event: str, **fields: object) -> list[dict[str, Any]]:
    """The log's ``event`` events with these fields, in the order they were written."""
    return [
        e
        for e in log_events(backend)
        if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
    ]


def after(events: list[dict[str, Any]], mark: dict[str, Any]) -> list[dict[str, Any]]:
    """The events logged after ``mark`` (log events carry no sequence; the order is the file's)."""
    return events[events.index(mark) + 1 :]


@pytest.mark.drill  # a long scenario: run by `nox -s drills`
def test_with_several_workers_a_reload_is_validated_once_and_reaches_every_worker(
    config_file: Path,
) -> None:
    """A file change is validated by the supervisor and applied by both workers; an invalid
    file is refused by the supervisor alone; the endpoint's reload reaches the other worker.
    (One write may reach the watcher as two changes: counts below allow extra forwards, which
    the workers see as 'unchanged'.)"""
    env = {"RENUM_CONFIG_FILE": str(config_file), "RENUM_CONFIGURATION__WATCH_FILE": "true"}
    backend = ServedWithWorkers.start("postgresql", extra_env=env)
    try:
        with closing(admin_of(backend)) as admin:
            config_file.write_text(BASE.replace("max_members = 10", "max_members = 3"))
            applied = wait_until(
                lambda: (
                    len(r := reloads(backend, "configuration_reloaded", status="applied")) >= 2
                    and r
                ),
                timeout=20,
                what="both workers applying the file's change",
                interval=0.2,
            )
            workers = {e["pid"] for e in applied}
            assert len(workers) == 2
            assert len(applied) == 2
            assert all(e["trigger"] == "SIGHUP" for e in applied)  # passed on by the supervisor
            forwarded = reloads(backend, "configuration_reload_forwarded")
            assert forwarded
            assert all(set(f["workers"]) == workers for f in forwarded)
            for _ in range(6):  # whichever worker answers
                assert settings_of(admin)["teams.max_members"]["value"] == 3

            # An invalid file: refused by the supervisor; no worker reloads or restarts.
            config_file.write_text('log_level = "LOUD"\n')
            refused = wait_until(
                lambda: reloads(backend, "configuration_reload_refused", trigger="supervisor"),
                timeout=20,
                what="the supervisor refusing the invalid file",
                interval=0.2,
            )
            assert any("log_level" in problem for problem in refused[0]["problems"])
            assert not reloads(backend, "configuration_reload_refused", trigger="SIGHUP")
            for _ in range(6):
                assert settings_of(admin)["teams.max_members"]["value"] == 3

            # Corrected, then reloaded through the endpoint of one worker: the supervisor
            # passes that reload on to both.
            config_file.write_text(BASE.replace("max_members = 10", "max_members = 4"))
            wait_until(
                lambda: len(reloads(backend, "configuration_reloaded", status="applied")) == 4,
                timeout=20,
                what="both workers applying the corrected file",
                interval=0.2,
            )
            assert expect(admin.post(f"{OPS}/reload"), 200)["status"] == "unchanged"
            (by_api,) = reloads(backend, "configuration_reloaded", trigger="api")
            passed_on = wait_until(
                lambda: (
                    {
                        e["pid"]
                        for e in after(reloads(backend, "configuration_reloaded"), by_api)
                        if e["trigger"] == "SIGHUP"
                    }
                    == workers
                ),
                timeout=20,
                what="both workers reloading after the endpoint's reload",
                interval=0.2,
            )
            assert passed_on
            assert {e["pid"] for e in reloads(backend, "configuration_reloaded")} == workers
        assert backend.process is not None
        assert backend.process.poll() is None
    finally:
        backend.stop()
