"""The performance capability in-process: compression negotiated per encoding and never
holding an event stream back, and slow requests profiled and listed for admins while fast ones
are not. Each app runs with its lifespan; requests go through the whole middleware stack."""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import brotli
import httpx
import pytest
import zstandard
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pyinstrument.session import Session

from app.capabilities.performance.profiling import SlowRequests, _pattern
from app.core.config import ProfilingSettings, Settings
from app.core.middleware import hold_open
from app.main import API_PREFIX, create_app

pytestmark = pytest.mark.anyio
BODY = {"items": [{"name": f"agent-{n}", "model": "echo"} for n in range(200)]}
PROFILES = f"{API_PREFIX}/ops/profiles"


def busy(seconds: float) -> None:
    """Work on the CPU (what a sampling profiler sees) for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def build(make_settings: Callable[..., Settings], **overrides: Any) -> FastAPI:
    values: dict[str, Any] = {
        "bootstrap_admin_email": "root@example.com",
        "bootstrap_admin_password": "root-password-1",
        "providers": {"openai_base_url": "http://127.0.0.1:9/v1"},
        "configuration": {"enabled": False},
    }
    settings = make_settings(**{**values, **overrides})
    app = create_app(settings)

    async def big() -> JSONResponse:
        return JSONResponse(BODY)

    async def small() -> JSONResponse:
        return JSONResponse({"ok": True})

    async def picture() -> Response:
        return Response(b"\x89PNG" + bytes(4000), media_type="image/png")

    async def slow(ms: float = 0) -> JSONResponse:
        busy(ms / 1000)
        await asyncio.sleep(0)
        return JSONResponse({"slept_ms": ms})

    for path, endpoint in (("/t/big", big), ("/t/small", small), ("/t/png", picture)):
        app.add_api_route(path, endpoint)
    app.add_api_route("/t/slow", slow)
    app.add_api_route(f"{API_PREFIX}/auth/t-big", big)  # under an excluded prefix
    return app


@asynccontextmanager
async def client_of(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://perf") as client:
            yield client


async def admin_headers(client: httpx.AsyncClient) -> dict[str, str]:
    response = await client.post(
        f"{API_PREFIX}/auth/token",
        data={"username": "root@example.com", "password": "root-password-1"},
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


# --- compression ---------------------------------------------------------------------------

DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "zstd": lambda raw: zstandard.ZstdDecompressor().decompressobj().decompress(raw),
    "br": brotli.decompress,
    "gzip": gzip.decompress,
}


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        ("zstd", "zstd"),
        ("br", "br"),
        ("gzip", "gzip"),
        ("gzip, br, zstd", "zstd"),  # the server's order of preference
        ("gzip;q=1, br;q=0", "gzip"),  # a coding refused with q=0
        ("identity", None),
        ("", None),
        (None, None),  # no Accept-Encoding at all: passed straight through
    ],
)
async def test_the_coding_follows_accept_encoding(
    make_settings: Callable[..., Settings], accept: str | None, coding: str | None
) -> None:
    async with client_of(build(make_settings)) as client:
        if accept is None:
            del client.headers["Accept-Encoding"]
        else:
            client.headers["Accept-Encoding"] = accept
        async with client.stream("GET", "/t/big") as response:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == coding
    # The answer varies by Accept-Encoding wherever the client named one (a cache keeps it
    # apart from the other codings); one sent without it could go to any client.
    assert ("accept-encoding" in response.headers.get("vary", "").lower()) is (accept is not None)
    if coding is not None:
        assert len(raw) < len(json.dumps(BODY)) / 4
        raw = DECODERS[coding](raw)
    assert json.loads(raw) == BODY


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/t/small", "under minimum_bytes"),
        ("/t/png", "a media type that is compressed already"),
        (f"{API_PREFIX}/auth/t-big", "an excluded path (BREACH)"),
    ],
)
async def test_some_answers_are_never_compressed(
    make_settings: Callable[..., Settings], path: str, why: str
) -> None:
    async with client_of(build(make_settings)) as client:
        response = await client.get(path, headers={"Accept-Encoding": "zstd, br, gzip"})
    assert response.status_code == 200
    assert "content-encoding" not in response.headers, why


async def test_an_event_stream_is_never_held_back(make_settings: Callable[..., Settings]) -> None:
    """The endpoint produces its second event only once the client has decoded the first:
    a compressor that buffered the stream would leave the first one waiting for ever."""
    app = build(make_settings)
    delivered = asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        await delivered.wait()
        yield b"data: second\n\n"

    async def stream() -> StreamingResponse:
        return StreamingResponse(events(), media_type="text/event-stream")

    app.add_api_route("/t/events", stream)
    decoder = zstandard.ZstdDecompressor().decompressobj()
    seen = b""
    started: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not started:
            started.append({})
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal seen
        if message["type"] == "http.response.start":
            started.append(message)
        elif message["type"] == "http.response.body":
            seen += decoder.decompress(message.get("body", b""))
            if b"data: first\n\n" in seen:
                delivered.set()
            if not message.get("more_body"):
                done.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/t/events", "raw_path": b"/t/events", "root_path": "",
        "query_string": b"", "headers": [(b"host", b"perf"), (b"accept-encoding", b"zstd")],
        "client": ("127.0.0.1", 5000), "server": ("perf", 80),
    }  # fmt: skip
    async with app.router.lifespan_context(app):
        async with asyncio.timeout(30):  # a held-back event fails here instead of hanging
            await app(scope, receive, send)
    headers = dict(started[1]["headers"])
    assert headers[b"content-encoding"] == b"zstd"
    assert seen == b"data: first\n\ndata: second\n\n"


async def test_compression_switched_off_leaves_answers_as_they_were(
    make_settings: Callable[..., Settings],
) -> None:
    for overrides in (
        {"performance": {"enabled": False}},
        {"performance": {"compression": {"enabled": False}}},
    ):
        async with client_of(build(make_settings, **overrides)) as client:
            response = await client.get("/t/big", headers={"Accept-Encoding": "zstd, gzip"})
        assert "content-encoding" not in response.headers
        assert response.json() == BODY


# --- profiles of slow requests ---------------------------------------------------------------

SLOW = ("GET", "/t/slow")
QUICK = {"profiling": {"threshold_ms": 150, "floor_ms": 150, "attempts": 2, "cooldown_seconds": 0}}


async def test_a_slow_request_arms_its_route_and_the_next_slow_one_is_profiled(
    make_settings: Callable[..., Settings],
) -> None:
    app = build(make_settings, performance=QUICK)
    slow: SlowRequests = app.state.performance.slow_requests
    async with client_of(app) as client:
        headers = await admin_headers(client)
        await client.get("/t/slow", params={"ms": 5})
        assert SLOW not in slow.armed  # fast: nothing happens
        await client.get("/t/slow", params={"ms": 300})
        assert SLOW in slow.armed
        assert "GET /t/slow" in (await client.get(PROFILES, headers=headers)).json()["armed"]
        await client.get("/t/slow", params={"ms": 5})  # profiled, fast: dropped
        assert slow.profiles == {}
        assert slow.armed[SLOW].attempts == 1
        await client.get("/t/slow", params={"ms": 300})  # profiled, slow: kept
        assert SLOW not in slow.armed
        listed = (await client.get(PROFILES, headers=headers)).json()
        (profile,) = listed["profiles"]
        assert profile["route"] == "/t/slow"
        assert profile["method"] == "GET"
        assert profile["duration_ms"] > profile["threshold_ms"]  # kept because it passed it
        assert profile["threshold_ms"] == 150
        assert profile["samples"] > 0
        page = await client.get(f"{PROFILES}/{profile['id']}", headers=headers)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "busy" in page.text  # the function the time went to
        assert "fonts.googleapis.com" not in page.text  # nothing loads from outside
        document = await client.get(
            f"{PROFILES}/{profile['id']}", params={"format": "speedscope"}, headers=headers
        )
        frames = document.json()["shared"]["frames"]
        assert any(frame["name"] == "busy" for frame in frames)


async def test_an_armed_route_is_disarmed_after_its_attempts(
    make_settings: Callable[..., Settings],
) -> None:
    app = build(make_settings, performance=QUICK)
    slow: SlowRequests = app.state.performance.slow_requests
    async with client_of(app) as client:
        await client.get("/t/slow", params={"ms": 300})
        for _ in range(2):
            assert SLOW in slow.armed
            await client.get("/t/slow", params={"ms": 1})
        assert SLOW not in slow.armed
        assert slow.profiles == {}


async def test_only_the_newest_profiles_are_kept(make_settings: Callable[..., Settings]) -> None:
    quick = {"profiling": {**QUICK["profiling"], "keep": 2}}
    app = build(make_settings, performance=quick)
    slow: SlowRequests = app.state.performance.slow_requests
    async with client_of(app) as client:
        for _ in range(3):
            await client.get("/t/slow", params={"ms": 200})  # arms
            await client.get("/t/slow", params={"ms": 200})  # profiled and kept
    assert list(slow.profiles) == ["p2", "p3"]


async def test_profiles_are_for_admins_and_unknown_ids_are_404(
    make_settings: Callable[..., Settings],
) -> None:
    async with client_of(build(make_settings, performance=QUICK)) as client:
        assert (await client.get(PROFILES)).status_code == 401
        headers = await admin_headers(client)
        missing = await client.get(f"{PROFILES}/p99", headers=headers)
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert (await client.get(f"{PROFILES}/../x", headers=headers)).status_code == 404


async def test_the_threshold_follows_the_route_s_p95_once_it_has_enough_requests() -> None:
    settings = ProfilingSettings(p95_factor=3, floor_ms=50, min_requests=10)
    figures = {("GET", "/a"): (100.0, 0.2), ("GET", "/b"): (5.0, 0.2), ("GET", "/c"): (100, 0.001)}
    slow = SlowRequests(settings, lambda: dict(figures))
    slow.refresh(now=0)
    assert slow.threshold_seconds("GET", "/a") == pytest.approx(0.6)
    assert slow.threshold_seconds("GET", "/b") == pytest.approx(1.0)  # too few: threshold_ms
    assert slow.threshold_seconds("GET", "/c") == pytest.approx(0.05)  # never under the floor
    figures[("GET", "/a")] = (100.0, 0.4)
    slow.refresh(now=1)  # read at most every P95_REFRESH_SECONDS
    assert slow.threshold_seconds("GET", "/a") == pytest.approx(0.6)
    slow.refresh(now=60)
    assert slow.threshold_seconds("GET", "/a") == pytest.approx(1.2)


@pytest.mark.parametrize(
    ("template", "path", "matches"),
    [
        ("/api/v1/teams/{team_id}", "/api/v1/teams/7", True),
        ("/api/v1/teams/{team_id}", "/api/v1/teams/7/members", False),
        ("/api/v1/teams/{team_id}", "/api/v1/teams/", False),
        ("/files/{rest:path}", "/files/a/b.txt", True),
        ("/a.b", "/aXb", False),  # template text is literal
    ],
)
def test_an_armed_route_matches_the_paths_of_its_template(
    template: str, path: str, matches: bool
) -> None:
    assert bool(_pattern(template).match(path)) is matches


async def test_profiling_switched_off_profiles_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    off = {"profiling": {**QUICK["profiling"], "enabled": False}}
    app = build(make_settings, performance=off)
    async with client_of(app) as client:
        for _ in range(2):
            await client.get("/t/slow", params={"ms": 300})
    assert SLOW not in app.state.performance.slow_requests.armed
    everything_off = build(make_settings, performance={"enabled": False})
    async with client_of(everything_off) as client:
        headers = await admin_headers(client)
        assert (await client.get(PROFILES, headers=headers)).status_code == 404


async def test_a_live_reload_applies_to_the_profiler_at_once(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = build(make_settings, performance=QUICK, configuration={"enabled": True})
    slow: SlowRequests = app.state.performance.slow_requests
    async with client_of(app) as client:
        await client.get("/t/slow", params={"ms": 300})
        assert SLOW in slow.armed
        monkeypatch.setenv("RENUM_PERFORMANCE__PROFILING__FLOOR_MS", "2000")
        monkeypatch.setenv("RENUM_PERFORMANCE__PROFILING__ENABLED", "false")
        result = await app.state.config_manager.reload("test")
        assert "performance.profiling.enabled" in result.applied
        assert slow.armed == {}
        assert slow.floor_seconds == float("inf")
        monkeypatch.setenv("RENUM_PERFORMANCE__PROFILING__ENABLED", "true")
        await app.state.config_manager.reload("test")
        assert slow.floor_seconds == 2.0
        await client.get("/t/slow", params={"ms": 300})  # no longer slow
        assert SLOW not in slow.armed


# --- conditional reads ---------------------------------------------------------------------


def build_reads(make_settings: Callable[..., Settings], **overrides: Any) -> FastAPI:
    app = build(make_settings, **overrides)
    state = {"version": 1}

    async def item() -> JSONResponse:
        return JSONResponse({"version": state["version"]})

    async def private() -> JSONResponse:
        return JSONResponse({"secret": "x"}, headers={"Cache-Control": "no-store"})

    async def chunks() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            yield b'{"a": '
            yield b"1}"

        return StreamingResponse(parts(), media_type="application/json")

    for path, endpoint in (("item", item), ("private", private), ("chunks", chunks)):
        app.add_api_route(f"{API_PREFIX}/t-{path}", endpoint, methods=["GET", "POST"])
    app.state.test_item = state
    return app


async def test_api_reads_carry_an_etag_and_answer_304_when_unchanged(
    make_settings: Callable[..., Settings],
) -> None:
    app = build_reads(make_settings)
    async with client_of(app) as client:
        first = await client.get(f"{API_PREFIX}/t-item")
        tag = first.headers["etag"]
        assert tag.startswith('W/"')
        assert first.headers["cache-control"] == "private, no-cache"
        same = await client.get(f"{API_PREFIX}/t-item", headers={"If-None-Match": tag})
        assert same.status_code == 304
        assert same.content == b""
        assert same.headers["etag"] == tag
        assert "content-length" not in same.headers or same.headers["content-length"] == "0"
        listed = await client.get(
            f"{API_PREFIX}/t-item", headers={"If-None-Match": f'"other", {tag.removeprefix("W/")}'}
        )
        assert listed.status_code == 304  # weak comparison, in a list
        app.state.test_item["version"] = 2
        changed = await client.get(f"{API_PREFIX}/t-item", headers={"If-None-Match": tag})
        assert changed.status_code == 200
        assert changed.json() == {"version": 2}
        assert changed.headers["etag"] != tag


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/t-private"),  # no-store: left as the route made it
        ("GET", "/t-chunks"),  # a body in parts: sent as it comes
        ("POST", "/t-item"),  # not a read
    ],
)
async def test_other_answers_get_no_etag(
    make_settings: Callable[..., Settings], method: str, path: str
) -> None:
    async with client_of(build_reads(make_settings)) as client:
        response = await client.request(
            method, f"{API_PREFIX}{path}", headers={"If-None-Match": "*"}
        )
    assert response.status_code == 200
    assert "etag" not in response.headers
    assert response.content


async def test_the_schema_is_a_conditional_read_too(
    make_settings: Callable[..., Settings],
) -> None:
    async with client_of(build(make_settings)) as client:
        first = await client.get("/openapi.json")
        again = await client.get("/openapi.json", headers={"If-None-Match": first.headers["etag"]})
    assert (first.status_code, again.status_code) == (200, 304)


async def test_without_the_cache_no_etag_is_sent(make_settings: Callable[..., Settings]) -> None:
    app = build_reads(make_settings, performance={"cache": {"enabled": False}})
    async with client_of(app) as client:
        response = await client.get(f"{API_PREFIX}/t-item", headers={"If-None-Match": "*"})
    assert response.status_code == 200
    assert "etag" not in response.headers
    assert app.state.runtime.cache.__class__.__name__ == "ReadCache"


async def call(app: FastAPI, method: str, path: str, body: bytes = b"", delay: float = 0) -> int:
    """One request straight to the ASGI app, its body sent ``delay`` seconds late (a slow
    client); the status."""
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            await asyncio.sleep(delay)
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # never disconnects
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(b"host", b"perf"), (b"content-type", b"text/plain")],
        "client": ("127.0.0.1", 5000), "server": ("perf", 80),
    }  # fmt: skip
    await app(scope, receive, send)
    return status


async def test_time_spent_waiting_for_the_client_is_not_slowness(
    make_settings: Callable[..., Settings],
) -> None:
    app = build(make_settings, performance=QUICK)

    async def upload(request: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await request.body())})

    app.add_api_route("/t/upload", upload, methods=["POST"])
    slow: SlowRequests = app.state.performance.slow_requests
    async with app.router.lifespan_context(app):
        assert await call(app, "POST", "/t/upload", b"x" * 100, delay=0.4) == 200
    assert slow.armed == {}


async def test_a_request_held_open_stops_being_profiled_at_once(
    make_settings: Callable[..., Settings],
) -> None:
    app = build(make_settings, performance=QUICK)
    slow: SlowRequests = app.state.performance.slow_requests
    seen: list[bool] = []

    async def maybe_stream(request: Request, held: bool = False) -> JSONResponse:
        if held:
            hold_open(request.scope)
            seen.append(slow.profiling)
        busy(0.3)
        return JSONResponse({"held": held})

    app.add_api_route("/t/stream", maybe_stream)
    async with client_of(app) as client:
        await client.get("/t/stream")  # slow: arms the route
        assert ("GET", "/t/stream") in slow.armed
        await client.get("/t/stream", params={"held": True})
    assert seen == [False]  # the profiler stopped when the request was held open
    assert slow.profiles == {}


async def test_a_profile_holds_at_most_max_seconds(make_settings: Callable[..., Settings]) -> None:
    quick = {"profiling": {**QUICK["profiling"], "max_seconds": 0.05}}
    app = build(make_settings, performance=quick)

    async def working() -> JSONResponse:  # works for 0.4 s, letting the event loop run
        for _ in range(40):
            busy(0.01)
            await asyncio.sleep(0)
        return JSONResponse({})

    app.add_api_route("/t/working", working)
    slow: SlowRequests = app.state.performance.slow_requests
    async with client_of(app) as client:
        await client.get("/t/working")
        await client.get("/t/working")
    (profile,) = slow.profiles.values()
    assert profile.session.duration < profile.duration_ms / 1000 / 2


async def test_a_route_rests_after_its_profile_before_it_is_armed_again(
    make_settings: Callable[..., Settings],
) -> None:
    resting = {"profiling": {**QUICK["profiling"], "cooldown_seconds": 3600}}
    app = build(make_settings, performance=resting)
    slow: SlowRequests = app.state.performance.slow_requests
    async with client_of(app) as client:
        await client.get("/t/slow", params={"ms": 200})  # arms
        await client.get("/t/slow", params={"ms": 200})  # profiled, kept
        await client.get("/t/slow", params={"ms": 200})  # resting: not armed again
    assert len(slow.profiles) == 1
    assert SLOW not in slow.armed


async def test_made_up_paths_and_methods_never_arm_anything(
    make_settings: Callable[..., Settings],
) -> None:
    app = build(
        make_settings,
        performance={"profiling": {**QUICK["profiling"], "floor_ms": 1, "threshold_ms": 1}},
    )
    slow: SlowRequests = app.state.performance.slow_requests
    async with app.router.lifespan_context(app):
        for method, path in (("GET", "/nowhere"), ("DELETE", "/t/slow"), ("FOO1", "/t/slow")):
            assert await call(app, method, path) in (404, 405)
    assert slow.armed == {}


async def test_a_failing_observer_never_leaves_the_profiler_running(
    make_settings: Callable[..., Settings],
) -> None:
    app = build(make_settings, performance=QUICK)
    slow: SlowRequests = app.state.performance.slow_requests

    class Broken:
        def request_started(self, scope: Any) -> None:
            raise RuntimeError("observer bug")

        def request_finished(self, scope: Any, status: int, seconds: float) -> None:
            raise RuntimeError("observer bug")

    app.state.request_observers.insert(0, Broken())
    async with client_of(app) as client:
        await client.get("/t/slow", params={"ms": 200})  # arms
        response = await client.get("/t/slow", params={"ms": 200})  # profiled
    assert response.status_code == 200
    assert not slow.profiling
    assert len(slow.profiles) == 1


def frame_names(session: Session) -> set[str]:
    """The functions a profile's samples went through, on any thread."""
    return {stack.split("\x00", 1)[0] for record, _ in session.frame_records for stack in record}


