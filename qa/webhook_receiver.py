"""A webhook receiver on loopback, scriptable per path, for tests of outbound deliveries.

A real HTTP server (the standard library's threading server in a background thread), so the
backend's delivery dispatcher runs over TCP exactly as against a tenant's endpoint::

    with WebhookReceiver() as receiver:
        receiver.script("/hooks/a", 500, 200)  # the first POST to /hooks/a fails, then 200
        ...  # register receiver.url("/hooks/a"); allow receiver.allow_entry on the backend
        wait_until(lambda: receiver.requests_for("/hooks/a"))

Each path answers its scripted statuses in order, then 200 (``always`` sets another default
for a path); ``hold`` keeps a path's answers back until the test lets them go. Every request
is recorded with its headers (lower-case names) and its raw body, the bytes a signature
covers. One lock guards everything, so tests may script and read from
any thread while the server answers.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY_BYTES = 1_048_576
HOLD_LIMIT_SECONDS = 60.0


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes  # exactly as received
    status: int  # what the receiver answered
    received_at: float = field(default_factory=time.time)

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """The server. ``start()``/``stop()`` (or ``with``) run it on a free port of 127.0.0.1."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[int]] = {}
        self._defaults: dict[str, int] = {}
        self._requests: list[ReceivedRequest] = []
        self._holds: dict[str, threading.Event] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the receiver is not running")
        return int(self._server.server_address[1])

    @property
    def allow_entry(self) -> str:
        """The backend's egress allow entry for this receiver (``RENUM_EGRESS__ALLOW``)."""
        return f"{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: tests read the records instead

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            for held in self._holds.values():
                held.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def script(self, path: str, *statuses: int) -> None:
        """The statuses the next POSTs to ``path`` get, in order (then the default)."""
        with self._lock:
            self._scripts.setdefault(path, deque()).extend(statuses)

    def always(self, path: str, status: int) -> None:
        """What ``path`` answers once its script is used up (200 unless set)."""
        with self._lock:
            self._defaults[path] = status

    def hold(self, path: str) -> threading.Event:
        """Keep the answers to ``path`` back until the returned event is set (or the receiver
        stops, or a minute passes): a request is then "being sent" for as long as the test
        wants."""
        with self._lock:
            return self._holds.setdefault(path, threading.Event())

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, path: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path == path]

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        length = min(int(handler.headers.get("Content-Length") or 0), MAX_BODY_BYTES)
        body = handler.rfile.read(length) if length else b""
        path = handler.path
        with self._lock:
            held = self._holds.get(path)
        if held is not None:
            held.wait(HOLD_LIMIT_SECONDS)
        with self._lock:
            script = self._scripts.get(path)
            status = script.popleft() if script else self._defaults.get(path, 200)
            self._requests.append(
                ReceivedRequest(
                    handler.command,
                    path,
                    {name.lower(): value for name, value in handler.headers.items()},
                    body,
                    status,
                )
            )
        handler.send_response(status)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", "2")
        handler.end_headers()
        handler.wfile.write(b"ok")
