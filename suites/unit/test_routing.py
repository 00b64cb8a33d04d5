"""``PrefixRouter`` (``app.api.router``): a request whose path cannot be under an included
router's prefix never looks at that router's routes, and routing answers exactly as FastAPI's
own routers do (found, 404, 405, path parameters in a prefix, nested prefixes, websockets)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, WebSocket
from fastapi.routing import APIRoute
from starlette.routing import Match, Route

from app.api.router import PrefixRouter, index_routes
from app.main import create_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def build(router_class: type[APIRouter]) -> FastAPI:
    """The same small app built with either router class."""
    app = FastAPI()
    api = router_class(prefix="/api/v1")
    agents = router_class(prefix="/agents")
    members = router_class(prefix="/teams/{team_id}/members")
    loose = router_class()  # no prefix of its own: skipped by its routes' first segments
    wild = router_class()  # a parameter first: tried for every path under /api/v1

    @agents.get("")
    async def list_agents() -> list[str]:
        return ["a"]

    @agents.get("/{agent_id}")
    async def get_agent(agent_id: int) -> dict[str, int]:
        return {"id": agent_id}

    @members.post("")
    async def add_member(team_id: int) -> dict[str, int]:
        return {"team": team_id}

    @loose.get("/usage")
    async def usage() -> dict[str, bool]:
        return {"usage": True}

    @loose.websocket("/echo")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    @wild.get("/{kind}/count")
    async def count(kind: str) -> dict[str, str]:
        return {"kind": kind}

    for router in (agents, members, loose, wild):
        api.include_router(router)
    app.include_router(api)
    ops = router_class(prefix="/api/v1/ops")

    @ops.get("/status")
    async def status() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(ops)

    @app.get("/late")
    async def late() -> dict[str, str]:
        return {"late": "yes"}

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"root": "yes"}

    # A router included under a prefix, holding one included without a prefix of its own
    # (FastAPI records a nested router's prefix relative to the router that holds it).
    outer = router_class()
    keys = router_class(prefix="/api-keys")

    @keys.get("/list")
    async def list_keys() -> list[str]:
        return ["k"]

    outer.include_router(keys)
    app.include_router(outer, prefix="/api")
    app.state.loose = loose
    if router_class is PrefixRouter:
        index_routes(app)
    return app


# The paths of the routes in the routers of ``build``.
ROUTER_PATHS = {
    "/agents",
    "/agents/{agent_id}",
    "/teams/{team_id}/members",
    "/usage",
    "/echo",
    "/{kind}/count",
    "/api/v1/ops/status",
}
REQUESTS = [
    ("GET", "/api/v1/agents"),
    ("GET", "/api/v1/agents/7"),
    ("GET", "/api/v1/agents/not-a-number"),
    ("DELETE", "/api/v1/agents/7"),  # 405
    ("POST", "/api/v1/teams/3/members"),
    ("GET", "/api/v1/teams/3/members"),  # 405
    ("GET", "/api/v1/usage"),
    ("GET", "/api/v1/usage/"),
    ("GET", "/api/v1/widgets/count"),
    ("GET", "/api/v1/agents/count"),
    ("GET", "/api/v1/ops/status"),
    ("GET", "/api/v1/ops/nothing"),
    ("GET", "/late"),
    ("GET", "/nowhere"),
    ("GET", "/api/v2/agents"),
    ("GET", "/api/v1/agentsX"),
    ("GET", "/api/api-keys/list"),
    ("GET", "/api/api-keys"),
    ("GET", "/late/"),  # redirected to /late
    ("GET", "/"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
]


@pytest.mark.parametrize(("method", "path"), REQUESTS)
async def test_routing_answers_as_fastapi_s_own_routers_do(method: str, path: str) -> None:
    answers = []
    for router_class in (APIRouter, PrefixRouter):
        transport = httpx.ASGITransport(app=build(router_class))
        async with httpx.AsyncClient(transport=transport, base_url="http://routing") as client:
            response = await client.request(method, path)
        answers.append((response.status_code, response.headers.get("allow"), response.text))
    assert answers[0] == answers[1]


async def test_websockets_under_a_prefix_still_connect() -> None:
    incoming = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "hello"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/api/v1/echo",
        "raw_path": b"/api/v1/echo",
        "root_path": "",
        "scheme": "ws",
        "query_string": b"",
        "headers": [],
        "subprotocols": [],
        "server": ("routing", 80),
    }
    await build(PrefixRouter)(scope, receive, send)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "hello"


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the routes whose pattern was tried, in order (FastAPI's ``APIRoute``
    matches on its own; Starlette's ``Route`` serves the schema and the docs)."""
    tried: list[str] = []
    for route_class in (Route, APIRoute):
        original = route_class.matches

        def matches(self: Route, scope: Any, original: Any = original) -> tuple[Match, Any]:
            tried.append(self.path)
            result: tuple[Match, Any] = original(self, scope)
            return result

        monkeypatch.setattr(route_class, "matches", matches)
    return tried


