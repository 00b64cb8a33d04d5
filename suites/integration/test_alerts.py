"""Alerts on a real backend: a threshold rule fires and resolves, notified to a webhook
receiver (signed), a Slack-compatible receiver and a local SMTP server (aiosmtpd), each on
loopback; deduplicated by fingerprint, repeated at most every repeat interval, held back by a
silence; rules reloaded live from the config file; a failing channel retried in the
background, shown as failing, while requests go on; and, with two API processes on one
PostgreSQL database, one evaluator and one notification per alert.

The rule under test is ``route_latency_p95`` with a bound of 0 s, one request and no waiting
(any route with a request in the window breaks it); the other rules are off. The tests wait
for what the receivers record and for evaluations seen in ``seen_at`` (never for a fixed
time).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from integration_support import ServedWithWorkers, pointers
from sqlalchemy import select

from app.capabilities.monitor.alerts import Leadership
from app.core.config import DatabaseSettings, Settings
from app.db.database import SQLAlchemyManager
from app.main import create_app
from app.models import Delivery
from app.services.delivery import verify_signature
from qa import services
from qa.client import API, ApiClient
from qa.factories import expect
from qa.launcher import LaunchedBackend, free_port
from qa.polling import wait_until
from qa.webhook_receiver import ReceivedRequest, WebhookReceiver

ALERTS = f"{API}/ops/alerts"
SILENCES = f"{API}/ops/silences"
RELOAD = f"{API}/ops/config/reload"
RULE = "route_latency_p95"
WATCHED = "/api/v1/teams"  # the route whose alert the tests follow
SECRET = "whsec_alert-channel-test-secret-0123456789"
OTHER_RULES = (
    "route_error_ratio",
    "memory_high",
    "dependency_failing",
    "provider_error_ratio",
    "disk_full_forecast",
    "pool_exhaustion_forecast",
)


class Mailbox:
    """An aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Any]] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"

    def received(self) -> list[tuple[list[str], Any]]:
        with self._lock:
            return list(self.messages)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """One per test: an alert's fingerprint is the same in every test's backend."""
    with WebhookReceiver() as started:
        yield started


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


def config(
    receiver: WebhookReceiver,
    smtp_port: int,
    *,
    bound: float = 0.0,
    repeat_seconds: float = 14400.0,
    extra_channels: str = "",
) -> str:
    """The config file: fast sampling and evaluation, the rule under test, three channels."""
    off = "".join(f"[monitor.alerts.rules.{name}]\nenabled = false\n" for name in OTHER_RULES)
    return f"""
[monitor]
interval_seconds = 0.2
[monitor.alerts]
evaluation_interval_seconds = 0.2
repeat_interval_seconds = {repeat_seconds}
[monitor.alerts.rules.{RULE}]
bound = {bound}
for_seconds = 0
min_requests = 1
{off}
[[monitor.alerts.channels]]
name = "hook"
type = "webhook"
url = "{receiver.url("/alerts/hook")}"
secret = "{SECRET}"
min_severity = "info"
[[monitor.alerts.channels]]
name = "chat"
type = "slack"
url = "{receiver.url("/alerts/slack")}"
[[monitor.alerts.channels]]
name = "mail"
type = "email"
to = ["ops@example.test"]
{extra_channels}
[monitor.alerts.smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
from_address = "renum-alerts@example.test"
"""


def launch(config_file: Path, flavour: str = "sqlite", workers: bool = False) -> LaunchedBackend:
    env = {
        "RENUM_CONFIG_FILE": str(config_file),
        "RENUM_CONFIGURATION__WATCH_FILE": "false",
        "RENUM_DELIVERIES__ENABLED": "true",
        "RENUM_DELIVERIES__INTERVAL_SECONDS": "0.1",
        "RENUM_DELIVERIES__BACKOFF_BASE_SECONDS": "0.05",
        "RENUM_DELIVERIES__BACKOFF_MAX_SECONDS": "0.2",
        "RENUM_DELIVERIES__TIMEOUT_SECONDS": "30",
    }
    kind = ServedWithWorkers if workers else LaunchedBackend
    return kind.start(flavour, extra_env=env)


