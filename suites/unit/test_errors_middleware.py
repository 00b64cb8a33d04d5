"""problem+json error handlers and the request middleware, on a tiny in-process app."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, Form, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from app.core import middleware as middleware_module
from app.core.config import Settings
from app.core.errors import (
    PROBLEM_BASE,
    PROBLEM_MEDIA_TYPE,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ProblemError,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
    install_error_handlers,
    problem_body,
    problem_response,
)
from app.core.logging import ACCESS_LOG, configure_logging
from app.core.middleware import (
    RequestContextMiddleware,
    ScopedLayers,
    ScopedMiddleware,
    add_scoped_middleware,
)
from app.core.request_context import current_request_id

pytestmark = pytest.mark.anyio

LIMIT = 1024
PROBLEM_KEYS = {"type", "title", "status", "detail", "instance", "request_id"}


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    count: int


def build_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/problem/{kind}")
    async def problem(kind: str) -> None:
        errors: dict[str, ProblemError] = {
            "bad": BadRequest("bad input"),
            "unauthorized": Unauthorized(),
            "forbidden": Forbidden("not yours"),
            "missing": NotFound("no such thing"),
            "conflict": Conflict("already there"),
            "large": PayloadTooLarge("too big"),
            "invalid": ValidationFailed(
                "custom", errors=[{"pointer": "/body/x", "location": "body", "type": "t"}]
            ),
        }
        raise errors[kind]

    @app.get("/limited")
    async def limited(seconds: int | None = None) -> None:
        if seconds is None:
            raise TooManyRequests("slow down")
        raise TooManyRequests("slow down", retry_after=seconds)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: SELECT * FROM users")

    @app.get("/http/{status}")
    async def http_error(status: int, dict_detail: bool = False) -> None:
        detail: Any = {"a": 1} if dict_detail else f"custom {status}"
        raise StarletteHTTPException(status, detail=detail, headers={"X-Custom": "1"})

    @app.post("/items")
    async def create_item(item: Item) -> dict[str, Any]:
        return item.model_dump()

    @app.post("/form")
    async def form(name: Annotated[str, Form()]) -> dict[str, str]:
        return {"name": name}

    @app.get("/query")
    async def query(
        limit: Annotated[int, Query(ge=1)],
        weird: Annotated[int, Query(alias="a/b~c")] = 0,
    ) -> dict[str, int]:
        return {"limit": limit, "weird": weird}

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    @app.get("/rid")
    async def rid() -> dict[str, str | None]:
        return {"request_id": current_request_id()}

    @app.get("/stream-fails")
    async def stream_fails() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first chunk;"
            raise RuntimeError("after the response started")

        return StreamingResponse(chunks(), media_type="text/plain")

    app.add_middleware(RequestContextMiddleware, max_body_bytes=LIMIT)
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://unit") as http:
        yield http


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = response.json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == status
    assert body["type"] == PROBLEM_BASE + slug
    assert body["request_id"] == response.headers["x-request-id"]
    return body


@pytest.mark.parametrize(
    ("kind", "status", "slug", "title", "detail"),
    [
        ("bad", 400, "bad-request", "Bad request", "bad input"),
        ("unauthorized", 401, "unauthorized", "Authentication required", None),
        ("forbidden", 403, "forbidden", "Not allowed", "not yours"),
        ("missing", 404, "not-found", "Not found", "no such thing"),
        ("conflict", 409, "conflict", "Conflict", "already there"),
        ("large", 413, "payload-too-large", "Request body too large", "too big"),
        ("invalid", 422, "validation-error", "Invalid request", "custom"),
    ],
)
async def test_problem_errors_render_as_problem_documents(
    client: httpx.AsyncClient, kind: str, status: int, slug: str, title: str, detail: str | None
) -> None:
    response = await client.get(f"/problem/{kind}")
    body = assert_problem(response, status, slug)
    assert body["title"] == title
    assert body["instance"] == f"/problem/{kind}"
    if detail is not None:
        assert body["detail"] == detail
    if kind == "unauthorized":
        assert response.headers["www-authenticate"] == "Bearer"
        assert body["detail"] == "Missing or invalid credentials."
    if kind == "invalid":
        assert body["errors"] == [{"pointer": "/body/x", "location": "body", "type": "t"}]
    else:
        assert "errors" not in body


async def test_unexpected_exception_is_a_500_problem_without_internals(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(Settings(log_format="json"))
    response = await client.get("/boom", headers={"X-Request-ID": "trace-500"})
    body = assert_problem(response, 500, "internal-error")
    assert body["request_id"] == "trace-500"
    assert body["instance"] == "/boom"
    assert "quote the request id" in body["detail"]
    assert "secret internals" not in response.text
    assert "Traceback" not in response.text
    assert "RuntimeError" not in response.text
    # The server's log has the details, tied to the same request id (the access line waits on
    # the event loop for a moment, written with the next ones).
    ACCESS_LOG.flush()
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    error = next(line for line in lines if line["event"] == "unhandled_error")
    assert error["request_id"] == "trace-500"
    assert error["error_type"] == "RuntimeError"
    assert "secret internals" in error["exception"]
    access = next(line for line in lines if line["event"] == "request")
    assert access["status"] == 500
    assert access["request_id"] == "trace-500"


async def test_error_after_the_response_started_is_not_masked(client: httpx.AsyncClient) -> None:
    response = await client.get("/stream-fails")
    # The status line is already sent; the middleware cannot swap in a problem document.
    assert response.status_code == 200
    assert response.text.startswith("first chunk;")
    assert "x-request-id" in response.headers


async def test_starlette_http_exceptions_become_problem_documents(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/http/418")
    body = assert_problem(response, 418, "i'm-a-teapot")
    assert body["title"] == "I'm a Teapot"
    assert body["detail"] == "custom 418"
    assert response.headers["x-custom"] == "1"


async def test_http_exception_with_a_non_text_detail_uses_the_phrase(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/http/409", params={"dict_detail": "true"})
    body = assert_problem(response, 409, "conflict")
    assert body["detail"] == "Conflict"


async def test_http_exception_with_an_unknown_status_is_still_a_problem(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/http/499")
    body = assert_problem(response, 499, "error")
    assert body["title"] == "Error"
    assert body["detail"] == "custom 499"


async def test_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/nowhere")
    body = assert_problem(response, 404, "not-found")
    assert body["instance"] == "/nowhere"


async def test_one_problem_type_has_one_title(client: httpx.AsyncClient) -> None:
    """RFC 9457: a type's title does not change from occurrence to occurrence. A 404 for an
    unknown id (NotFound) and for an unknown route (Starlette) share the type URI
    .../not-found, so they must share the title too."""
    by_id = (await client.get("/problem/missing")).json()
    by_route = (await client.get("/nowhere")).json()
    assert by_id["type"] == by_route["type"]
    assert by_id["title"] == by_route["title"]


async def test_wrong_method_is_a_405_problem_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.delete("/items")
    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "POST"


async def test_validation_errors_list_each_field_with_a_json_pointer(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/items", json={"count": "many", "extra": 1})
    body = assert_problem(response, 422, "validation-error")
    assert body["detail"] == "3 fields failed validation."
    by_pointer = {error["pointer"]: error for error in body["errors"]}
    assert set(by_pointer) == {"/body/name", "/body/count", "/body/extra"}
    assert by_pointer["/body/name"]["type"] == "missing"
    assert by_pointer["/body/count"]["type"] == "int_parsing"
    assert by_pointer["/body/extra"]["type"] == "extra_forbidden"
    for error in body["errors"]:
        assert error["location"] == "body"
        assert error["message"]


async def test_a_single_validation_error_is_singular(client: httpx.AsyncClient) -> None:
    response = await client.get("/query", params={"limit": "0"})
    body = assert_problem(response, 422, "validation-error")
    assert body["detail"] == "1 field failed validation."
    assert body["errors"][0]["pointer"] == "/query/limit"
    assert body["errors"][0]["location"] == "query"


async def test_pointer_escapes_slash_and_tilde(client: httpx.AsyncClient) -> None:
    response = await client.get("/query", params={"limit": "1", "a/b~c": "x"})
    body = assert_problem(response, 422, "validation-error")
    assert body["errors"][0]["pointer"] == "/query/a~1b~0c"


async def test_valid_requests_pass_through(client: httpx.AsyncClient) -> None:
    response = await client.post("/items", json={"name": "n", "count": 2})
    assert response.status_code == 200
    assert response.json() == {"name": "n", "count": 2}
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


@pytest.mark.parametrize(
    "raw", [b"{not json", b'{"name": "n", "count": 1', b"\x00\x01", b"[1,]"], ids=repr
)
async def test_malformed_json_is_a_400_problem(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post(
        "/items", content=raw, headers={"Content-Type": "application/json"}
    )
    body = assert_problem(response, 400, "malformed-json")
    assert body["title"] == "Malformed JSON"
    assert body["errors"]
    assert all(error["type"] == "json_invalid" for error in body["errors"])


async def test_body_over_the_limit_by_content_length_is_a_413(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/items", content=b"x" * (LIMIT + 1), headers={"Content-Type": "application/json"}
    )
    body = assert_problem(response, 413, "payload-too-large")
    assert body["detail"] == f"The request body exceeds the limit of {LIMIT} bytes."
    assert body["instance"] == "/items"


async def test_body_at_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post("/raw", content=b"x" * LIMIT)
    assert response.status_code == 200
    assert response.json() == {"size": LIMIT}


async def _chunks(count: int, size: int = 300) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"y" * size


async def test_streamed_body_over_the_limit_is_a_413_on_a_raw_route(
    client: httpx.AsyncClient,
) -> None:
    # No Content-Length: the limit is enforced while the chunks arrive.
    response = await client.post("/raw", content=_chunks(10))
    assert_problem(response, 413, "payload-too-large")


async def test_streamed_body_under_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post("/raw", content=_chunks(3))
    assert response.json() == {"size": 900}


async def _json_chunks() -> AsyncIterator[bytes]:
    yield b'{"name": "'
    for _ in range(10):
        yield b"z" * 300
    yield b'", "count": 1}'


async def test_streamed_body_over_the_limit_is_a_413_on_a_model_route(
    client: httpx.AsyncClient,
) -> None:
    # Every real route declares a body model, so FastAPI reads the body. A chunked upload
    # (no Content-Length) that exceeds the limit must still answer 413, not 400.
    response = await client.post(
        "/items", content=_json_chunks(), headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 413, "payload-too-large")


@pytest.mark.parametrize("request_id", ["abc", "A.b_c:d-1", "x" * 128, "0b1c2d3e"])
async def test_valid_request_id_is_echoed_and_bound(
    client: httpx.AsyncClient, request_id: str
) -> None:
    response = await client.get("/rid", headers={"X-Request-ID": request_id})
    assert response.headers["x-request-id"] == request_id
    assert response.json() == {"request_id": request_id}


@pytest.mark.parametrize(
    "request_id", ["", "has space", "x" * 129, "semi;colon", "new\\nline", "émoji"]
)
async def test_invalid_request_id_is_replaced(client: httpx.AsyncClient, request_id: str) -> None:
    response = await client.get("/rid", headers=[(b"X-Request-ID", request_id.encode("utf-8"))])
    generated = response.headers["x-request-id"]
    assert generated != request_id
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert response.json() == {"request_id": generated}


async def test_each_request_gets_its_own_id(client: httpx.AsyncClient) -> None:
    first = (await client.get("/rid")).headers["x-request-id"]
    second = (await client.get("/rid")).headers["x-request-id"]
    assert first != second


async def test_request_id_does_not_leak_out_of_the_request(client: httpx.AsyncClient) -> None:
    await client.get("/rid", headers={"X-Request-ID": "scoped"})
    assert current_request_id() is None


async def test_non_http_scopes_pass_straight_through() -> None:
    seen: list[str] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        assert current_request_id() is None

    middleware = RequestContextMiddleware(inner, max_body_bytes=LIMIT)
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]


class Tagging:
    """A scoped middleware that notes each request it sees under its name."""

    def __init__(self, app: Any, *, name: str, seen: list[str]) -> None:
        self.app, self.name, self.seen = app, name, seen

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.seen.append(f"{self.name} {scope['path']}")
        await self.app(scope, receive, send)


async def test_scoped_middlewares_share_one_layer_in_the_order_they_were_added() -> None:
    seen: list[str] = []
    app = FastAPI()

    @app.get("/{rest:path}")
    async def anything(rest: str) -> dict[str, str]:
        seen.append(f"route /{rest}")
        return {}

    add_scoped_middleware(app, Tagging, prefixes=("/api/",), name="inner", seen=seen)
    add_scoped_middleware(app, Tagging, prefixes=("/api/", "/schema"), name="outer", seen=seen)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=LIMIT)
    add_scoped_middleware(app, Tagging, prefixes=("/api/",), name="outermost", seen=seen)
    assert [entry.cls for entry in app.user_middleware] == [
        ScopedLayers, RequestContextMiddleware, ScopedLayers
    ]  # fmt: skip
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for path in ("/api/x", "/schema", "/other"):
            assert (await client.get(path)).status_code == 200
    assert seen == [
        "outermost /api/x", "outer /api/x", "inner /api/x", "route /api/x",
        "outer /schema", "inner /schema", "route /schema",  # each layer decides for itself
        "route /other",  # past them all
    ]  # fmt: skip


async def test_scoped_layers_pass_other_scopes_straight_on() -> None:
    seen: list[str] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(f"app {scope['type']}")

    layers = ScopedLayers(
        inner, layers=[ScopedMiddleware(Tagging, ("/api/",), {"name": "t", "seen": seen})]
    )
    await layers({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await layers({"type": "websocket", "path": "/api/ws"}, None, None)  # type: ignore[arg-type]
    assert seen == ["app lifespan", "app websocket"]


def test_unparseable_content_length_is_ignored() -> None:
    def length(*headers: tuple[bytes, bytes]) -> int | None:
        return middleware_module._read_headers({"headers": list(headers)})[1]

    assert length((b"content-length", b"lots")) is None
    assert length((b"content-length", b"-3")) is None
    assert length((b"content-length", b"12")) == 12
    assert length((b"content-length", b"12"), (b"content-length", b"99")) == 12
    assert length() is None


def test_only_the_first_request_id_header_counts() -> None:
    def request_id(*headers: tuple[bytes, bytes]) -> str:
        return middleware_module._read_headers({"headers": list(headers)})[0]

    assert re.fullmatch(r"[0-9a-f]{32}", request_id((b"x-request-id", b"bad id")))
    assert re.fullmatch(
        r"[0-9a-f]{32}", request_id((b"x-request-id", b"bad id"), (b"x-request-id", b"good"))
    )
    assert request_id((b"x-request-id", b"good"), (b"x-request-id", b"other")) == "good"


def test_problem_body_outside_a_request_has_no_request_id() -> None:
    body = problem_body(404, "not-found", "Not found", "gone", "/x", [{"pointer": "/"}])
    assert body == {
        "type": PROBLEM_BASE + "not-found",
        "title": "Not found",
        "status": 404,
        "detail": "gone",
        "instance": "/x",
        "request_id": None,
        "errors": [{"pointer": "/"}],
    }


@pytest.mark.parametrize(
    ("path", "retry_after"),
    [("/limited", "5"), ("/limited?seconds=30", "30"), ("/limited?seconds=0", "1")],
)
async def test_a_429_says_when_to_retry(
    client: httpx.AsyncClient, path: str, retry_after: str
) -> None:
    response = await client.get(path)
    assert_problem(response, 429, "too-many-requests")
    assert response.headers["retry-after"] == retry_after


async def test_every_429_carries_retry_after_whoever_raised_it(
    client: httpx.AsyncClient,
) -> None:
    """A plain HTTP 429 (a library's, a future limiter's) gets the default too."""
    response = await client.get("/http/429")
    assert_problem(response, 429, "too-many-requests")
    assert response.headers["retry-after"] == "5"
    assert response.headers["x-custom"] == "1"
    direct = problem_response(429, "x", "X", "d", headers={"retry-after": "9"})
    assert direct.headers["retry-after"] == "9"
    assert "retry-after" not in problem_response(503, "x", "X", "d").headers


async def test_a_body_of_another_media_type_is_named_in_the_problem(
    client: httpx.AsyncClient,
) -> None:
    # JSON to a form (the token endpoint's OAuth2 form, for one): the fields read as missing.
    body = assert_problem(await client.post("/form", json={"name": "x"}), 422, "validation-error")
    assert body["detail"].endswith(
        "This operation reads a `application/x-www-form-urlencoded` body; the request sent "
        "`application/json`."
    )
    # A JSON body sent without its header.
    body = assert_problem(
        await client.post("/items", content=b'{"name": "x"}'), 422, "validation-error"
    )
    assert body["detail"].endswith(
        "The body was sent without a Content-Type header: send `application/json`."
    )


@pytest.mark.parametrize(
    ("path", "request_body"),
    [
        ("/form", {"data": {"other": "x"}}),  # the right media type, a field missing
        ("/items", {"json": {}}),
        ("/items", {"content": b"{}", "headers": {"Content-Type": "application/merge+json"}}),
    ],
)
async def test_no_media_type_hint_when_the_body_was_read_as_sent(
    client: httpx.AsyncClient, path: str, request_body: dict[str, Any]
) -> None:
    body = assert_problem(await client.post(path, **request_body), 422, "validation-error")
    assert body["detail"].endswith("failed validation.")
