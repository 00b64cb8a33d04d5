"""Conditional reads in the API schema (``app.capabilities.performance.validation``): the
``If-None-Match`` header, the ``304`` answer and the ``ETag``/``Cache-Control`` headers of the
200 are stated on exactly the operations whose answers ``ConditionalReads`` tags, by one rule
(``applies``); with the cache switched off (no middleware) on none. The middleware's own
behaviour is tested in ``test_performance.py``."""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from app.capabilities.performance import validation
from app.capabilities.performance.validation import ConditionalReads
from app.core.config import Settings
from app.main import API_PREFIX, create_app

pytestmark = pytest.mark.anyio


def settings(**overrides: Any) -> Settings:
    return Settings(providers={"openai_base_url": "http://127.0.0.1:9/v1"}, **overrides)


async def tagged(method: str, path: str, media_type: str) -> bool:
    """Whether ``ConditionalReads`` tags a 200 answer of ``media_type``, in one piece, to
    ``method path``."""

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", media_type.encode()), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": method, "path": path, "raw_path": path.encode(),
        "root_path": "", "query_string": b"", "headers": [], "http_version": "1.1",
    }  # fmt: skip
    await ConditionalReads(answer)(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return any(name.lower() == b"etag" for name, _ in start["headers"])


def stated(operation: dict[str, Any]) -> bool:
    """Whether the operation states conditional reads: all of it, or none (else it fails)."""
    responses = operation["responses"]
    parts = {
        "304": "304" in responses,
        "If-None-Match": any(
            p.get("name") == "If-None-Match" and p.get("in") == "header"
            for p in operation.get("parameters", [])
        ),
        "ETag": "ETag" in responses.get("200", {}).get("headers", {}),
        "Cache-Control": "Cache-Control" in responses.get("200", {}).get("headers", {}),
    }
    assert len(set(parts.values())) == 1, f"{operation['operationId']}: partly stated {parts}"
    return parts["304"]


def answered_as(operation: dict[str, Any]) -> str:
    """The media type of the operation's 200 (JSON when it may be JSON)."""
    content = operation["responses"].get("200", {}).get("content") or {}
    return validation.JSON if validation.JSON in content else next(iter(content), "text/plain")


async def test_the_schema_states_conditional_reads_where_the_middleware_applies_them() -> None:
    schema = create_app(settings()).openapi()
    found: dict[str, bool] = {}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            does = await tagged(method.upper(), concrete, answered_as(operation))
            says = stated(operation)
            assert says == does, f"{method.upper()} {path}: schema says {says}, middleware {does}"
            found[operation["operationId"]] = says
    # The rule covers what it should, and only that.
    read = ("list_executions", "get_execution", "get_usage", "list_execution_events")
    assert all(found[name] for name in read)  # events: the JSON; a stream passes untagged
    assert not any(found[name] for name in ("create_execution", "cancel_execution"))
    assert not any(found[op["operationId"]] for op in schema["paths"]["/health/live"].values())
    assert found["get_profile"]  # its speedscope document; the HTML page passes untagged
    assert sum(found.values()) >= 20


async def test_a_304_is_documented_with_the_tag_it_answers_to() -> None:
    operation = create_app(settings()).openapi()["paths"][f"{API_PREFIX}/executions"]["get"]
    not_modified = operation["responses"]["304"]
    assert "content" not in not_modified
    assert set(not_modified["headers"]) == {"ETag", "Cache-Control"}
    header = next(p for p in operation["parameters"] if p["name"] == "If-None-Match")
    assert header == {**validation.IF_NONE_MATCH}
    assert not header["required"]


def test_without_the_cache_no_operation_states_conditional_reads() -> None:
    schema = create_app(settings(performance={"cache": {"enabled": False}})).openapi()
    for item in schema["paths"].values():
        for operation in item.values():
            assert not stated(operation), operation["operationId"]


def test_documenting_twice_states_it_once() -> None:
    app = create_app(settings())
    first = app.openapi()
    again = app.openapi()
    operation = again["paths"][f"{API_PREFIX}/executions"]["get"]
    names = [p["name"] for p in operation["parameters"]]
    assert names.count("If-None-Match") == 1
    assert first is again