def notifications(receiver: WebhookReceiver, fingerprint: str) -> list[dict[str, Any]]:
    """The webhook channel's notifications of one alert, in order."""
    found = []
    for request in receiver.requests_for("/alerts/hook"):
        body = request.json()
        if body["alert"]["fingerprint"] == fingerprint:
            found.append(body)
    return found


def watched_alert(admin: ApiClient, state: str = "firing") -> dict[str, Any] | None:
    body = expect(admin.get(ALERTS), 200)
    for alert in body["active"] + body["recent"]:
        if alert["labels"].get("route") == WATCHED and alert["state"] == state:
            return dict(alert)
    return None


def evaluated_after(admin: ApiClient, fingerprint: str, moment: str, rounds: int = 3) -> None:
    """Wait until the evaluator has seen the alert ``rounds`` times after ``moment`` (an
    ISO instant): each evaluation moves ``seen_at``."""
    seen: set[str] = set()

    def later() -> bool:
        for alert in expect(admin.get(ALERTS), 200)["active"]:
            if alert["fingerprint"] == fingerprint and alert["seen_at"] > moment:
                seen.add(alert["seen_at"])
        return len(seen) >= rounds

    wait_until(later, timeout=30, what=f"{rounds} evaluations after {moment}")


def reload(admin: ApiClient, config_file: Path, text: str, changed: str) -> None:
    """Rewrite the config file and reload it: ``changed`` must apply live."""
    config_file.write_text(text)
    answer = expect(admin.post(RELOAD), 200)
    assert answer["status"] == "applied", answer
    assert changed in answer["applied"], answer
    assert answer["restart_required"] == [], answer


