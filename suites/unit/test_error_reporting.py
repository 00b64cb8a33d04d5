"""Error reports to Sentry: errors the log records reach a Sentry receiver on loopback (the
SDK's own transport, envelopes decoded as Sentry reads them), with their exception and frames,
scrubbed of secrets, without request data, local variables or the record's other fields;
nothing is sent below the error level or while the DSN is unset; bad DSNs are refused."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import brotli
import httpx
import pytest
import sentry_sdk
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from app.core import error_reporting
from app.core.config import ErrorReportingSettings, Settings
from app.core.errors import install_error_handlers
from app.core.logging import configure_logging, get_logger
from app.core.middleware import RequestContextMiddleware
from qa.polling import wait_until
from qa.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.anyio

API_KEY = "rk_live_0123456789abcdefghijklmnopqrstuv"
PROMPT = "the tenant's secret prompt about Project Falcon"
COOKIE = "session=cookie-value-7f3"
BEARER = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


class Receiver:
    """The harness's loopback receiver (``qa.webhook_receiver``) read as a Sentry ingestion
    endpoint: what reached the project's envelope path, decoded."""

    PATH = "/api/42/envelope/"

    def __init__(self, server: WebhookReceiver) -> None:
        self.server = server

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.server.port}/42"

    @property
    def raw(self) -> list[bytes]:
        """Each envelope's bytes, uncompressed."""
        decoders = {"gzip": gzip.decompress, "br": brotli.decompress}
        return [
            decoders.get(request.headers.get("content-encoding", ""), bytes)(request.body)
            for request in self.server.requests_for(self.PATH)
        ]

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events the envelopes carry (an item header line, then its payload line)."""
        found = []
        for body in self.raw:
            lines = body.split(b"\n")
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if json.loads(header).get("type") == "event":
                    found.append(json.loads(payload))
        return found


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with WebhookReceiver() as server:
        yield Receiver(server)


@pytest.fixture
def reporting(receiver: Receiver, settings: Settings) -> Iterator[Settings]:
    """The log configured with reports to the receiver; plain again afterwards."""
    reported = settings.model_copy(
        update={
            "error_reporting": ErrorReportingSettings.model_validate({"sentry_dsn": receiver.dsn})
        }
    )
    configure_logging(reported)
    yield reported
    configure_logging(settings)


def failing_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/t/boom")
    async def boom() -> None:
        prompt = PROMPT  # a local variable no report may carry
        raise RuntimeError(f"the provider refused key {API_KEY} for {len(prompt)} characters")

    app.add_middleware(RequestContextMiddleware, max_body_bytes=1024)
    return app


def sent(receiver: Receiver, count: int) -> list[dict[str, Any]]:
    error_reporting.flush_error_reports(timeout=5)
    events: list[dict[str, Any]] = wait_until(
        lambda: receiver.events if len(receiver.events) >= count else []
    )
    return events


async def test_an_unhandled_error_is_reported_scrubbed_with_its_frames(
    receiver: Receiver, reporting: Settings
) -> None:
    transport = httpx.ASGITransport(app=failing_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://unit") as http:
        answer = await http.post(
            "/t/boom",
            json={"prompt": PROMPT},
            headers={
                "Authorization": BEARER,
                "X-Request-ID": "req-42",
                "Cookie": "session=cookie-value-7f3",
            },
        )
    assert answer.status_code == 500
    [event] = sent(receiver, 1)
    [exception] = event["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert "[redacted]" in exception["value"]
    functions = [frame["function"] for frame in exception["stacktrace"]["frames"]]
    assert "boom" in functions
    assert all("vars" not in frame for frame in exception["stacktrace"]["frames"])
    assert event["tags"] == {
        "logger": "app.access",
        "log_event": "unhandled_error",
        "request_id": "req-42",
    }
    assert event["environment"] == reporting.environment.value
    assert event["release"].startswith("renum@")
    assert not {"request", "user", "breadcrumbs", "extra"} & set(event)
    everything = b"".join(receiver.raw).decode()
    for secret in (API_KEY, PROMPT, BEARER, "Project Falcon", COOKIE):
        assert secret not in everything


async def test_a_database_error_is_reported_as_the_log_shows_it(
    receiver: Receiver, reporting: Settings
) -> None:
    """No value of the statement or of the driver's message leaves the process."""
    driver = Exception('duplicate key value violates unique constraint\nDETAIL: (email)=("a@b.c")')
    error = IntegrityError("INSERT INTO users (email) VALUES ($1)", ("a@b.c",), driver)
    get_logger("app.engine").error("step_commit_failed", exc_info=error)
    [event] = sent(receiver, 1)
    [exception] = event["exception"]["values"]
    assert exception["type"] == "IntegrityError"
    assert "INSERT INTO users (email) VALUES ($1)" in exception["value"]
    assert "a@b.c" not in json.dumps(event)
    assert event["tags"]["log_event"] == "step_commit_failed"


