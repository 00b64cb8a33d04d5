"""Error reports to Sentry (sentry-sdk), when ``RENUM_ERROR_REPORTING__SENTRY_DSN`` is set.

The log is where Renum's errors already go, so the reports come from the log of the server
(``renum serve`` and its workers): every record at ``error`` or ``critical`` (an unhandled
exception of a request, a failed background task, an error of Uvicorn or SQLAlchemy) becomes an
event, its exception with its frames when it has one, tagged with the logger, the log event and
the request id. An event carries less than the log line:

- the exception and its chain with each message cut to its first line, quoted values redacted
  (``reportable_exception``: a database error's statement without values), its frames without
  local variables; a record without an exception is a message, its text cut the same way;
- no request (no body, headers, cookies, query or client address), no user, no breadcrumbs,
  none of the log record's other fields (which may name a prompt or an output): only its
  logger, event name and request id, as tags;
- every text scrubbed by the log's redaction (``scrub``: keys, tokens, passwords, and any
  field named like a secret) just before it is sent.

At most ``BURST`` reports of one kind (logger and event) go out per ``PER_SECONDS``, and the
SDK drops an exception it has just sent (its dedupe integration): a failing dependency that
logs an error every few seconds does not flood the project. The other SDK integrations are off
(none patches Starlette, logging or threads): nothing changes on the request path, and nothing
is sent, or even imported, while the DSN is unset. The DSN is the operator's, like the alert
channels': no tenant chooses where reports go.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from app import __version__
from app.core.logging import (
    exception_of,
    get_logger,
    reportable_exception,
    safe_text,
    scrub,
)

if TYPE_CHECKING:
    from sentry_sdk._types import Event, LogLevelStr

    from app.core.config import ErrorReportingSettings

# The log's levels that are reported, as Sentry names them.
SENTRY_LEVELS: dict[str, LogLevelStr] = {"error": "error", "critical": "fatal"}
# What an event keeps of its own (everything else the SDK might add is dropped).
KEPT = (
    *("event_id", "timestamp", "platform", "level", "logger", "message", "exception"),
    *("tags", "environment", "release", "server_name", "sdk", "contexts"),
)
# Reports of one kind (logger, event) let through per window.
BURST = 10
PER_SECONDS = 60.0

log = get_logger("app.error_reporting")
_reporting = False
_sent: dict[tuple[str, str], tuple[float, int]] = {}  # kind -> (window start, reports in it)


def configure_error_reporting(settings: ErrorReportingSettings, environment: str) -> None:
    """Start reporting to the DSN when one is set; stop when it no longer is."""
    global _reporting
    dsn = settings.sentry_dsn
    if dsn is None:
        stop_error_reporting()
        return
    import sentry_sdk
    from sentry_sdk.integrations.dedupe import DedupeIntegration

    sentry_sdk.init(
        dsn=dsn.get_secret_value(),
        environment=environment,
        release=f"renum@{__version__}",
        sample_rate=settings.sample_rate,
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=[DedupeIntegration()],
        include_local_variables=False,
        max_breadcrumbs=0,
        before_send=scrub_event,
    )
    _sent.clear()
    _reporting = True


def stop_error_reporting(timeout: float = 2.0) -> None:
    """Send what is queued (for at most ``timeout`` seconds) and stop reporting."""
    global _reporting
    if not _reporting:
        return
    import sentry_sdk

    _reporting = False
    sentry_sdk.get_client().close(timeout=timeout)
    sentry_sdk.get_global_scope().set_client(None)  # a client that records nothing


def flush_error_reports(timeout: float = 2.0) -> None:
    """Send what is queued, for at most ``timeout`` seconds (the end of the process)."""
    if _reporting:
        import sentry_sdk

        sentry_sdk.flush(timeout=timeout)


def report_errors(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor (before ``format_exc_info``): an error or critical record becomes
    a report; the record goes on unchanged, whatever happens to the report."""
    if not _reporting or event_dict.get("level") not in SENTRY_LEVELS:
        return event_dict
    logger = str(event_dict.get("logger", ""))
    if logger.startswith("sentry_sdk"):
        return event_dict  # the SDK's own trouble (its server unreachable) is only logged
    try:
        _report(logger, event_dict)
    except Exception as exc:  # a report never stops the log line (or the 500 it goes with)
        log.warning("error_report_failed", error_type=type(exc).__name__)
    return event_dict


def _report(logger: str, event_dict: MutableMapping[str, Any]) -> None:
    import sentry_sdk

    event = safe_text(str(event_dict.get("event")))
    if not _allowed((logger, event), time.monotonic()):
        return
    tags = {"logger": logger, "log_event": event}
    if event_dict.get("request_id") is not None:
        tags["request_id"] = str(event_dict["request_id"])
    level = SENTRY_LEVELS[event_dict["level"]]
    exc = exception_of(event_dict.get("exc_info"))
    safe = None if exc is None else reportable_exception(exc)
    if safe is not None:
        sentry_sdk.capture_exception(safe, level=level, tags=tags)
    else:
        sentry_sdk.capture_message(event, level=level, tags=tags)


def _allowed(kind: tuple[str, str], now: float) -> bool:
    """Whether a report of ``kind`` may go now (``BURST`` per ``PER_SECONDS``)."""
    began, count = _sent.get(kind, (now, 0))
    if now - began >= PER_SECONDS:
        began, count = now, 0
    if count >= BURST:
        return False
    if len(_sent) >= 1000 and kind not in _sent:
        _sent.clear()  # kinds are few; a flood of distinct ones starts the count again
    _sent[kind] = (began, count + 1)
    return True


def scrub_event(event: Event, _hint: dict[str, Any]) -> Event:
    """``before_send``: keep only the fields ``KEPT``, drop the frames' local variables, and
    scrub every text as the log does."""
    kept: dict[str, Any] = {key: value for key, value in event.items() if key in KEPT}
    for exception in kept.get("exception", {}).get("values", ()):
        for frame in (exception.get("stacktrace") or {}).get("frames", ()):
            frame.pop("vars", None)
    scrubbed: Event = scrub(kept)
    return scrubbed
