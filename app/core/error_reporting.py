"""Error reports to Sentry (sentry-sdk), when ``RENUM_ERROR_REPORTING__SENTRY_DSN`` is set.

The log is where Renum's errors already go, so the reports come from the log: every record at
``error`` or ``critical`` (an unhandled exception of a request, a failed background task, an
error of Uvicorn or SQLAlchemy) becomes an event, its exception with its frames when it has
one, tagged with the logger, the log event and the request id. An event carries what a log
line may carry and less:

- the exception as the log shows it (``loggable_exception``: a database error's messages keep
  their first line with quoted values redacted, its statement no values), its frames without
  local variables;
- no request (no body, headers, cookies, query or client address), no user, no breadcrumbs,
  none of the log record's other fields (which may name a prompt or an output): only its
  logger, event name and request id, as tags;
- every text scrubbed by the log's redaction (``scrub``: keys, tokens, passwords, and any
  field named like a secret) just before it is sent.

SDK integrations are off (none patches Starlette, logging or threads): nothing changes on the
request path, and nothing is sent while the DSN is unset. The DSN is the operator's, like the
alert channels': no tenant chooses where reports go.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from app import __version__
from app.core.logging import loggable_exception, scrub

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
# The tags an event takes from its log record: (tag, the record's field).
TAGS = (("logger", "logger"), ("log_event", "event"), ("request_id", "request_id"))

_reporting = False


def configure_error_reporting(settings: ErrorReportingSettings, environment: str) -> None:
    """Start reporting to the DSN when one is set; stop when it no longer is."""
    global _reporting
    dsn = settings.sentry_dsn
    if dsn is None:
        stop_error_reporting()
        return
    import sentry_sdk

    sentry_sdk.init(
        dsn=dsn.get_secret_value(),
        environment=environment,
        release=f"renum@{__version__}",
        sample_rate=settings.sample_rate,
        default_integrations=False,
        auto_enabling_integrations=False,
        include_local_variables=False,
        max_breadcrumbs=0,
        before_send=scrub_event,
    )
    _reporting = True


def stop_error_reporting(timeout: float = 2.0) -> None:
    """Send what is queued (for at most ``timeout`` seconds) and stop reporting."""
    global _reporting
    if not _reporting:
        return
    import sentry_sdk

    _reporting = False
    sentry_sdk.get_client().close(timeout=timeout)


def flush_error_reports(timeout: float = 2.0) -> None:
    """Send what is queued, for at most ``timeout`` seconds (the end of the process)."""
    if _reporting:
        import sentry_sdk

        sentry_sdk.flush(timeout=timeout)


def report_errors(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor (before ``format_exc_info``): an error or critical record becomes
    a report; the record goes on unchanged."""
    if not _reporting or event_dict.get("level") not in SENTRY_LEVELS:
        return event_dict
    if str(event_dict.get("logger", "")).startswith("sentry_sdk"):
        return event_dict  # the SDK's own trouble (its server unreachable) is only logged
    import sentry_sdk

    tags = {tag: str(event_dict[key]) for tag, key in TAGS if event_dict.get(key) is not None}
    exc = _exception(event_dict.get("exc_info"))
    safe = None if exc is None else loggable_exception(exc)
    level = SENTRY_LEVELS[event_dict["level"]]
    if safe is not None:
        sentry_sdk.capture_exception(safe, level=level, tags=tags)
    else:
        sentry_sdk.capture_message(str(event_dict.get("event")), level=level, tags=tags)
    return event_dict


def _exception(exc_info: Any) -> BaseException | None:
    """The exception a record's ``exc_info`` names (an exception, a ``sys.exc_info()`` tuple,
    or true for the one being handled)."""
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        found = exc_info[1] if len(exc_info) == 3 else None
        return found if isinstance(found, BaseException) else None
    return sys.exc_info()[1] if exc_info else None


def scrub_event(event: Event, _hint: dict[str, Any]) -> Event:
    """``before_send``: keep only the fields ``KEPT``, drop the frames' local variables, and
    scrub every text as the log does."""
    kept: dict[str, Any] = {key: value for key, value in event.items() if key in KEPT}
    for exception in kept.get("exception", {}).get("values", ()):
        for frame in (exception.get("stacktrace") or {}).get("frames", ()):
            frame.pop("vars", None)
    scrubbed: Event = scrub(kept)
    return scrubbed
