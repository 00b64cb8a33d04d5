"""Pure ASGI middleware on every request: request id, body-size limit, access log, the
last-resort 500 handler (so even an unexpected error answers as problem+json with the id), and
the request observers capabilities register (the monitor's endpoint metrics), told when a
request starts and when it ends with its status and duration: one middleware times every
request once, however many look at the figures.

Capabilities' middlewares that act under some path prefixes only (the API's conditional and
last-known reads) are added with ``add_scoped_middleware``: consecutive ones share one layer,
which a request outside their prefixes passes with one check.

Per-request work is O(1): no body buffering, no blocking I/O.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Protocol, cast

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import PayloadTooLarge, problem_response
from app.core.logging import ACCESS_LOG, get_logger
from app.core.request_context import begin_request, end_request

# Headers a part of the app leaves in a request's scope for its answer (the rate limits').
ANSWER_HEADERS = "renum.answer_headers"
REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

log = get_logger("app.access")

# Request ids: 128 random bits as 32 hex digits, like a UUID4's. Unique, not secret (a client
# may send its own), so a generator of their own serves, at a tenth of os.urandom's cost; its
# own, so that the ids it hands out tell nothing of the random module's state (which retry
# jitter uses); seeded from the OS, and again in every forked worker.
_ids = random.Random(os.urandom(32))  # noqa: S311 - not a secret (see above)
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def _read_headers(scope: Scope) -> tuple[str, int | None]:
    """The request's id (the client's ``X-Request-ID`` when valid, else a new one) and its
    declared ``Content-Length`` (None when absent or not a number), in one pass."""
    request_id: str | None = None
    length: int | None = None
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if request_id is None:
                candidate: str = value.decode("latin-1")
                request_id = candidate if _VALID_REQUEST_ID.match(candidate) else ""
        elif name == b"content-length" and length is None:
            try:
                length = int(value)
            except ValueError:
                length = -1
    return (
        request_id or _ids.getrandbits(128).to_bytes(16, "big").hex(),
        None if length is None or length < 0 else length,
    )


# Set in a request's scope by a route that holds the request open on purpose (an event stream,
# a long-poll): observers count it, but its duration says nothing about the service's speed.
HELD_OPEN = "renum.held_open"
# Callbacks an observer leaves in a request's scope, called when the request is held open (the
# profiler of slow requests stops profiling it).
HOLD_OPEN_HOOKS = "renum.hold_open_hooks"
# The seconds a request spent waiting for its client (reading its body, or for the client to
# take the answer), set before the observers are told it finished: time the service did not
# spend working on it.
CLIENT_SECONDS = "renum.client_seconds"


def hold_open(scope: Scope) -> None:
    """Mark this request as held open on purpose (see ``HELD_OPEN``)."""
    scope[HELD_OPEN] = True
    hooks: list[Callable[[], None]] = scope.pop(HOLD_OPEN_HOOKS, [])
    for hook in hooks:
        hook()


class RequestObserver(Protocol):
    """Told about every HTTP request; both calls run on the event loop and must be O(1)."""

    def request_started(self, scope: Scope) -> None: ...

    def request_finished(self, scope: Scope, status: int, seconds: float) -> None: ...


class RequestContextMiddleware:
    """Assigns the request id, enforces the body limit, logs the request, tells the observers,
    adds the response headers capabilities register (each unless the answer set it), catches
    the rest."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        observers: Sequence[RequestObserver] = (),
        response_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.observers = observers
        # Added to every answer that does not set them itself (the security headers).
        self.response_headers = response_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id, length = _read_headers(scope)
        token = begin_request(request_id, scope)  # its id on every line logged meanwhile
        started = perf_counter()
        observers = self.observers
        for observer in observers:
            try:
                observer.request_started(scope)
            except Exception as exc:  # one observer's fault never skips the others
                log.error("request_observer_failed", error_type=type(exc).__name__, exc_info=exc)
        status = 500
        response_started = False
        client_seconds = 0.0
        added = self.response_headers

        async def send_with_id(message: Message) -> None:
            nonlocal client_seconds, status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = list(message.get("headers", ()))
                if added:
                    present = {name for name, _ in headers}  # lower-case in ASGI
                    headers += [pair for pair in added if pair[0] not in present]
                answer_headers = scope.get(ANSWER_HEADERS)
                if answer_headers:
                    headers += answer_headers
                headers.append((REQUEST_ID_HEADER, request_id.encode("latin-1")))
                message["headers"] = headers
                await send(message)  # the head is written, never waited on
                return
            # A body waits while the client does not read (the server's flow control).
            began = perf_counter()
            await send(message)
            client_seconds += perf_counter() - began

        limit = self.max_body_bytes
        received = 0

        async def limited_receive() -> Message:
            nonlocal received, client_seconds
            began = perf_counter()
            message = await receive()
            client_seconds += perf_counter() - began
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
            return message

        try:
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
            if response_started:
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
            seconds = perf_counter() - started
            scope[CLIENT_SECONDS] = client_seconds
            for observer in observers:
                try:
                    observer.request_finished(scope, status, seconds)
                except Exception as exc:  # one observer's fault never skips the others
                    log.error(
                        "request_observer_failed", error_type=type(exc).__name__, exc_info=exc
                    )
            if ACCESS_LOG.enabled():
                ACCESS_LOG.request(
                    request_id,
                    scope["method"],
                    scope["path"],
                    status,
                    round(seconds * 1000, 2),
                )
            end_request(token)


@dataclass(frozen=True)
class ScopedMiddleware:
    """A middleware class, its options, and the path prefixes outside which it does nothing."""

    cls: Callable[..., ASGIApp]
    prefixes: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


class ScopedLayers:
    """Middlewares that act under some path prefixes only, as one layer (``layers`` innermost
    first, as they were added): an HTTP request under any of their prefixes goes through all of
    them, each deciding for itself as before; any other request, or scope, goes past them all."""

    def __init__(self, app: ASGIApp, *, layers: Sequence[ScopedMiddleware]) -> None:
        self.app = app
        chain = app
        for layer in layers:
            chain = layer.cls(chain, **layer.options)
        self.chain = chain
        self.prefixes = tuple(sorted({prefix for layer in layers for prefix in layer.prefixes}))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefixes):
            await self.chain(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def add_scoped_middleware(
    app: Starlette, cls: Callable[..., ASGIApp], *, prefixes: tuple[str, ...], **options: Any
) -> None:
    """``app.add_middleware(cls, **options)`` for a middleware that acts on requests under
    ``prefixes`` only (it must pass any other request straight on): outermost so far, and in
    one ``ScopedLayers`` with the scoped middlewares added just before it."""
    layer = ScopedMiddleware(cls, prefixes, options)
    outermost = app.user_middleware[0] if app.user_middleware else None
    factory: object = None if outermost is None else outermost.cls
    if outermost is not None and factory is ScopedLayers and app.middleware_stack is None:
        cast(list[ScopedMiddleware], outermost.kwargs["layers"]).append(layer)
    else:
        app.add_middleware(ScopedLayers, layers=[layer])