def crunching(ms: float = 0) -> dict[str, Any]:  # a synchronous route: run in a worker thread
    PROFILED_THREAD.append(sys.getprofile() is not None)
    busy(ms / 1000)
    return {"ms": ms}


def slow_dependency(ms: float = 0) -> float:  # a synchronous dependency: in a worker thread
    busy(ms / 1000)
    return ms


def slow_generator(ms: float = 0) -> Iterator[float]:  # its setup: in a worker thread
    busy(ms / 1000)
    yield ms


async def depending(ms: Annotated[float, Depends(slow_dependency)]) -> dict[str, Any]:
    return {"ms": ms}


async def depending_on_a_generator(ms: Annotated[float, Depends(slow_generator)]) -> Any:
    return {"ms": ms}


PROFILED_THREAD: list[bool] = []  # per call of ``crunching``: its thread was being profiled


def build_sync(make_settings: Callable[..., Settings], **overrides: Any) -> FastAPI:
    app = build(make_settings, **overrides)
    app.add_api_route("/t/sync", crunching)
    app.add_api_route("/t/sync-dependency", depending)
    app.add_api_route("/t/sync-generator", depending_on_a_generator)
    return app


@pytest.mark.parametrize(
    ("path", "handler"),
    [
        ("/t/sync", "crunching"),
        ("/t/sync-dependency", "slow_dependency"),
        ("/t/sync-generator", "slow_generator"),
    ],
)
async def test_a_slow_sync_route_s_profile_holds_its_handler_s_frames(
    make_settings: Callable[..., Settings], path: str, handler: str
) -> None:
    app = build_sync(make_settings, performance=QUICK)
    slow: SlowRequests = app.state.performance.slow_requests
    PROFILED_THREAD.clear()
    async with client_of(app) as client:
        headers = await admin_headers(client)
        await client.get(path, params={"ms": 300})  # slow: arms the route
        assert ("GET", path) in slow.armed
        assert (await client.get(path, params={"ms": 300})).json() == {"ms": 300}  # kept
        await client.get(path, params={"ms": 1})  # resting: not profiled
        (profile,) = slow.profiles.values()
        assert profile.route == path
        assert {handler, "busy"} <= frame_names(profile.session)
        page = await client.get(f"{PROFILES}/{profile.id}", headers=headers)
        assert handler in page.text
        document = await client.get(
            f"{PROFILES}/{profile.id}", params={"format": "speedscope"}, headers=headers
        )
        assert handler in {frame["name"] for frame in document.json()["shared"]["frames"]}
    if path == "/t/sync":  # the worker thread ran under the profiler for that request only
        assert PROFILED_THREAD == [False, True, False]
    assert not slow.profiling


