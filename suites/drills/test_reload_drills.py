"""Reload drill: the configuration reloaded once a second for a minute while the project's
Locust scenarios load the backend, on SQLite and on PostgreSQL; no request may fail.

Why Locust and not a few threads of ``ApiClient``: ``qa.load`` already runs the project's
load scenarios against a launched backend for a given time and reads back every request's
outcome (``run_locust`` and ``qa.load.results``), and those scenarios are the realistic mix
(logins, agents and teams created, executions started with ``?wait=``, polled and streamed,
some against the fake model server, listings, usage, probes, ``/metrics`` and the dependency
report). They hold long requests open (a ``?wait=`` of up to 10 s, event streams) across
reloads, which is where a reload could break a request in flight, and they count as a
failure any unexpected status, any connection error and any execution that does not
complete. Threads of our own would repeat that mix in a weaker form. The price: Locust runs
as a subprocess, so the drill reads its figures from Locust's report files.

The backend reads ``RENUM_CONFIG_FILE`` (a TOML file in ``tmp_path``) and watches it. Each
second the drill writes the file with new live values (``log_level`` alternating between
DEBUG and INFO, ``teams.max_members`` a new number each time), atomically (a temporary file
renamed over it, as editors and configuration tools do), and triggers the reload in turn by
the file watcher alone, by SIGHUP, and by ``POST /api/v1/ops/config/reload`` as the admin.
The watcher sees every write, so on the SIGHUP and endpoint turns two reloads race: the
first to read the file applies it and the other finds nothing changed, as in production.
In the middle one write is invalid (``log_level = "LOUD"`` beside a valid new
``max_members``): the endpoint must refuse it and nothing may change.

Before the next write, each turn waits until ``GET /api/v1/ops/config`` shows the values it
wrote, so two writes can never be merged into one reload (the file watcher batches changes
that come close together). The slack on the count of applied reloads is therefore zero:
every valid write is applied exactly once, and the server's log must show exactly as many
``configuration_reloaded`` events with status ``applied`` as there were valid writes. The
same log shows one reload per SIGHUP sent and per endpoint call made.

Asserted on counts and states only: no failed request, no error in the load users and none
in the server's log but the refusals; the applied, SIGHUP and endpoint reloads counted as
above; the invalid reload refused, naming ``log_level``, with the fingerprint and values
unchanged, and no other reload refused; the final effective values the last ones written.
The drill takes a little over a minute per database (the load's minute, Locust's start and
stop, the backend's start and stop).
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from qa.client import API, ApiClient
from qa.factories import expect
from qa.fake_openai import FakeOpenAI
from qa.launcher import LaunchedBackend
from qa.load import results
from qa.load.runner import (
    LAUNCH_ENV,
    USERS_PER_ACCOUNT,
    Options,
    locust_env,
    make_accounts,
    run_locust,
)
from qa.plugin import LaunchBackend
from qa.polling import wait_until

OPS = f"{API}/ops/config"
PROFILE = "smoke"  # the profile's form (a short ramp, then a steady load), rescaled below
USERS = 10
LOAD_SECONDS = 60
TRIGGERS = ("file", "SIGHUP", "api")
LEVELS = ("DEBUG", "INFO")
FIRST_MAX_MEMBERS = 20  # the load's teams have two members: every value stays above that
MIDDLE = 30  # the turn of the invalid write, half-way through the minute
# A drill may take its time on a busy machine: each wait is bounded, never timed.
PATIENCE = 30.0


@dataclass(frozen=True)
class Values:
    """The live values a turn writes into the config file."""

    log_level: str
    max_members: int

    def toml(self) -> str:
        return f'log_level = "{self.log_level}"\n[teams]\nmax_members = {self.max_members}\n'


INITIAL = Values("INFO", 10)
INVALID = Values("LOUD", 999)  # the bad level refuses the whole file, the valid 999 included


@dataclass
class Turn:
    index: int
    trigger: str
    values: Values
    answer: str | None = None  # the endpoint's status, on the endpoint's turns


@dataclass
class Tally:
    """What the drill did to the backend's configuration."""

    turns: list[Turn] = field(default_factory=list)
    sighups: int = 0
    api_calls: int = 0
    refused: dict[str, Any] | None = None

    @property
    def valid_writes(self) -> int:
        return sum(1 for turn in self.turns if turn.values != INVALID)

    def last_valid(self) -> Values:
        return next(t.values for t in reversed(self.turns) if t.values != INVALID)


def write_config(path: Path, values: Values) -> None:
    """Replace the file in one step: the watcher never reads it half-written."""
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(values.toml())
    os.replace(staged, path)


