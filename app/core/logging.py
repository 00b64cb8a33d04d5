"""Structured logging: one event per line, the request id on every line, never a secret.

structlog renders JSON outside development and a readable console format in development.
Standard-library loggers (uvicorn, SQLAlchemy, Alembic) go through the same processors, so
every line carries the same fields and passes the same redaction.

Database errors never carry the values of a statement into a log: every engine hides SQL
parameters (``hide_parameters=True``), and a logged traceback loses what drivers echo of them
(PostgreSQL's ``DETAIL:`` lines, asyncpg's ``invalid input for query argument $1: <value>``,
quoted input values in messages). Tracebacks are plain text: no local variables.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import logging
import re
import sys
import time
import traceback
from collections import deque
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from app.core.config import Settings
from app.core.request_context import current_request_id

REDACTED = "[redacted]"

# Keys whose values are secrets wherever they appear in an event.
_SECRET_KEY_PARTS = (
    "password",
    "secret",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "cookie",
    "credential",
    "private_key",
)

# Values that look like secrets even under an innocent key, in two passes. JWTs first, so an
# API-key match can never swallow a JWT's header alone ("rk_" + "eyJ..." up to its first dot);
# then Renum API keys and whatever follows "Bearer " (group 1 keeps the scheme) in one.
_SECRET_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_SECRET_VALUE = re.compile(r"rk_[A-Za-z0-9_-]{16,}|(?i:(bearer\s+))[^\s\"']+")


def _may_hold_secret(text: str) -> bool:
    """Whether ``text`` holds what both patterns above start with (a few substring tests, a
    tenth of a search with them): text without any is left as it is."""
    return "rk_" in text or "eyJ" in text or "bearer" in text.lower()


_SECRET_KEY = re.compile("|".join(map(re.escape, _SECRET_KEY_PARTS)), re.IGNORECASE)


# What database drivers echo of a statement's values in their error messages.
_DATABASE_VALUE_PATTERNS = (
    # PostgreSQL's DETAIL: "Key (email)=(ada@example.com) already exists.", "Failing row
    # contains (...)": a row's values.
    (re.compile(r"(?m)^([ \t]*DETAIL:)[^\n]*"), r"\1 [redacted]"),
    # asyncpg: "invalid input for query argument $2: 'the value' (reason)".
    (re.compile(r"(query argument \$\d+:)[^\n]*"), r"\1 [redacted]"),
    # SQLAlchemy's parameter list, should an engine ever be built without hide_parameters.
    (re.compile(r"(?m)^([ \t]*\[parameters:)[^\n]*"), r"\1 [redacted]]"),
    # PostgreSQL: 'invalid input syntax for type uuid: "abc"', 'value "9" is out of range'.
    (re.compile(r'(?m)(: )"[^"\n]*"(?=[ \t]*$)'), r'\1"[redacted]"'),
    (re.compile(r'(\bvalue )"[^"\n]*"'), r'\1"[redacted]"'),
)
# In a database error's message a quoted text is a value unless it names something.
_QUOTED = re.compile(r"\"[^\"\n]*\"|'[^'\n]*'")
_NAMES_FOLLOW = re.compile(
    r"\b(?:class|collation|column|constraint|cursor|database|domain|encoding|extension|function"
    r"|index|operator|parameter|relation|role|savepoint|schema|sequence|statement|table"
    r"|tablespace|trigger|type|user|view)\s+$",
    re.IGNORECASE,
)
_DATABASE_PACKAGES = frozenset({"sqlalchemy", "asyncpg", "sqlite3", "aiosqlite", "psycopg"})


def redact_database_values(text: str) -> str:
    """``text`` (an error message or a traceback) without the statement values that database
    drivers are known to echo; identifiers (tables, columns, constraints) and SQL stay."""
    for pattern, replacement in _DATABASE_VALUE_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_quoted(message: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if _NAMES_FOLLOW.search(message[max(0, match.start() - 40) : match.start()]):
            return match.group(0)
        quote = match.group(0)[0]
        return f"{quote}{REDACTED}{quote}"

    return _QUOTED.sub(replace, message)


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        pending += [current.__cause__, current.__context__]
    return found


def _from_database(exc: BaseException) -> bool:
    return type(exc).__module__.split(".", 1)[0] in _DATABASE_PACKAGES


# The longest message ``safe_text`` keeps.
MESSAGE_CHARS = 200


def safe_text(text: str) -> str:
    """A message as it may leave: its first line, at most ``MESSAGE_CHARS``, quoted values
    and database values redacted."""
    return redact_database_values(_redact_quoted(text.split("\n", 1)[0][:MESSAGE_CHARS]))


def _safe_message(exc: BaseException) -> str:
    """A database error's message as it may be logged: its first line with quoted values
    redacted (and, for SQLAlchemy's errors, the statement, whose values are parameters)."""
    statement = getattr(exc, "statement", None)
    orig = getattr(exc, "orig", None)
    if isinstance(statement, str) and isinstance(orig, BaseException):
        kind = f"{type(orig).__module__}.{type(orig).__qualname__}"
        first = redact_database_values(_redact_quoted(str(orig).split("\n", 1)[0]))
        return f"({kind}) {first}\n[SQL: {statement}]\n[SQL parameters hidden]"
    text = str(exc).split("\n", 1)[0]
    return redact_database_values(_redact_quoted(text))


_stand_in_classes: dict[type[BaseException], type[Exception]] = {}


def _stand_in(exc: BaseException, made: dict[int, BaseException]) -> BaseException:
    """A copy of ``exc`` and its causes that renders as the original does (same class names,
    same frames), with safe messages; the original is left untouched."""
    if id(exc) in made:
        return made[id(exc)]
    original = type(exc)
    cls = _stand_in_classes.get(original)
    if cls is None:
        attributes = {"__module__": original.__module__, "__qualname__": original.__qualname__}
        cls = _stand_in_classes[original] = type(original.__name__, (Exception,), attributes)
    copy = cls(_safe_message(exc))
    made[id(exc)] = copy
    copy.__traceback__ = exc.__traceback__
    if exc.__cause__ is not None:
        copy.__cause__ = _stand_in(exc.__cause__, made)
    if exc.__context__ is not None:
        copy.__context__ = _stand_in(exc.__context__, made)
    copy.__suppress_context__ = exc.__suppress_context__
    return copy


def loggable_exception(exc: BaseException) -> BaseException | None:
    """``exc`` as it may leave the process: itself when no database error is part of it; else
    a stand-in whose every message keeps only its first line with quoted values redacted, and
    whose SQLAlchemy errors show their statement without values; None for an exception group
    holding a database error (only its text, redacted by pattern, may leave)."""
    chain = _chain(exc)
    if not any(_from_database(e) for e in chain):
        return exc
    if any(isinstance(e, BaseExceptionGroup) for e in chain):  # rare: the known patterns
        return None
    return _stand_in(exc, {})


def reportable_exception(exc: BaseException) -> BaseException | None:
    """``exc`` as it may leave for an error tracker, stricter than the log: a stand-in whose
    every message (the chain's too) keeps only its first line with quoted values redacted, as
    ``loggable_exception`` does for database errors; None for an exception group."""
    if any(isinstance(e, BaseExceptionGroup) for e in _chain(exc)):
        return None
    return _stand_in(exc, {})


def render_exception(exc: BaseException) -> str:
    """``exc`` as a plain traceback (frames and messages, never local variables), as
    ``loggable_exception`` makes it: no parameter or row reaches the log, whatever the driver
    echoed."""
    safe = loggable_exception(exc)
    if safe is None:
        return redact_database_values("".join(traceback.format_exception(exc)).rstrip("\n"))
    return "".join(traceback.format_exception(safe)).rstrip("\n")


def exception_of(exc_info: Any) -> BaseException | None:
    """The exception a record's ``exc_info`` names: an exception, a ``sys.exc_info()`` tuple,
    or true for the one being handled."""
    if not exc_info:
        return None
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        found = exc_info[1]
        return found if isinstance(found, BaseException) else None
    return sys.exc_info()[1]


def format_exc_info(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: ``exc_info`` rendered by ``render_exception`` as ``exception``."""
    exc = exception_of(event_dict.pop("exc_info", None))
    if exc is not None:
        event_dict["exception"] = render_exception(exc)
    return event_dict


@functools.lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    """Whether a field named ``key`` holds a secret (the names a line uses are few: cached)."""
    return _SECRET_KEY.search(key) is not None


def _redacted(match: re.Match[str]) -> str:
    scheme = match.group(1)
    return f"{scheme}{REDACTED}" if scheme else REDACTED


def scrub(value: Any) -> Any:
    """Return ``value`` with every secret-looking part replaced by ``[redacted]``."""
    if isinstance(value, str):
        if not _may_hold_secret(value):
            return value
        return _SECRET_VALUE.sub(_redacted, _SECRET_JWT.sub(REDACTED, value))
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and _is_secret_key(k) else scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(scrub(v) for v in value)
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: drop secrets from keys and values."""
    for key in list(event_dict):
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = scrub(event_dict[key])
    return event_dict


def add_request_id(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the id of the request being handled (``app.core.request_context``),
    on every line logged while it is, unless the event names one itself."""
    request_id = current_request_id()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


def _drop_color_message(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Uvicorn adds an ANSI-coloured copy of its message; one copy is enough."""
    event_dict.pop("color_message", None)
    return event_dict


def configure_logging(settings: Settings) -> None:
    """Configure structlog and the standard library's root logger from the settings, and the
    error reports that go with the log (``app.core.error_reporting``)."""
    from app.core.error_reporting import configure_error_reporting, report_errors

    configure_error_reporting(settings.error_reporting, settings.environment.value)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_request_id,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        report_errors,
        format_exc_info,
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.json_logs
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), _drop_color_message, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = AccessOrderedHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    ACCESS_LOG.handler = handler if settings.json_logs else None
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Requests are logged once by Renum's own middleware, with the request id.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("sqlalchemy.engine").setLevel(
        logging.INFO if settings.database.echo else logging.WARNING
    )


def _json_string(text: str) -> str:
    """``text`` as a JSON string: printable ASCII without the quote and the backslash is its
    own JSON string; any other text goes through ``json.dumps``."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


class AccessOrderedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stream handler of ``configure_logging``: writes the access lines still waiting in
    ``ACCESS_LOG`` before any other record, so the stream keeps the order of events."""

    def emit(self, record: logging.LogRecord) -> None:
        ACCESS_LOG.flush()
        super().emit(record)


# Access lines wait at most this long, or until this many are waiting, before they are written
# together (one write to the stream for many requests, like nginx's ``access_log buffer= flush=``).
FLUSH_SECONDS = 0.1
MAX_WAITING = 256
MAX_MIDDLES = 1024
MAX_CACHED_PATH = 256


def _sole_root_handler(handler: logging.Handler) -> bool:
    handlers = logging.root.handlers
    return len(handlers) == 1 and handlers[0] is handler


class AccessLog:
    """The access log: one ``request`` event per HTTP request, on the ``app.access`` logger.

    It is the one event every request writes, so it has its own path: with JSON logs and the
    handler ``configure_logging`` installed as the only one, the line is rendered here (the
    same fields as the general pipeline gives it: the event, its logger and level, an ISO UTC
    timestamp, the request id, with secrets scrubbed from the path and the id; a text that is
    plain ASCII is quoted as it is, any other goes through ``json.dumps``), for a fraction of
    the cost of a LogRecord through the structlog formatter. Lines logged on an event loop wait
    up to ``FLUSH_SECONDS`` (or ``MAX_WAITING`` lines) and are written together under the
    handler's lock; any other record through that handler, the end of the app's lifespan and
    the end of the process write them first. Anything else (console logs in development, a
    handler added by a test or an operator) takes the general path, and so do lines the stream
    refused (logging's own error handling then reports them). The level is the logger's, so a
    live reload of ``log_level`` applies at once."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("app.access")
        self.handler: logging.StreamHandler[Any] | None = None
        self._general = get_logger("app.access")
        self._second = -1
        self._second_text = ""
        # Requests not written yet: when each was logged (ns since the epoch), then its fields.
        self._waiting: deque[tuple[int, str, str, str, int, float]] = deque()
        # The event loop a write of the waiting lines is scheduled on, if any.
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        # The rendered method, path and status of recent lines (a busy route's are the same
        # for every request): paths of at most MAX_CACHED_PATH characters, at most MAX_MIDDLES
        # of them (about 0.5 MiB), forgotten together.
        self._middles: dict[tuple[str, str, int], str] = {}

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def _timestamp(self, ns: int) -> str:
        """``ns`` as the general pipeline's ISO UTC timestamp (its seconds formatted once)."""
        second, nanoseconds = divmod(ns, 1_000_000_000)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{nanoseconds // 1000:06d}Z"

    def request(
        self, request_id: str, method: str, path: str, status: int, duration_ms: float
    ) -> None:
        """Log one request (the caller checked ``enabled``). It is only noted here; lines are
        rendered when they are written, many at a time."""
        handler = self.handler
        if handler is None or not _sole_root_handler(handler):
            self._general_path(request_id, method, path, status, duration_ms)
            return
        self._waiting.append((time.time_ns(), request_id, method, path, status, duration_ms))
        if len(self._waiting) >= MAX_WAITING:
            self.flush()
            return
        loop = self._flush_loop
        if loop is None or not loop.is_running():  # none scheduled, or on a loop that stopped
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop here to come back and write it
                self.flush()
                return
            loop.call_later(FLUSH_SECONDS, self.flush)
            self._flush_loop = loop

    def _line(
        self, ns: int, request_id: str, method: str, path: str, status: int, ms: float
    ) -> str:
        # An id of ASCII letters and digits only (every id Renum makes) is its own JSON string
        # and holds nothing the scrub looks for (each of its patterns needs "_", "." or space).
        plain = request_id.isascii() and request_id.isalnum()
        rid = f'"{request_id}"' if plain else _json_string(scrub(request_id))
        key = (method, path, status)
        middle = self._middles.get(key)
        if middle is None:
            middle = (
                f'"method": {_json_string(method)}, "path": {_json_string(scrub(path))}, '
                f'"status": {int(status)}, '
            )
            if len(path) <= MAX_CACHED_PATH:  # a client cannot pin long paths in memory
                if len(self._middles) >= MAX_MIDDLES:
                    self._middles.clear()
                self._middles[key] = middle
        return (
            f'{{"request_id": {rid}, {middle}"duration_ms": {float(ms)!r}, '
            f'"event": "request", "level": "info", "logger": "app.access", '
            f'"timestamp": "{self._timestamp(ns)}"}}\n'
        )

    def flush(self) -> None:
        """Write the waiting lines now. They are taken and written under the handler's lock,
        so no other record comes between; lines the stream took are never written again, and
        lines it refused go the general way."""
        self._flush_loop = None
        handler = self.handler
        if handler is None or not _sole_root_handler(handler):
            self._send_the_general_way(self._take())
            return
        handler.acquire()
        try:
            waiting = self._take()
            if not waiting:
                return
            try:
                handler.stream.write("".join([self._line(*entry) for entry in waiting]))
            except Exception:  # the stream took none of them: they go the general way
                refused = waiting
            else:
                refused = []
                try:
                    handler.flush()
                except Exception:  # reported as logging reports its own errors
                    handler.handleError(logging.makeLogRecord({"name": "app.access"}))
        finally:
            handler.release()
        self._send_the_general_way(refused)

    def _take(self) -> list[tuple[int, str, str, str, int, float]]:
        """The waiting requests, taken off (a deque's pops are atomic: a request logged
        meanwhile on another thread waits for the next write, never lost)."""
        waiting = []
        while self._waiting:
            waiting.append(self._waiting.popleft())
        return waiting

    def _send_the_general_way(self, entries: list[tuple[int, str, str, str, int, float]]) -> None:
        for _, request_id, method, path, status, duration_ms in entries:
            self._general_path(request_id, method, path, status, duration_ms)

    def _general_path(
        self, request_id: str, method: str, path: str, status: int, duration_ms: float
    ) -> None:
        self._general.info(
            "request",
            request_id=request_id,
            method=method,
            path=path,
            status=status,
            duration_ms=duration_ms,
        )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)


ACCESS_LOG = AccessLog()
atexit.register(ACCESS_LOG.flush)