async def test_only_the_profiled_request_s_sync_calls_are_profiled(
    make_settings: Callable[..., Settings],
) -> None:
    app = build_sync(make_settings, performance=QUICK)

    async def waiting(ms: float = 0) -> JSONResponse:  # slow, the event loop free meanwhile
        await asyncio.sleep(ms / 1000)
        return JSONResponse({})

    app.add_api_route("/t/waiting", waiting)
    slow: SlowRequests = app.state.performance.slow_requests
    PROFILED_THREAD.clear()
    async with client_of(app) as client:
        await client.get("/t/waiting", params={"ms": 300})  # arms the route
        # Profiled, while another request's synchronous route runs in a worker thread.
        await asyncio.gather(
            client.get("/t/waiting", params={"ms": 300}),
            client.get("/t/sync", params={"ms": 50}),
        )
    (profile,) = slow.profiles.values()
    assert profile.route == "/t/waiting"
    assert "waiting" in frame_names(profile.session)
    assert "crunching" not in frame_names(profile.session)
    assert PROFILED_THREAD == [False]


async def test_a_sync_route_held_open_stops_being_profiled_at_once(
    make_settings: Callable[..., Settings],
) -> None:
    app = build(make_settings, performance=QUICK)
    slow: SlowRequests = app.state.performance.slow_requests
    seen: list[bool] = []

    def held(request: Request, hold: bool = False) -> dict[str, Any]:
        if hold:
            profiling = request.scope["renum.profiling"]
            hold_open(request.scope)  # from the worker thread: stopped on the event loop
            while profiling.running:
                time.sleep(0.001)
            seen.append(slow.profiling)
        busy(0.3)
        return {"held": hold}

    app.add_api_route("/t/held", held)
    async with client_of(app) as client:
        await client.get("/t/held")  # slow: arms the route
        response = await client.get("/t/held", params={"hold": True})
    assert response.json() == {"held": True}
    assert seen == [False]
    assert not slow.profiling
    assert slow.profiles == {}


