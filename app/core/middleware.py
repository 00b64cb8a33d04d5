"""Pure ASGI middleware on every request: request id, body-size limit, access log, the
last-resort 500 handler (so even an unexpected error answers as problem+json with the id), and
the request observers capabilities register (the monitor's endpoint metrics), told when a
request starts and when it ends with its status and duration: one middleware times every
request once, however many look at the figures.

Per-request work is O(1): no body buffering, no blocking I/O.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import PayloadTooLarge, problem_response
from app.core.logging import ACCESS_LOG, get_logger
from app.core.request_context import reset_request_id, set_request_id

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

log = get_logger("app.access")


def _incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER:
            candidate: str = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
            break
    # 128 random bits as 32 hex digits, like a UUID4's: unique, not secret (a client may send
    # its own), so the generator the random module reseeds in every forked worker serves, at a
    # tenth of os.urandom's cost.
    return f"{random.getrandbits(128):032x}"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# Set in a request's scope by a route that holds the request open on purpose (an event stream,
# a long-poll): observers count it, but its duration says nothing about the service's speed.
HELD_OPEN = "renum.held_open"


def hold_open(scope: Scope) -> None:
    """Mark this request as held open on purpose (see ``HELD_OPEN``)."""
    scope[HELD_OPEN] = True


class RequestObserver(Protocol):
    """Told about every HTTP request; both calls run on the event loop and must be O(1)."""

    def request_started(self, scope: Scope) -> None: ...

    def request_finished(self, scope: Scope, status: int, seconds: float) -> None: ...


class RequestContextMiddleware:
    """Assigns the request id, enforces the body limit, logs the request, tells the observers,
    catches the rest."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, observers: Sequence[RequestObserver] = ()
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.observers = observers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = _incoming_request_id(scope)
        token = set_request_id(request_id)  # on every line logged meanwhile (app.core.logging)
        started = time.perf_counter()
        for observer in self.observers:
            observer.request_started(scope)
        state: dict[str, Any] = {"status": 500, "started": False}
        header = (REQUEST_ID_HEADER, request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        limit = self.max_body_bytes
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
            return message

        try:
            length = _content_length(scope)
            if length is not None and length > limit:
                response = problem_response(
                    413,
                    PayloadTooLarge.slug,
                    PayloadTooLarge.title,
                    f"The request body exceeds the limit of {limit} bytes.",
                    instance=scope.get("path"),
                )
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, limited_receive, send_with_id)
        except Exception as exc:
            log.error(
                "unhandled_error",
                method=scope.get("method"),
                path=scope.get("path"),
                error_type=type(exc).__name__,
                exc_info=exc,
            )
            if state["started"]:
                raise
            response = problem_response(
                500,
                "internal-error",
                "Internal server error",
                "The server failed to handle this request; quote the request id when reporting it.",
                instance=scope.get("path"),
            )
            await response(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            for observer in self.observers:
                observer.request_finished(scope, state["status"], seconds)
            if ACCESS_LOG.enabled():
                ACCESS_LOG.request(
                    request_id,
                    scope["method"],
                    scope["path"],
                    state["status"],
                    round(seconds * 1000, 2),
                )
            reset_request_id(token)