def test_an_alert_fires_is_deduplicated_silenced_repeated_and_resolved_on_every_channel(
    tmp_path: Path, receiver: WebhookReceiver, mailbox: tuple[Mailbox, int]
) -> None:
    box, smtp_port = mailbox
    config_file = tmp_path / "renum.toml"
    config_file.write_text(config(receiver, smtp_port))
    backend = launch(config_file)
    admin = ApiClient(backend.base_url).login(backend.admin_email, backend.admin_password)
    try:
        for _ in range(3):
            expect(admin.get(WATCHED), 200)
        alert = wait_until(lambda: watched_alert(admin), timeout=30, what="a firing alert")
        fingerprint = alert["fingerprint"]
        listed = expect(admin.get(ALERTS), 200)
        assert listed["evaluated_at"] is not None
        assert backend.process is not None
        assert listed["evaluated_by"].endswith(f":{backend.process.pid}")  # host:pid

        # Fired: signed JSON, a Slack body and an email, each once.
        fired = wait_until(
            lambda: notifications(receiver, fingerprint), timeout=30, what="the webhook"
        )
        assert fired[0]["type"] == "alert.firing"
        assert fired[0]["alert"]["rule"] == RULE
        assert fired[0]["alert"]["labels"] == {"method": "GET", "route": WATCHED}
        request = next(
            r for r in receiver.requests_for("/alerts/hook") if fingerprint.encode() in r.body
        )
        verify_signature(SECRET, request.body, request.headers.get("renum-signature"))

        def slack() -> list[ReceivedRequest]:
            return [
                r for r in receiver.requests_for("/alerts/slack") if fingerprint.encode() in r.body
            ]

        chat = wait_until(slack, timeout=30, what="the Slack body")[0].json()
        assert chat["text"].startswith(f"[FIRING] warning: {RULE}")
        assert [block["type"] for block in chat["blocks"]] == ["header", "section", "context"]

        def mails() -> list[Any]:
            return [m for to, m in box.received() if fingerprint in m.get_payload()]

        mail = wait_until(mails, timeout=30, what="the email")[0]
        assert mail["To"] == "ops@example.test"
        assert mail["From"] == "renum-alerts@example.test"
        assert mail["Subject"].startswith(f"[FIRING] warning: {RULE}")

        # Deduplicated: more evaluations see it firing, and nothing more is sent.
        evaluated_after(admin, fingerprint, alert["seen_at"])
        assert len(notifications(receiver, fingerprint)) == 1

        # Silenced, with repeats now due every 0.3 s: still nothing is sent.
        silence = expect(
            admin.post(
                SILENCES,
                json={
                    "matchers": {"rule": RULE, "route": WATCHED},
                    "reason": "known slow route",
                    "duration_minutes": 30,
                },
            ),
            201,
        )
        assert silence["author"] == backend.admin_email
        assert silence["active"] is True
        reload(
            admin,
            config_file,
            config(receiver, smtp_port, repeat_seconds=0.3),
            "monitor.alerts.repeat_interval_seconds",
        )
        moment = expect(admin.get(ALERTS), 200)["active"][0]["seen_at"]
        evaluated_after(admin, fingerprint, moment, rounds=5)
        assert len(notifications(receiver, fingerprint)) == 1
        shown = watched_alert(admin)
        assert shown is not None
        assert shown["silenced_by"] == [silence["id"]]
        listed = expect(admin.get(SILENCES), 200)
        assert [s["id"] for s in listed] == [silence["id"]]

        # The silence ended: the repeats go out.
        assert admin.delete(f"{SILENCES}/{silence['id']}").status_code == 204
        assert expect(admin.get(SILENCES), 200)[0]["active"] is False
        wait_until(
            lambda: any(n["type"] == "alert.repeat" for n in notifications(receiver, fingerprint)),
            timeout=30,
            what="a repeat",
        )

        # A live rule change clears it: resolved once, on every channel.
        reload(
            admin, config_file, config(receiver, smtp_port, bound=1000.0), "monitor.alerts.rules"
        )
        resolved = wait_until(
            lambda: watched_alert(admin, "resolved"), timeout=30, what="the alert resolved"
        )
        assert resolved["resolved_at"] is not None
        wait_until(
            lambda: notifications(receiver, fingerprint)[-1]["type"] == "alert.resolved",
            timeout=30,
            what="the resolved notification",
        )
        assert [n["type"] for n in notifications(receiver, fingerprint)].count(
            "alert.resolved"
        ) == 1
        wait_until(
            lambda: any(m["Subject"].startswith("[RESOLVED]") for m in mails()),
            timeout=30,
            what="the resolved email",
        )
    finally:
        admin.close()
        backend.stop()


class Blackhole:
    """A loopback listener that accepts connections and never answers."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.accepted = threading.Event()
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}/alerts"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.connections.append(connection)
            self.accepted.set()

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self.socket.close()


def test_a_failing_channel_is_retried_and_shown_while_requests_go_on(
    tmp_path: Path, receiver: WebhookReceiver, mailbox: tuple[Mailbox, int]
) -> None:
    _, smtp_port = mailbox
    stuck = Blackhole()
    broken = f"/alerts/broken-{uuid.uuid4().hex}"
    receiver.always(broken, 500)
    channels = f"""