def before_cap(seconds: float) -> None:
    busy(seconds)


def after_cap(seconds: float) -> None:
    busy(seconds)


async def test_a_sync_route_s_profile_holds_at_most_max_seconds(
    make_settings: Callable[..., Settings],
) -> None:
    quick = {"profiling": {**QUICK["profiling"], "max_seconds": 0.05}}
    app = build(make_settings, performance=quick)

    def capped(request: Request) -> dict[str, Any]:
        before_cap(0.1)
        profiling = request.scope.get("renum.profiling")  # this request's profiler, if any
        while profiling is not None and profiling.running:  # until max_seconds passed
            time.sleep(0.001)
        after_cap(0.1)
        return {}

    app.add_api_route("/t/capped", capped)
    slow: SlowRequests = app.state.performance.slow_requests
    async with client_of(app) as client:
        await client.get("/t/capped")  # arms
        await client.get("/t/capped")  # profiled for its first max_seconds
    (profile,) = slow.profiles.values()
    assert "before_cap" in frame_names(profile.session)
    assert "after_cap" not in frame_names(profile.session)


async def test_profiles_are_for_platform_admins_only(
    make_settings: Callable[..., Settings],
) -> None:
    async with client_of(build(make_settings, performance=QUICK)) as client:
        headers = await admin_headers(client)
        account = await client.post(
            f"{API_PREFIX}/accounts",
            json={
                "name": "tenant",
                "owner_email": "owner@example.com",
                "owner_password": "owner-password-1",
            },
            headers=headers,
        )
        assert account.status_code == 201, account.text
        token = await client.post(
            f"{API_PREFIX}/auth/token",
            data={"username": "owner@example.com", "password": "owner-password-1"},
        )
        owner = {"Authorization": f"Bearer {token.json()['access_token']}"}
        for path in (PROFILES, f"{PROFILES}/p1"):
            assert (await client.get(path, headers=owner)).status_code == 403


