"""Structured logging: redaction of secrets, JSON lines with the request id, console output."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
import structlog

from app.core import logging as logging_module
from app.core.config import Settings
from app.core.logging import (
    ACCESS_LOG,
    REDACTED,
    configure_logging,
    get_logger,
    redact_database_values,
    redact_secrets,
    scrub,
)

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


# --- the access log's own path ------------------------------------------------------------


class NotTaken:
    """Stands for the general path where the access log's own must be taken."""

    def info(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the general path was taken")


@pytest.mark.parametrize(
    ("request_id", "path"),
    [
        ("req-9", "/api/v1/teams"),
        (
            "req-9",
            '/api/v1/a"b\\c/\u00e9t\u00e9/\u2028/\x01',
        ),  # quote, backslash, non-ASCII, control
        ("req-9", "/api/v1/\udc80"),  # a lone surrogate (from a percent-encoded path)
        (API_KEY, "/api/v1/teams"),  # a client's X-Request-ID that looks like a key
        ("0123456789abcdef0123456789abcdef", "/api/v1/teams"),  # an id Renum made
        ("eyJhbGciOiJIUzI1NiJ9", "/api/v1/teams"),  # letters and digits: no secret pattern
        ("r\u00e9q9", "/api/v1/teams"),  # letters, not ASCII: escaped as the pipeline does
    ],
)
def test_an_access_line_is_the_line_the_general_pipeline_writes(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request_id: str,
    path: str,
) -> None:
    configure_logging(Settings(log_format="json"))
    assert ACCESS_LOG.enabled()
    with monkeypatch.context() as patched:
        patched.setattr(ACCESS_LOG, "_general", NotTaken())
        ACCESS_LOG.request(request_id, "GET", path, 200, 1.25)
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        get_logger("app.access").info(
            "request", method="GET", path=path, status=200, duration_ms=1.25
        )
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    own, general = _json_lines(capsys.readouterr().err)
    assert str(own.pop("timestamp")).endswith("Z")
    general.pop("timestamp")
    assert own == general
    assert own["event"] == "request"
    assert API_KEY not in json.dumps(own)


def test_an_access_line_the_stream_refuses_goes_the_general_way(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(Settings(log_format="json"))
    assert ACCESS_LOG.handler is not None

    class Refusing:
        def write(self, text: str) -> int:
            raise OSError("no space left on device")

        def flush(self) -> None:
            raise OSError("no space left on device")

    ACCESS_LOG.handler.setStream(Refusing())  # type: ignore[arg-type]
    ACCESS_LOG.request("req-5", "GET", "/livez", 200, 0.1)  # never raises to the request
    assert "Logging error" in capsys.readouterr().err  # logging's own report


def test_an_access_line_never_carries_a_secret_from_the_path(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(Settings(log_format="json"))
    ACCESS_LOG.request("req-1", "GET", f"/api/v1/keys/{API_KEY}/{JWT}", 404, 0.5)
    err = capsys.readouterr().err
    assert API_KEY not in err
    assert JWT not in err
    (line,) = _json_lines(err)
    assert line["path"] == f"/api/v1/keys/{REDACTED}/{REDACTED}"


def test_access_lines_of_one_route_share_their_rendering_within_a_bound(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_logging(Settings(log_format="json"))
    monkeypatch.setattr(logging_module, "MAX_MIDDLES", 3)
    scrubbed: list[object] = []
    real_scrub = logging_module.scrub

    def counting_scrub(value: object) -> object:
        scrubbed.append(value)
        return real_scrub(value)

    monkeypatch.setattr(logging_module, "scrub", counting_scrub)
    ACCESS_LOG._middles.clear()
    secret_path = f"/api/v1/keys/{API_KEY}"
    long_path = "/" + "a" * logging_module.MAX_CACHED_PATH
    paths = [secret_path, secret_path, "/a", "/b", "/c", secret_path, long_path, long_path]
    for path in paths:
        ACCESS_LOG.request("req1", "GET", path, 200, 0.5)
    ACCESS_LOG.flush()
    lines = _json_lines(capsys.readouterr().err)
    assert [line["path"] for line in lines] == [
        f"/api/v1/keys/{REDACTED}", f"/api/v1/keys/{REDACTED}", "/a", "/b", "/c",
        f"/api/v1/keys/{REDACTED}", long_path, long_path,
    ]  # fmt: skip
    # Rendered once while kept: the secret path again only after the bound forgot it; a path
    # over MAX_CACHED_PATH is never kept.
    assert scrubbed == [secret_path, "/a", "/b", "/c", secret_path, long_path, long_path]
    assert len(ACCESS_LOG._middles) <= 3
    assert all(len(path) <= logging_module.MAX_CACHED_PATH for _, path, _ in ACCESS_LOG._middles)


class Collecting(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_access_lines_take_the_general_path_beside_another_handler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(Settings(log_format="json"))
    other = Collecting()  # an operator's handler, or a test's
    logging.getLogger().addHandler(other)
    try:
        ACCESS_LOG.request("req-2", "POST", "/api/v1/agents", 201, 3.0)
    finally:
        logging.getLogger().removeHandler(other)
    assert [r.name for r in other.records] == ["app.access"]
    (line,) = _json_lines(capsys.readouterr().err)
    assert (line["event"], line["status"], line["request_id"]) == ("request", 201, "req-2")


def test_access_lines_follow_the_level_and_the_console_format(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(Settings(log_format="json", log_level="WARNING"))
    assert not ACCESS_LOG.enabled()
    logging.getLogger().setLevel("INFO")  # what a live reload does
    assert ACCESS_LOG.enabled()
    configure_logging(Settings(environment="development"))  # console lines
    ACCESS_LOG.request("req-3", "GET", "/livez", 200, 0.1)
    err = capsys.readouterr().err
    assert "request" in err
    assert "/livez" in err
    assert not err.lstrip().startswith("{")


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


@pytest.mark.parametrize(
    ("message", "kept", "value"),
    [
        (
            'duplicate key value violates unique constraint "uq_users_email"\n'
            "DETAIL:  Key (email)=(ada@example.com) already exists.",
            'unique constraint "uq_users_email"',
            "ada@example.com",
        ),
        (
            'new row for relation "executions" violates check constraint "ck_prompt"\n'
            "DETAIL:  Failing row contains (1, the secret prompt, running).",
            'check constraint "ck_prompt"',
            "the secret prompt",
        ),
        (
            "invalid input for query argument $2: 'sk-live-key' (expected str, got int)",
            "invalid input for query argument $2:",
            "sk-live-key",
        ),
        (
            "invalid input for query argument $1: 1099511627776 (value out of int32 range)",
            "query argument $1",
            "1099511627776",
        ),
        ('invalid input syntax for type uuid: "not-a-uuid"', "for type uuid", "not-a-uuid"),
        ('value "99999999999" is out of range for type integer', "out of range", "99999999999"),
        ("[SQL: SELECT 1]\n[parameters: ('hunter2', 3)]", "[SQL: SELECT 1]", "hunter2"),
    ],
)
def test_database_values_are_redacted_identifiers_kept(message: str, kept: str, value: str) -> None:
    redacted = redact_database_values(message)
    assert value not in redacted
    assert kept in redacted


def test_messages_without_values_pass_unchanged() -> None:
    for message in (
        'invalid byte sequence for encoding "UTF8": 0x00',
        "UNIQUE constraint failed: users.email",
        "value too long for type character varying(120)",
        'File "app/services/auth.py", line 3, in login',
    ):
        assert redact_database_values(message) == message


def test_a_logged_traceback_loses_the_database_values_of_its_whole_chain(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As asyncpg's error is the cause of SQLAlchemy's: every exception of the chain is
    rendered in the log line, and none keeps a value."""
    configure_logging(Settings(log_format="json"))
    key_hash, prompt = "9f86d081" + "884c7d65", "the " + "prompt"

    try:
        try:
            raise _DataError(
                'duplicate key value violates unique constraint "uq_api_keys_key_hash"\n'
                f"DETAIL:  Key (key_hash)=({key_hash}) already exists."
            )
        except _DataError as driver_error:
            raise RuntimeError(
                f"(UniqueViolationError) duplicate key ('{key_hash}', '{prompt}')"
            ) from driver_error
    except RuntimeError:
        get_logger("unit.db").exception("unhandled_error")
    (line,) = _json_lines(capsys.readouterr().err)
    rendered = str(line["exception"])
    assert "asyncpg.exceptions._DataError" in rendered
    assert "RuntimeError: (UniqueViolationError) duplicate key" in rendered
    assert "uq_api_keys_key_hash" in rendered
    assert key_hash not in rendered
    assert prompt not in rendered


class _DataError(Exception):
    """Stands for a driver's error (the module decides what counts as a database error)."""


_DataError.__module__ = "asyncpg.exceptions"


class _StatementError(Exception):
    """Stands for SQLAlchemy's error: a statement and the driver's error it wraps."""

    def __init__(self, message: str, statement: str, orig: BaseException) -> None:
        super().__init__(message)
        self.statement = statement
        self.orig = orig


_StatementError.__module__ = "sqlalchemy.exc"


def test_a_database_error_chain_is_rendered_without_any_value() -> None:
    """Whatever a driver or its codecs echo (a value in a ValueError deep in the chain, a
    DETAIL line, a quoted literal), the rendered chain keeps class names, frames, the
    statement and the constraint names, and no value; the exceptions are not changed."""
    from app.core.logging import render_exception

    secret = "s3cr3t" + "-value"  # never written out whole: source lines are rendered too

    def raise_chain() -> None:
        try:
            try:
                raise ValueError(f"invalid UUID '{secret}': length must be 32..36")
            except ValueError as codec:
                raise _DataError(
                    f"invalid input for query argument $1: '{secret}' (invalid UUID)\n"
                    f"DETAIL:  Key (id)=({secret}) already exists."
                ) from codec
        except _DataError as driver:
            raise _StatementError(
                f"(DataError) ... [parameters: ('{secret}',)]",
                "SELECT * FROM t WHERE id = $1 AND \"name\" = 'literal'",
                driver,
            ) from driver

    with pytest.raises(_StatementError) as caught:
        raise_chain()
    rendered = render_exception(caught.value)
    assert secret not in rendered
    assert "ValueError" in rendered
    assert "asyncpg.exceptions._DataError" in rendered
    assert "sqlalchemy.exc._StatementError" in rendered
    assert "[SQL: SELECT * FROM t WHERE id = $1" in rendered
    assert "in raise_chain" in rendered  # the frames are kept
    assert secret in str(caught.value.__cause__)  # the original is untouched
    assert isinstance(caught.value.__cause__.__cause__, ValueError)


def test_identifiers_in_a_database_error_stay() -> None:
    from app.core.logging import render_exception

    error = _DataError(
        'duplicate key value violates unique constraint "uq_users_email"\n'
        "DETAIL:  Key (email)=(ada@example.com) already exists."
    )
    rendered = render_exception(error)
    assert 'unique constraint "uq_users_email"' in rendered
    assert "ada@example.com" not in rendered


def test_other_tracebacks_are_rendered_as_python_does() -> None:
    import traceback

    from app.core.logging import render_exception

    with pytest.raises(KeyError) as caught:
        raise KeyError("a 'quoted' key")
    expected = "".join(traceback.format_exception(caught.value)).rstrip("\n")
    assert render_exception(caught.value) == expected


# --- access lines on an event loop ------------------------------------------------------


def test_access_lines_on_a_loop_wait_and_are_written_together_in_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(Settings(log_format="json"))

    async def serve() -> tuple[str, str]:
        ACCESS_LOG.request("req-a", "GET", "/livez", 200, 0.1)
        ACCESS_LOG.request("req-b", "GET", "/livez", 200, 0.1)
        waiting = capsys.readouterr().err  # nothing written yet
        await asyncio.sleep(logging_module.FLUSH_SECONDS * 3)
        return waiting, capsys.readouterr().err

    waiting, written = asyncio.run(serve())
    assert waiting == ""
    assert [line["request_id"] for line in _json_lines(written)] == ["req-a", "req-b"]


def test_another_record_writes_the_waiting_access_lines_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(Settings(log_format="json"))

    async def serve() -> None:
        ACCESS_LOG.request("req-c", "GET", "/livez", 200, 0.1)
        get_logger("app").warning("something_else")

    asyncio.run(serve())
    lines = _json_lines(capsys.readouterr().err)
    assert [line["event"] for line in lines] == ["request", "something_else"]


def test_a_full_buffer_is_written_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json"))

    async def serve() -> int:
        for n in range(logging_module.MAX_WAITING):
            ACCESS_LOG.request(f"req-{n}", "GET", "/livez", 200, 0.1)
        return len(_json_lines(capsys.readouterr().err))

    assert asyncio.run(serve()) == logging_module.MAX_WAITING


def test_lines_logged_on_a_second_loop_are_written_though_the_first_stopped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(Settings(log_format="json"))
    first = asyncio.new_event_loop()

    async def log_one(request_id: str) -> None:
        ACCESS_LOG.request(request_id, "GET", "/livez", 200, 0.1)

    first.run_until_complete(log_one("req-first"))  # a write scheduled on `first`, which
    # then stops without closing: its timer never fires

    async def on_the_second_loop() -> None:
        await log_one("req-second")
        await asyncio.sleep(logging_module.FLUSH_SECONDS * 3)

    asyncio.run(on_the_second_loop())
    first.close()
    ids = [line["request_id"] for line in _json_lines(capsys.readouterr().err)]
    assert ids == ["req-first", "req-second"]


def test_a_batch_the_stream_took_is_never_written_twice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(Settings(log_format="json"))
    assert ACCESS_LOG.handler is not None
    written: list[str] = []

    class FlushFails:
        def write(self, text: str) -> int:
            written.append(text)
            return len(text)

        def flush(self) -> None:
            raise OSError("the pipe is full")

    ACCESS_LOG.handler.setStream(FlushFails())  # type: ignore[arg-type]

    async def serve() -> None:
        ACCESS_LOG.request("req-once", "GET", "/livez", 200, 0.1)

    asyncio.run(serve())
    ACCESS_LOG.flush()
    assert "".join(written).count("req-once") == 1
    assert "Logging error" in capsys.readouterr().err  # the failed flush is reported
