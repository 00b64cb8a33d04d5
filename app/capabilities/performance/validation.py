"""Conditional reads: every JSON answer of an API read (``GET`` under ``/api/v1``, and the
OpenAPI schema at ``/openapi.json``, status 200, sent in one piece) carries a weak ``ETag`` (a
BLAKE2b hash of its body) and, unless the route set its own, ``Cache-Control: private,
no-cache`` (a client or browser may keep it for its own user only, and asks again before using
it); a read whose ``If-None-Match`` names that tag is
answered ``304 Not Modified`` without the body. The answer is still computed (from the cache of
costly reads when it can be), so what this saves is the transfer, and the client's parsing.

Answers marked ``no-store`` (replays during a database outage, profiles), streams (a body in
several parts, event streams) and every other status pass unchanged; the start of such an
answer is never held back."""

from __future__ import annotations

import hashlib

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

READ_PATHS = ("/api/v1/", "/openapi.json")
READS = frozenset({"GET"})
CACHE_CONTROL = "private, no-cache"


def entity_tag(body: bytes) -> str:
    return 'W/"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def _matches(if_none_match: str, tag: str) -> bool:
    """Weak comparison (RFC 9110, 13.1.2): the opaque parts equal, ``W/`` aside."""
    wanted = tag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


class ConditionalReads:
    """Pure ASGI: ``ETag``, ``Cache-Control`` and ``304`` on API reads (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in READS
            or not scope["path"].startswith(READ_PATHS)
        ):
            await self.app(scope, receive, send)
            return
        held: Message | None = None

        async def send_tagged(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = Headers(raw=message.get("headers", []))
                if (
                    message["status"] == 200
                    and headers.get("content-type", "").startswith("application/json")
                    and "no-store" not in headers.get("cache-control", "")
                    and "etag" not in headers
                ):
                    held = message  # sent with the body, once its tag is known
                    return
                await send(message)
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            start, held = held, None
            body = message.get("body", b"")
            if message.get("more_body", False):  # a stream: sent as it comes, untagged
                await send(start)
                await send(message)
                return
            tag = entity_tag(body)
            headers = MutableHeaders(raw=start.setdefault("headers", []))
            headers["ETag"] = tag
            if "cache-control" not in headers:
                headers["Cache-Control"] = CACHE_CONTROL
            request = Headers(scope=scope)
            if _matches(request.get("if-none-match", ""), tag):
                for name in ("content-length", "content-type"):
                    if name in headers:
                        del headers[name]
                await send({**start, "status": 304})
                await send({"type": "http.response.body", "body": b""})
                return
            await send(start)
            await send(message)

        await self.app(scope, receive, send_tagged)