class ReloadDrill:
    """One launched backend reading ``config_file``, its admin, and what the drill did."""

    def __init__(self, backend: LaunchedBackend, config_file: Path) -> None:
        self.backend = backend
        self.config_file = config_file
        self.admin = ApiClient(backend.base_url).login(backend.admin_email, backend.admin_password)
        self.tally = Tally()
        self.current = INITIAL

    def configuration(self) -> dict[str, Any]:
        body: dict[str, Any] = expect(self.admin.get(OPS), 200)
        return body

    def effective(self, body: dict[str, Any] | None = None) -> Values:
        rows = {row["setting"]: row["value"] for row in (body or self.configuration())["settings"]}
        return Values(rows["log_level"], rows["teams.max_members"])

    def turn(self, index: int) -> None:
        if index == MIDDLE:
            self.invalid_turn(index)
            return
        values = Values(LEVELS[index % 2], FIRST_MAX_MEMBERS + index)
        turn = Turn(index, TRIGGERS[index % len(TRIGGERS)], values)
        self.tally.turns.append(turn)
        write_config(self.config_file, values)
        if turn.trigger == "SIGHUP":
            assert self.backend.process is not None
            self.backend.process.send_signal(signal.SIGHUP)
            self.tally.sighups += 1
        elif turn.trigger == "api":
            answer = expect(self.admin.post(f"{OPS}/reload"), 200)
            self.tally.api_calls += 1
            # "unchanged" when the file watcher read the new file first
            assert answer["status"] in ("applied", "unchanged"), answer
            turn.answer = answer["status"]
        wait_until(
            lambda: self.effective() == values,
            timeout=PATIENCE,
            what=f"turn {index} ({turn.trigger}): {values} in effect",
            interval=0.05,
        )
        self.current = values

    def invalid_turn(self, index: int) -> None:
        before = self.configuration()
        assert self.effective(before) == self.current
        self.tally.turns.append(Turn(index, "api", INVALID))
        write_config(self.config_file, INVALID)
        answer = expect(self.admin.post(f"{OPS}/reload"), 200)
        self.tally.api_calls += 1
        self.tally.refused = answer
        after = self.configuration()
        assert self.effective(after) == self.current, "a refused reload changed a value"
        assert after["fingerprint"] == before["fingerprint"]

    def reloads(self) -> list[dict[str, Any]]:
        """The reload events of the server's log (JSON lines)."""
        found = []
        for line in self.backend.log_text().splitlines():
            if "configuration_reload" not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") in ("configuration_reloaded", "configuration_reload_refused"):
                found.append(event)
        return found

    def errors(self) -> list[str]:
        """Lines of the server's log at level error or above, but the refused reloads."""
        return [
            line
            for line in self.backend.log_text().splitlines()
            if ('"level": "error"' in line or '"level": "critical"' in line)
            and "configuration_reload_refused" not in line
        ]

    def close(self) -> None:
        self.admin.close()


class Load(threading.Thread):
    """Locust's scenarios against the backend for ``LOAD_SECONDS``, in a subprocess."""

    def __init__(self, backend: LaunchedBackend, model_url: str, reports: Path) -> None:
        super().__init__(name="reload-drill-load", daemon=True)
        self.base_url = backend.base_url
        self.reports = reports
        with ApiClient(backend.base_url) as admin:
            admin.login(backend.admin_email, backend.admin_password)
            self.accounts = make_accounts(admin, math.ceil(USERS / USERS_PER_ACCOUNT))
        accounts_file = reports / "accounts.json"
        accounts_file.write_text(json.dumps(self.accounts))
        self.env = locust_env(
            {
                "RENUM_LOAD_ACCOUNTS_FILE": str(accounts_file),
                "RENUM_LOAD_MODEL_BASE_URL": model_url,
                "RENUM_LOAD_USERS": str(USERS),
                "RENUM_LOAD_RUN_TIME": str(LOAD_SECONDS),
            }
        )
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            options = Options(profile=PROFILE, reports=self.reports)
            run_locust(options, self.base_url, self.env, self.reports, LOAD_SECONDS)
        except BaseException as exc:  # handed to the test's thread
            self.error = exc

    def wait_busy(self) -> None:
        """Until the first virtual user has made its agents: the load is under way."""
        first = self.accounts[0]
        with closing(ApiClient(self.base_url).login(first["email"], first["password"])) as user:
            wait_until(
                lambda: expect(user.get(f"{API}/agents"), 200)["items"] or not self.is_alive(),
                timeout=PATIENCE * 2,
                what="Locust's first user under way",
                interval=0.2,
            )
        assert self.is_alive(), f"the load ended before the drill began: {self.error}"

    def entries(self) -> list[dict[str, Any]]:
        return [
            entry
            for entry in results.load_locust_json(self.reports / "locust.json")
            if entry.get("name") != "Aggregated"
        ]

    def exceptions(self) -> list[str]:
        path = self.reports / "locust_exceptions.csv"
        lines = path.read_text().splitlines()[1:] if path.exists() else []
        return [line for line in lines if line.strip()]


