"""Conditional reads: every JSON answer of an API read (``GET`` under ``/api/v1``, and the
OpenAPI schema at ``/openapi.json``, status 200, sent in one piece) carries a weak ``ETag`` (a
BLAKE2b hash of its body) and, unless the route set its own, ``Cache-Control: private,
no-cache`` (a client or browser may keep it for its own user only, and asks again before using
it); a read whose ``If-None-Match`` names that tag is
answered ``304 Not Modified`` without the body. The answer is still computed (from the cache of
costly reads when it can be), so what this saves is the transfer, and the client's parsing.

Answers marked ``no-store`` (replays during a database outage, profiles), streams (a body in
several parts, event streams) and every other status pass unchanged; the start of such an
answer is never held back.

``applies`` is the one rule of which requests are conditional reads: the middleware follows
it, and ``install_schema`` states it in the OpenAPI schema, on each operation it covers whose
200 answer is JSON (the ``If-None-Match`` header, the ``304`` answer, the ``ETag`` and
``Cache-Control`` headers of the 200)."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.schema_additions import add_to_schema

READ_PATHS = ("/api/v1/", "/openapi.json")
READS = frozenset({"GET"})
JSON = "application/json"
CACHE_CONTROL = "private, no-cache"


def applies(method: str, path: str) -> bool:
    """Whether a request, or an operation by its path template, is a conditional read (when
    its answer is a JSON 200 in one piece)."""
    return method in READS and path.startswith(READ_PATHS)


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
        if scope["type"] != "http" or not applies(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        held: Message | None = None

        async def send_tagged(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = Headers(raw=message.get("headers", []))
                if (
                    message["status"] == 200
                    and headers.get("content-type", "").startswith(JSON)
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


# What the schema states on every operation ``applies`` covers.
_TAG = {
    "description": "The JSON answer's weak entity tag: send it back as `If-None-Match`, to be "
    "answered 304 while the answer is unchanged.",
    "schema": {"type": "string", "examples": ['W/"3f2a9c0d6b1e4f5a8c7d2e1b0a9f8e7d"']},
}
_CACHE_CONTROL = {
    "description": f"`{CACHE_CONTROL}` unless the operation says otherwise: a client may keep "
    "the answer for its own user, and revalidates it before use.",
    "schema": {"type": "string", "examples": [CACHE_CONTROL]},
}
IF_NONE_MATCH: dict[str, Any] = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "Entity tags of answers the client holds (`ETag`); when one matches the "
    "current answer's, the answer is `304 Not Modified` without a body.",
    "schema": {"type": "string"},
}
NOT_MODIFIED: dict[str, Any] = {
    "description": "The answer is unchanged: its entity tag matches `If-None-Match`. Use the "
    "answer held under that tag (no body is sent).",
    "headers": {"ETag": _TAG, "Cache-Control": _CACHE_CONTROL},
}


def document(schema: dict[str, Any]) -> None:
    """State conditional reads on every operation of ``schema`` they apply to (see the
    module): those ``applies`` covers whose 200 answer may be JSON."""
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or not applies(method.upper(), path):
                continue
            ok = operation.get("responses", {}).get("200")
            if ok is None or JSON not in (ok.get("content") or {}):
                continue
            operation.setdefault("parameters", []).append(copy.deepcopy(IF_NONE_MATCH))
            headers = ok.setdefault("headers", {})
            headers["ETag"] = copy.deepcopy(_TAG)
            headers["Cache-Control"] = copy.deepcopy(_CACHE_CONTROL)
            operation["responses"]["304"] = copy.deepcopy(NOT_MODIFIED)


def install_schema(app: FastAPI) -> None:
    """Document conditional reads in the schema ``app`` serves (where ``ConditionalReads``
    runs)."""
    add_to_schema(app, document)