CREDENTIAL_FIELDS = frozenset(
    {"access_token", "refresh_token", "token", "api_key", "secret", "password"}
)


def credential_operations(schema: dict[str, Any]) -> set[str]:
    """``METHOD path`` of every operation whose successful JSON answer holds a credential at
    any depth of its schema: a field named like one, or described as a secret."""
    components = schema["components"]["schemas"]

    def holds_one(node: Any, seen: frozenset[str]) -> bool:
        if isinstance(node, list):
            return any(holds_one(item, seen) for item in node)
        if not isinstance(node, dict):
            return False
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            return name not in seen and holds_one(components[name], seen | {name})
        for name, field in node.get("properties", {}).items():
            described = str(field.get("description", "")).lower()
            if name in CREDENTIAL_FIELDS or "secret" in described:
                return True
        return any(holds_one(value, seen) for value in node.values())

    found = set()
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {}).get("application/json", {})
                if status.startswith("2") and holds_one(content, frozenset()):
                    found.add(f"{method.upper()} {path}")
    return found


def test_every_answer_holding_a_credential_is_left_uncompressed() -> None:
    """BREACH: an operation whose answer holds a credential must be under an excluded prefix
    (``performance.compression.excluded_paths``). A new one outside them fails here."""
    settings = Settings(providers={"openai_base_url": "http://127.0.0.1:9/v1"})
    schema = create_app(settings).openapi()
    found = credential_operations(schema)
    # The guard sees what it guards: the operations known to answer credentials.
    assert {
        f"POST {API_PREFIX}/auth/token",
        f"POST {API_PREFIX}/api-keys",
        f"POST {API_PREFIX}/webhooks",
        f"POST {API_PREFIX}/webhooks/{{webhook_id}}/rotate-secret",
    } <= found
    excluded = tuple(settings.performance.compression.excluded_paths)
    outside = sorted(op for op in found if not op.split(" ", 1)[1].startswith(excluded))
    # The effective configuration names its secret settings but shows them masked.
    assert outside == [f"GET {API_PREFIX}/ops/config"]


async def test_the_exclusions_hold_below_a_root_path(
    make_settings: Callable[..., Settings],
) -> None:
    app = build(make_settings)
    transport = httpx.ASGITransport(app=app, root_path="/renum")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://perf") as client,
    ):
        response = await client.get(
            f"/renum{API_PREFIX}/auth/t-big", headers={"Accept-Encoding": "gzip"}
        )
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