async def test_a_path_outside_a_prefix_tries_none_of_its_routes(counted: list[str]) -> None:
    transport = httpx.ASGITransport(app=build(PrefixRouter))
    async with httpx.AsyncClient(transport=transport, base_url="http://routing") as client:
        assert (await client.get("/late")).status_code == 200
        # Only the routes whose paths start with /late are tried: neither a router nor
        # FastAPI's own routes (the schema, the docs).
        assert set(counted) == {"/late"}
        counted.clear()
        assert (await client.get("/api/v1/ops/status")).status_code == 200
        # Under /api/v1: the agents' and members' routers skipped by their own prefixes, the
        # one without a prefix by its routes' first segments; the one whose route starts with
        # a parameter is tried.
        assert not set(counted) & {"/agents", "/agents/{agent_id}", "/teams/{team_id}/members"}
        assert "/usage" not in counted
        assert "/{kind}/count" in counted
        counted.clear()
        assert (await client.post("/api/v1/teams/3/members")).status_code == 200
        assert "/agents" not in counted  # the agents router skipped
        assert "/agents/{agent_id}" not in counted


async def test_fastapi_s_own_router_would_try_them_all(counted: list[str]) -> None:
    """What the check saves, and proof the spy sees FastAPI's matching: without it, a late
    route is found after every route before it."""
    transport = httpx.ASGITransport(app=build(APIRouter))
    async with httpx.AsyncClient(transport=transport, base_url="http://routing") as client:
        assert (await client.get("/late")).status_code == 200
    assert set(counted) >= ROUTER_PATHS - {"/echo"}  # a websocket route is no Route
    assert counted[-1] == "/late"


def test_every_router_of_the_backend_is_a_prefix_router() -> None:
    app = create_app()
    routers: list[Any] = []
    pending = list(app.router.routes)
    while pending:
        route = pending.pop()
        original = getattr(route, "original_router", None)
        if original is not None:
            routers.append(original)
            pending += original.routes
    assert routers
    assert all(isinstance(router, PrefixRouter) for router in routers), [
        type(router).__name__ for router in routers if not isinstance(router, PrefixRouter)
    ]


async def test_a_route_added_after_the_first_request_is_found() -> None:
    app = build(PrefixRouter)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://routing") as client:
        assert (await client.get("/api/v1/late-usage")).status_code == 404

        @app.state.loose.get("/late-usage")
        async def late_usage() -> dict[str, bool]:
            return {"late": True}

        assert (await client.get("/api/v1/late-usage")).status_code == 200


async def test_a_route_added_to_the_app_after_the_first_request_is_found() -> None:
    app = build(PrefixRouter)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://routing") as client:
        assert (await client.get("/later")).status_code == 404

        @app.get("/later")
        async def later() -> dict[str, str]:
            return {"route": "second"}

        assert (await client.get("/later")).json() == {"route": "second"}


async def test_routes_reordered_in_place_before_the_first_request_keep_their_order() -> None:
    app = build(PrefixRouter)

    @app.get("/later")
    async def later() -> dict[str, str]:
        return {"route": "second"}

    @app.get("/later")
    async def shadowing() -> dict[str, str]:
        return {"route": "first"}

    app.router.routes.insert(0, app.router.routes.pop())  # as the benchmarks do
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://routing") as client:
        assert (await client.get("/later")).json() == {"route": "first"}


def test_the_index_refuses_a_router_with_middleware_of_its_own() -> None:
    app = FastAPI(max_body_size=1024)  # FastAPI wraps the router's entry in a body limit
    with pytest.raises(RuntimeError, match="middleware of its own"):
        index_routes(app)