[[monitor.alerts.channels]]
name = "broken"
type = "webhook"
url = "{receiver.url(broken)}"
min_severity = "info"
[[monitor.alerts.channels]]
name = "stuck"
type = "webhook"
url = "{stuck.url}"
min_severity = "info"
"""
    config_file = tmp_path / "renum.toml"
    config_file.write_text(config(receiver, smtp_port, extra_channels=channels))
    backend = launch(config_file)
    admin = ApiClient(backend.base_url).login(backend.admin_email, backend.admin_password)
    try:
        expect(admin.get(WATCHED), 200)
        # A notification is being sent to the channel that never answers...
        assert stuck.accepted.wait(30), "the stuck channel was never contacted"
        # ... and requests are answered meanwhile: the channel waits in the background.
        for _ in range(5):
            expect(admin.get(WATCHED), 200)
        assert not any(c.fileno() == -1 for c in stuck.connections)  # still held open

        # The broken channel is retried (same delivery, attempts counted) and shown failing.
        wait_until(lambda: len(receiver.requests_for(broken)) >= 3, timeout=30, what="retries")
        ids = {r.headers["renum-delivery"] for r in receiver.requests_for(broken)}
        attempts = [int(r.headers["renum-attempt"]) for r in receiver.requests_for(broken)]
        assert len(ids) < len(attempts)
        assert max(attempts) >= 2

        def failing() -> dict[str, Any] | None:
            channels = {c["name"]: c for c in expect(admin.get(ALERTS), 200)["channels"]}
            shown = channels["broken"]
            return dict(shown) if shown["failing"] else None

        shown = wait_until(failing, timeout=30, what="the broken channel shown failing")
        assert shown["last_error"] == "HTTP 500"
        channels = {c["name"]: c for c in expect(admin.get(ALERTS), 200)["channels"]}
        assert channels["hook"]["failing"] is False
        assert channels["hook"]["last_attempt_at"] is not None

        # The dashboard's stream carries the same alerts and channels.
        def streamed() -> dict[str, Any] | None:
            alerts = expect(admin.get(f"{API}/ops/monitor/stream"), 200)["alerts"]
            routes = [a["labels"].get("route") for a in (alerts or {}).get("active", [])]
            failing = [c["name"] for c in (alerts or {}).get("channels", []) if c["failing"]]
            # A retry being sent has no error yet: wait for a moment the channel shows failing.
            return dict(alerts) if WATCHED in routes and "broken" in failing else None

        alerts = wait_until(streamed, timeout=30, what="the alert and the failing channel")
        names = [c["name"] for c in alerts["channels"]]
        assert names == ["hook", "chat", "mail", "broken", "stuck"]
        assert alerts["evaluating"] is True
    finally:
        admin.close()
        backend.stop()
        stuck.close()


def test_silences_are_validated_and_admin_only(
    tmp_path: Path, receiver: WebhookReceiver, mailbox: tuple[Mailbox, int]
) -> None:
    _, smtp_port = mailbox
    config_file = tmp_path / "renum.toml"
    config_file.write_text(config(receiver, smtp_port, bound=1000.0))
    backend = launch(config_file)
    admin = ApiClient(backend.base_url).login(backend.admin_email, backend.admin_password)
    try:
        too_long = {"matchers": {"rule": RULE}, "reason": "r", "duration_minutes": 7 * 24 * 60 + 1}
        problem = admin.post(SILENCES, json=too_long)
        assert problem.status_code == 422
        assert problem.json()["errors"][0]["pointer"] == "/body/duration_minutes"
        assert admin.post(SILENCES, json={**too_long, "matchers": {}}).status_code == 422
        fine = {**too_long, "duration_minutes": 60}
        for wrong, pointer in (
            ({"matchers": {"severity": "critical"}}, "/body/matchers/severity"),
            ({"reason": "   "}, "/body/reason"),
            ({"duration_minutes": True}, "/body/duration_minutes"),
            ({"starts_at": "2030-01-01T00:00:00Z"}, "/body/starts_at"),
        ):
            refused = admin.post(SILENCES, json={**fine, **wrong})
            assert refused.status_code == 422, (wrong, refused.text)
            assert pointer in pointers(refused.json()), (wrong, refused.json())
        assert admin.delete(f"{SILENCES}/{uuid.uuid4()}").status_code == 404
        assert expect(admin.get(SILENCES), 200) == []
        anonymous = ApiClient(backend.base_url)
        assert anonymous.get(ALERTS).status_code == 401
        anonymous.close()
    finally:
        admin.close()
        backend.stop()


@pytest.mark.drill  # a long scenario: run by `nox -s drills`
def test_two_api_processes_evaluate_once_and_notify_once(
    tmp_path: Path, receiver: WebhookReceiver, mailbox: tuple[Mailbox, int]
) -> None:
    _, smtp_port = mailbox
    config_file = tmp_path / "renum.toml"
    config_file.write_text(config(receiver, smtp_port))
    backend = launch(config_file, "postgresql", workers=True)
    admin = ApiClient(backend.base_url).login(backend.admin_email, backend.admin_password)
    try:
        # Enough requests that both workers answer some of them.
        for _ in range(20):
            expect(admin.get(WATCHED), 200)
        alert = wait_until(lambda: watched_alert(admin), timeout=30, what="a firing alert")
        evaluated_after(admin, alert["fingerprint"], alert["seen_at"], rounds=5)
        sent = notifications(receiver, alert["fingerprint"])
        assert [n["type"] for n in sent] == ["alert.firing"]
        log = backend.log_text()
        assert log.count("alert_evaluator_elected") == 1
    finally:
        admin.close()
        backend.stop()


def test_one_process_holds_the_evaluator_lock_until_it_lets_go() -> None:
    """Two processes' leaderships on one PostgreSQL database: the first holds the advisory
    lock, the second does not get it, and takes it once the first lets go (as when a process
    stops or dies: its connection closes)."""
    name = f"renum_qa_{uuid.uuid4().hex[:12]}"
    url = services.create_postgres_database(name)

    async def scenario() -> list[bool]:
        first = SQLAlchemyManager(DatabaseSettings(url=url))
        second = SQLAlchemyManager(DatabaseSettings(url=url))
        one, two = Leadership(first), Leadership(second)
        try:
            seen = [await one.hold(), await two.hold(), await one.hold(), await two.hold()]
            await one.release()
            seen += [await two.hold(), await one.hold()]
            await two.release()
            return seen
        finally:
            await first.dispose()
            await second.dispose()

    try:
        assert asyncio.run(scenario()) == [True, False, True, False, True, False]
    finally:
        services.drop_postgres_database(name)


def test_processes_reporting_one_problem_at_once_notify_once() -> None:
    """Two processes (two apps on one PostgreSQL database) report the same problem at the same
    moment, then clear it at the same moment: one alert, one firing and one resolved
    notification, and no error to either reporter."""
    name = f"renum_qa_{uuid.uuid4().hex[:12]}"
    url = services.create_postgres_database(name)
    channel = {"name": "pager", "type": "webhook", "url": "http://127.0.0.1:9/alerts"}

    def settings() -> Settings:
        return Settings.model_validate(
            {
                "environment": "test",
                "secret_key": "alerts-race-secret-key-0123456789abcdefghijklmn",
                "database": {"url": url},
                "providers": {"openai_base_url": "http://127.0.0.1:9/v1"},
                "health": {"interval_seconds": 3600, "ttl_seconds": 7200},
                "deliveries": {"enabled": False},
                "monitor": {
                    "interval_seconds": 3600,
                    "alerts": {"evaluation_interval_seconds": 3600, "channels": [channel]},
                },
            }
        )

    async def scenario() -> list[tuple[str, str]]:
        first, second = create_app(settings()), create_app(settings())
        async with first.router.lifespan_context(first), second.router.lifespan_context(second):
            labels = {"target": "postgresql"}
            for _ in range(3):  # fire, clear; fire again (from resolved), clear
                await asyncio.gather(
                    first.state.alerts.report("backups", "critical", "failed", labels=labels),
                    second.state.alerts.report("backups", "critical", "failed", labels=labels),
                )
                await asyncio.gather(
                    first.state.alerts.clear("backups", labels=labels),
                    second.state.alerts.clear("backups", labels=labels),
                )
            async with first.state.alert_manager.database.session() as session:
                rows = (await session.scalars(select(Delivery).order_by(Delivery.created_at))).all()
                return [(row.kind, row.event) for row in rows]

    try:
        queued = asyncio.run(scenario())
    finally:
        services.drop_postgres_database(name)
    assert queued == [("alert:pager", "alert.firing"), ("alert:pager", "alert.resolved")] * 3
