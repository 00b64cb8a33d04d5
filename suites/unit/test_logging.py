"""Structured logging: redaction of secrets, JSON lines with the request id, console output."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from app.core.config import Settings
from app.core.logging import REDACTED, configure_logging, get_logger, redact_secrets, scrub

API_KEY = "rk_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0U1v"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjMifQ"
    ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
)


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# --- scrub ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "new_password",
        "PASSWORD_HASH",
        "client_secret",
        "secret_key",
        "access_token",
        "refresh_token",
        "Authorization",
        "api_key",
        "apikey",
        "X-ApiKey",
        "cookie",
        "set-cookie",
        "credentials",
        "private_key",
    ],
)
def test_secret_looking_keys_are_redacted_whatever_the_value(key: str) -> None:
    assert scrub({key: "plain value", "user": "ada"}) == {key: REDACTED, "user": "ada"}
    assert scrub({key: {"nested": 1}})[key] == REDACTED


def test_innocent_keys_and_values_pass_unchanged() -> None:
    event = {"event": "login", "email": "ada@example.com", "count": 3, "ok": True, "x": None}
    assert scrub(event) == event


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"calling with {API_KEY} now", API_KEY),
        (f"token={JWT}", JWT),
        (f"Authorization: Bearer {API_KEY}", API_KEY),
        ("Authorization: bearer abc.def-ghi", "abc.def-ghi"),
        ("header BEARER   opaque-session-value", "opaque-session-value"),
        (f'{{"Authorization": "Bearer {JWT}"}}', JWT),
    ],
)
def test_secret_looking_values_are_redacted_under_any_key(text: str, secret: str) -> None:
    cleaned = scrub({"message": text})["message"]
    assert secret not in cleaned
    assert REDACTED in cleaned


def test_bearer_keeps_the_scheme_word() -> None:
    assert scrub("Bearer xyz") == f"Bearer {REDACTED}"


def test_short_rk_strings_are_not_keys() -> None:
    assert scrub("the rk_short word and work_items") == "the rk_short word and work_items"


def test_nested_structures_are_scrubbed_and_keep_their_types() -> None:
    event = {
        "outer": {
            "inner": [API_KEY, ("tuple", JWT), {"token": "x", "name": "n"}],
            "password": ["a", "b"],
        },
        "numbers": (1, 2),
        3: "non-string key",
    }
    cleaned = scrub(event)
    inner = cleaned["outer"]["inner"]
    assert inner[0] == REDACTED
    assert isinstance(inner[1], tuple)
    assert inner[1] == ("tuple", REDACTED)
    assert inner[2] == {"token": REDACTED, "name": "n"}
    assert cleaned["outer"]["password"] == REDACTED
    assert cleaned["numbers"] == (1, 2)
    assert cleaned[3] == "non-string key"


def test_scrub_leaves_non_text_values_alone() -> None:
    marker = object()
    assert scrub(marker) is marker
    assert scrub(42) == 42


def test_redact_secrets_processor() -> None:
    event = {
        "event": f"used {API_KEY}",
        "password": "hunter2",
        "details": {"refresh_token": "r", "ok": 1},
        "request_id": "abc",
    }
    result = redact_secrets(None, "info", event)
    assert result is event  # processors mutate and return the same dict
    assert event == {
        "event": f"used {REDACTED}",
        "password": REDACTED,
        "details": {"refresh_token": REDACTED, "ok": 1},
        "request_id": "abc",
    }


# --- configure_logging ------------------------------------------------------------------


def test_json_lines_carry_the_request_id_and_no_secret(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json"))
    log = get_logger("unit.test")
    structlog.contextvars.bind_contextvars(request_id="req-123")
    try:
        log.info(
            "user_login", email="ada@example.com", password="hunter2", note=f"Bearer {API_KEY}"
        )
        logging.getLogger("some.library").warning("stdlib says %s", JWT)
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    log.info("after_request")
    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert API_KEY not in err
    assert JWT not in err
    lines = _json_lines(err)
    assert len(lines) == 3
    first, second, third = lines
    assert first["event"] == "user_login"
    assert first["request_id"] == "req-123"
    assert first["level"] == "info"
    assert first["logger"] == "unit.test"
    assert first["password"] == REDACTED
    assert first["note"] == f"Bearer {REDACTED}"
    assert str(first["timestamp"]).endswith("Z")
    assert second["event"] == f"stdlib says {REDACTED}"
    assert second["request_id"] == "req-123"
    assert second["level"] == "warning"
    assert second["logger"] == "some.library"
    assert third["event"] == "after_request"
    assert "request_id" not in third


def test_level_filter_drops_lower_events(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json", log_level="WARNING"))
    get_logger("unit.level").info("dropped")
    get_logger("unit.level").warning("kept")
    lines = _json_lines(capsys.readouterr().err)
    assert [line["event"] for line in lines] == ["kept"]


def test_exceptions_are_rendered_into_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json"))
    try:
        raise ValueError("boom")
    except ValueError:
        get_logger("unit.exc").exception("failed")
    (line,) = _json_lines(capsys.readouterr().err)
    assert line["event"] == "failed"
    assert "ValueError: boom" in str(line["exception"])


def test_console_format_is_not_json_and_still_redacts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(Settings(environment="development"))  # auto -> console
    get_logger("unit.console").info("console_event", token="secret-token-value")
    err = capsys.readouterr().err
    assert "console_event" in err
    assert "secret-token-value" not in err
    assert not err.lstrip().startswith("{")


def test_uvicorn_color_message_is_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json"))
    # Uvicorn's loggers are shared with every in-process server the suite runs; a private
    # logger carries the same record shape.
    logging.getLogger("unit.uvicorn_like").info(
        "Started server", extra={"color_message": "\x1b[1mStarted\x1b[0m"}
    )
    (line,) = _json_lines(capsys.readouterr().err)
    assert line["event"] == "Started server"
    assert "color_message" not in line


def test_library_loggers_are_wired(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json", database={"echo": True}))
    assert logging.getLogger("uvicorn.access").disabled
    assert logging.getLogger("uvicorn").propagate
    assert logging.getLogger("uvicorn").handlers == []
    assert logging.getLogger("sqlalchemy.engine").level == logging.INFO
    assert len(logging.getLogger().handlers) == 1
    configure_logging(Settings(log_format="json"))
    assert logging.getLogger("sqlalchemy.engine").level == logging.WARNING
    assert len(logging.getLogger().handlers) == 1  # reconfiguring replaces, never stacks
