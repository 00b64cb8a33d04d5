"""Calling an ASGI app directly, without a server or a network: one GET and its status. The
benchmarks and the probe tests use it to measure or observe the app's own work per request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Call = Callable[[str], Awaitable[int]]


def asgi_caller(app: Any, host: str = "bench") -> Call:
    """``call(path)``: one GET of ``path`` straight into ``app``; the response's status."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def call(path: str) -> int:
        status = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", host.encode())],
            "client": ("127.0.0.1", 40000),
            "server": (host, 80),
        }
        await app(scope, receive, send)
        return status

    return call