@pytest.fixture(params=["sqlite", "postgresql"])
def drill(
    request: pytest.FixtureRequest,
    launch_backend: LaunchBackend,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> Iterator[ReloadDrill]:
    config_file = tmp_path / "renum.toml"
    write_config(config_file, INITIAL)
    # The load harness's settings, but the log level from the config file: an environment
    # variable would outrank the file, and the drill reloads the level.
    env = {key: value for key, value in LAUNCH_ENV.items() if key != "RENUM_LOG_LEVEL"}
    env |= {"RENUM_CONFIG_FILE": str(config_file), "RENUM_CONFIGURATION__WATCH_FILE": "true"}
    running = ReloadDrill(launch_backend(request.param, extra_env=env), config_file)
    yield running
    running.close()


def test_reloading_every_second_under_load_fails_no_request(
    drill: ReloadDrill, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    reports = tmp_path / "load"
    reports.mkdir()
    load = Load(drill.backend, fake_openai.base_url, reports)
    began = time.monotonic()
    load.start()
    load.wait_busy()

    # Once a second while the load runs (a late turn is followed at once by the next).
    index = 0
    turns_began = time.monotonic()
    while load.is_alive():
        drill.turn(index)
        index += 1
        load.join(max(0.0, turns_began + index - time.monotonic()))
    load.join(PATIENCE)
    assert not load.is_alive(), "Locust did not stop"
    assert load.error is None, load.error
    tally = drill.tally
    assert len(tally.turns) > MIDDLE + 1, f"the load ended after {len(tally.turns)} turns"

    # The invalid write was refused, naming the bad setting, and nothing changed (checked in
    # the turn itself); the next valid writes applied again.
    assert tally.refused is not None
    assert tally.refused["status"] == "refused", tally.refused
    assert any("log_level" in problem for problem in tally.refused["problems"]), tally.refused

    # Every reload the drill caused shows in the log: one per SIGHUP, one per endpoint call,
    # and as many applied as valid writes (no two writes merged: see the module's docstring).
    def counted() -> tuple[Counter[str], int, list[dict[str, Any]]]:
        events = drill.reloads()
        by_trigger = Counter(str(e.get("trigger")) for e in events)
        applied = sum(1 for e in events if e.get("status") == "applied")
        return by_trigger, applied, events

    def complete() -> bool:
        by_trigger, applied, _ = counted()
        return (
            by_trigger["SIGHUP"] >= tally.sighups
            and by_trigger["api"] >= tally.api_calls
            and applied >= tally.valid_writes
        )

    try:
        wait_until(complete, timeout=PATIENCE, what="every reload in the log", interval=0.2)
    finally:
        by_trigger, applied, events = counted()
    refused = [e for e in events if e.get("status") == "refused"]
    assert by_trigger["SIGHUP"] == tally.sighups, by_trigger
    assert by_trigger["api"] == tally.api_calls, by_trigger
    assert by_trigger["config_file"] >= 1, by_trigger  # the watcher reloads under load too
    assert applied == tally.valid_writes, (applied, tally.valid_writes)
    assert refused, "the invalid write left no refusal in the log"
    for event in refused:  # only the invalid file was ever refused (by the endpoint, the watcher)
        assert any("log_level" in problem for problem in event.get("problems", [])), event

    # The last valid write is what runs now.
    final = drill.configuration()
    assert drill.effective(final) == tally.last_valid()
    assert final["last_reload"]["status"] != "refused", final["last_reload"]

    # No request failed: every status as expected, no connection error, every execution
    # completed; no virtual user stopped on an error, and the server logged none.
    entries = load.entries()
    http = [e for e in entries if e.get("method") not in results.NOT_HTTP]
    requests = sum(int(e["num_requests"]) for e in http)
    executions = sum(int(e["num_requests"]) for e in entries if e.get("method") == "EXECUTION")
    failures = {
        results.route_key(e): int(e["num_failures"]) for e in entries if int(e["num_failures"])
    }
    answers = Counter(turn.answer for turn in tally.turns if turn.answer)
    print(
        f"\n{drill.backend.flavour}: {requests} requests and {executions} executions under load, "
        f"{len(tally.turns)} reloads in {time.monotonic() - turns_began:.0f}s "
        f"({tally.valid_writes} valid writes, {applied} applied, {len(refused)} refused; "
        f"by trigger {dict(by_trigger)}; endpoint answers {dict(answers)}); "
        f"drill {time.monotonic() - began:.0f}s"
    )
    assert requests > 0, entries
    assert executions > 0, entries
    assert not failures, (failures, results.load_failures(reports / "locust_failures.csv"))
    assert not load.exceptions(), load.exceptions()
    assert not drill.errors(), drill.errors()[:5]