async def test_errors_without_an_exception_are_messages_and_warnings_are_not_sent(
    receiver: Receiver, reporting: Settings
) -> None:
    log = get_logger("app.alerts")
    log.warning("channel_slow", channel="ops")
    get_logger("sentry_sdk.errors").error("Internal error in sentry_sdk")  # never reported back
    log.critical("evaluator_stopped", password="hunter2-password", prompt=PROMPT)
    [event] = sent(receiver, 1)
    assert event["message"] == "evaluator_stopped"
    assert event["level"] == "fatal"
    assert event["tags"] == {"logger": "app.alerts", "log_event": "evaluator_stopped"}
    everything = b"".join(receiver.raw).decode()
    assert "hunter2" not in everything
    assert PROMPT not in everything
    assert "channel_slow" not in everything
    assert "Internal error" not in everything


async def test_nothing_is_sent_once_the_dsn_is_unset(
    receiver: Receiver, reporting: Settings, settings: Settings
) -> None:
    log = get_logger("app.engine")
    log.error("engine_crashed", exc_info=RuntimeError("boom"))
    assert len(sent(receiver, 1)) == 1
    configure_logging(settings)  # the DSN unset: reporting stops
    assert not sentry_sdk.get_client().is_active()
    log.error("engine_crashed_again", exc_info=RuntimeError("boom"))
    error_reporting.flush_error_reports(timeout=1)
    assert [event["tags"]["log_event"] for event in receiver.events] == ["engine_crashed"]


async def test_messages_leave_cut_to_their_first_line_with_quoted_values_redacted(
    receiver: Receiver, reporting: Settings
) -> None:
    """Stricter than the log: an exception's message (and its cause's) keeps only its first
    line, quoted values redacted; a validation error echoing its input keeps none of it."""
    try:
        try:
            raise KeyError(f"'{PROMPT}'")
        except KeyError as cause:
            raise ValueError(f"output 'the model said {PROMPT}' was refused\n{PROMPT}") from cause
    except ValueError as error:
        get_logger("app.engine").error("step_failed", exc_info=error)
    [event] = sent(receiver, 1)
    values = {e["type"]: e["value"] for e in event["exception"]["values"]}
    assert set(values) == {"KeyError", "ValueError"}
    assert "was refused" in values["ValueError"]
    assert PROMPT not in json.dumps(event)


async def test_a_flood_of_one_error_is_cut_to_its_burst(
    receiver: Receiver, reporting: Settings
) -> None:
    """A dependency failing every few seconds: ``BURST`` reports of a kind per window, then
    none until the window ends; another kind still goes."""
    log = get_logger("app.tracing")
    for n in range(error_reporting.BURST + 5):
        log.error("export_failed", attempt=n)
    log.error("another_problem")
    events = sent(receiver, error_reporting.BURST + 1)
    error_reporting.flush_error_reports(timeout=1)
    kinds = [event["tags"]["log_event"] for event in receiver.events]
    assert kinds.count("export_failed") == error_reporting.BURST
    assert kinds.count("another_problem") == 1
    assert len(events) == error_reporting.BURST + 1


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("ftp://key@sentry.example/1", "https://<public key>@<host>/<project id>"),
        ("https://sentry.example/1", "https://<public key>@<host>/<project id>"),
        ("https://key@sentry.example/project", "ends with its project's number"),
        ("not a url", "https://<public key>@<host>/<project id>"),
        ("https://key@sentry.example:99999/1", "the SDK cannot read this Sentry DSN"),
    ],
)
def test_a_malformed_dsn_is_refused(dsn: str, message: str) -> None:
    with pytest.raises(ValidationError, match="sentry_dsn") as caught:
        ErrorReportingSettings.model_validate({"sentry_dsn": dsn})
    [error] = caught.value.errors()
    assert message in error["msg"]
    assert "key" not in error["msg"].replace("public key", "")  # the DSN's key is not echoed
