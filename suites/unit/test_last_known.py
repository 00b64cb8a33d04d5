"""Reads answered from their last known state during a database outage
(``app.capabilities.database_manager.last_known``), on a tiny in-process app whose routes answer
503 while a fake circuit breaker is open, as the real API does: what is kept while the breaker
is closed, how a kept answer is replayed while it is open (``Age``, ``Cache-Status``, the same
body, never reaching the app), that it is never replayed to another credential, what is never
kept, the LRU bound, ``max_age_seconds``, live settings and the switch; and, on the real app,
that the database manager installs it inside the base request middleware."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import SecretStr

from app.capabilities.database_manager.last_known import LastKnownReads
from app.core.config import Settings
from app.core.errors import DatabaseUnavailable, NotFound, install_error_handlers
from app.core.middleware import RequestContextMiddleware, ScopedLayers, hold_open
from app.core.security import TokenCodec
from app.main import API_PREFIX, create_app

pytestmark = pytest.mark.anyio

MakeSettings = Callable[..., Settings]
ALICE = {"Authorization": "Bearer alice-credential-0123456789"}
BOB = {"Authorization": "Bearer bob-credential-9876543210"}
MISS = "renum; fwd=miss; detail=database-unavailable"
CACHE_HIT = re.compile(r"^renum; hit; ttl=(0|-\d+); detail=database-unavailable$")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeBreaker:
    is_open: bool = False


@dataclass
class FakeDatabase:
    breaker: FakeBreaker = field(default_factory=FakeBreaker)


@dataclass
class Harness:
    app: FastAPI
    reads: LastKnownReads
    clock: Clock
    client: httpx.AsyncClient
    calls: list[str]

    @property
    def breaker(self) -> FakeBreaker:
        database: FakeDatabase = self.app.state.database
        return database.breaker

    async def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.get(path, headers=headers)


def build_app(settings: Settings, calls: list[str]) -> FastAPI:
    """Routes like the API's: each refuses with 503 while the breaker is open; each answer says
    who asked, so an answer given to the wrong caller shows."""
    app = FastAPI()
    install_error_handlers(app)
    app.state.settings = settings
    app.state.database = FakeDatabase()

    def needs_database(request: Request) -> None:
        calls.append(f"{request.method} {request.url.path}")
        database = getattr(request.app.state, "database", None)
        if database is not None and database.breaker.is_open:
            raise DatabaseUnavailable("The database is not answering.", retry_after=5)

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(needs_database)])

    @api.get("/things/{name}")
    async def thing(name: str, request: Request) -> dict[str, Any]:
        return {
            "name": name,
            "caller": request.headers.get("authorization"),
            "query": sorted(request.query_params.multi_items()),
            "call": len(calls),
        }

    @api.api_route("/things/{name}", methods=["POST", "PATCH", "DELETE"])
    async def write_thing(name: str) -> dict[str, str]:
        return {"name": name}

    @api.get("/tagged")
    async def tagged() -> JSONResponse:
        return JSONResponse({"tagged": True}, headers={"ETag": '"v1"', "X-Other": "dropped"})

    @api.get("/big")
    async def big(size: int) -> dict[str, str]:
        return {"data": "x" * size}

    @api.get("/chunked")
    async def chunked(chunks: int, size: int) -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for index in range(chunks):
                yield json.dumps({"part": index, "pad": "y" * size}).encode() + b"\n"

        return StreamingResponse(parts(), media_type="application/json")

    @api.get("/events")
    async def events() -> StreamingResponse:
        async def lines() -> AsyncIterator[bytes]:
            yield b"data: one\n\n"

        return StreamingResponse(lines(), media_type="text/event-stream")

    @api.get("/private")
    async def private() -> JSONResponse:
        return JSONResponse({"private": True}, headers={"Cache-Control": "no-store"})

    @api.get("/revalidate/{directive}")
    async def revalidate(directive: str) -> JSONResponse:
        return JSONResponse({"revalidate": True}, headers={"Cache-Control": directive})

    @api.get("/cookie")
    async def cookie() -> JSONResponse:
        response = JSONResponse({"cookie": True})
        response.set_cookie("session", "value")
        return response

    @api.get("/encoded")
    async def encoded() -> JSONResponse:
        return JSONResponse({"encoded": True}, headers={"Content-Encoding": "identity"})

    @api.get("/text")
    async def text() -> PlainTextResponse:
        return PlainTextResponse("plain")

    @api.get("/missing")
    async def missing() -> None:
        raise NotFound("no such thing")

    @api.get("/flaky")
    async def flaky(request: Request) -> dict[str, bool]:
        if getattr(request.app.state, "gone", False):
            raise NotFound("gone now")
        return {"here": True}

    @api.get("/forbidden")
    async def forbidden() -> JSONResponse:
        return JSONResponse({"detail": "not yours"}, status_code=403)

    @api.get("/ops/deliveries")
    async def ops() -> dict[str, bool]:
        return {"ops": True}

    @api.get("/long-poll")
    async def long_poll(request: Request) -> dict[str, bool]:
        hold_open(request.scope)
        return {"polled": True}

    app.include_router(api)

    @app.get("/elsewhere")
    async def elsewhere(request: Request) -> dict[str, bool]:
        needs_database(request)
        return {"elsewhere": True}

    return app


@pytest.fixture
async def make_harness(make_settings: MakeSettings) -> AsyncIterator[Callable[..., Harness]]:
    clients: list[httpx.AsyncClient] = []

    def make(**last_known: Any) -> Harness:
        calls: list[str] = []
        settings = make_settings(database_manager={"last_known": last_known})
        app = build_app(settings, calls)
        clock = Clock()
        reads = LastKnownReads(app, state=app.state, clock=clock)
        outer = RequestContextMiddleware(reads, max_body_bytes=1_000_000)
        transport = httpx.ASGITransport(app=outer, raise_app_exceptions=False)
        client = httpx.AsyncClient(transport=transport, base_url="http://unit")
        clients.append(client)
        return Harness(app, reads, clock, client, calls)

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()


def assert_refused(response: httpx.Response, cache_status: str | None = None) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/database-unavailable")
    assert "age" not in response.headers
    assert response.headers.get("cache-status") == cache_status


def assert_replayed(response: httpx.Response, before: httpx.Response, age: int) -> None:
    assert response.status_code == 200, response.text
    assert response.content == before.content
    assert response.headers["content-type"] == before.headers["content-type"]
    assert response.headers["age"] == str(age)
    assert CACHE_HIT.match(response.headers["cache-status"]), response.headers["cache-status"]
    assert response.headers["cache-status"] == (
        f"renum; hit; ttl={-age}; detail=database-unavailable"
    )
    assert "warning" not in response.headers
    assert response.headers["cache-control"] == "no-store"  # no cache keeps a stale answer
    assert response.headers["x-request-id"]  # inside the base middleware: ids still apply


async def test_an_answer_kept_while_closed_is_replayed_while_open(harness: Harness) -> None:
    before = await harness.get("/api/v1/things/a", ALICE)
    assert before.status_code == 200
    assert "cache-status" not in before.headers  # while closed: the app's own answer
    assert "age" not in before.headers
    assert len(harness.reads.store) == 1

    harness.breaker.is_open = True
    harness.clock.now += 12.7
    calls = len(harness.calls)
    during = await harness.get("/api/v1/things/a", ALICE)
    assert_replayed(during, before, age=12)
    assert len(harness.calls) == calls  # never reached the app
    assert during.headers["x-request-id"] != before.headers["x-request-id"]
    assert harness.reads.counts == {"stored": 1, "served": 1, "missed": 0}

    harness.clock.now += 3
    assert_replayed(await harness.get("/api/v1/things/a", ALICE), before, age=15)


async def test_an_answer_is_never_replayed_to_another_credential(harness: Harness) -> None:
    alice = await harness.get("/api/v1/things/a", ALICE)
    harness.breaker.is_open = True
    assert_refused(await harness.get("/api/v1/things/a", BOB), MISS)
    assert_refused(await harness.get("/api/v1/things/a", {"Authorization": "Bearer alice"}), MISS)
    assert_refused(await harness.get("/api/v1/things/a", {"Authorization": ""}))
    assert_refused(await harness.get("/api/v1/things/a"))  # anonymous: not ours to answer
    assert_replayed(await harness.get("/api/v1/things/a", ALICE), alice, age=0)


async def test_each_credential_gets_its_own_answer(harness: Harness) -> None:
    alice = await harness.get("/api/v1/things/a", ALICE)
    bob = await harness.get("/api/v1/things/a", BOB)
    assert alice.json()["caller"] != bob.json()["caller"]
    harness.breaker.is_open = True
    assert_replayed(await harness.get("/api/v1/things/a", BOB), bob, age=0)
    assert_replayed(await harness.get("/api/v1/things/a", ALICE), alice, age=0)


async def test_the_credential_itself_is_never_kept(harness: Harness) -> None:
    await harness.get("/api/v1/things/a", ALICE)
    credential = ALICE["Authorization"].encode()
    (key,) = harness.reads.store.keys()
    assert credential not in repr(key).encode()
    assert all(credential not in part for part in key if isinstance(part, bytes))
    assert len(key[0]) == 32  # the keyed hash


async def test_query_order_does_not_matter_but_its_values_and_accept_do(harness: Harness) -> None:
    before = await harness.get("/api/v1/things/a?x=1&y=2", ALICE)
    harness.breaker.is_open = True
    assert_replayed(await harness.get("/api/v1/things/a?y=2&x=1", ALICE), before, age=0)
    assert_refused(
        await harness.get("/api/v1/things/a?x=1&y=3", ALICE),
        MISS,
    )
    assert_refused(await harness.get("/api/v1/things/a", ALICE), MISS)
    assert_refused(
        await harness.get("/api/v1/things/a?x=1&y=2", {**ALICE, "Accept": "application/xml"}),
        MISS,
    )


async def test_the_headers_an_answer_depends_on_are_part_of_the_key(harness: Harness) -> None:
    resume = {**ALICE, "Last-Event-ID": "5"}
    both = [*ALICE.items(), ("Accept", "application/json"), ("Accept", "*/*")]
    after_five = await harness.get("/api/v1/things/a", resume)
    accepted = await harness.client.get("/api/v1/things/a", headers=both)
    harness.breaker.is_open = True
    assert_replayed(await harness.get("/api/v1/things/a", resume), after_five, age=0)
    assert_replayed(await harness.client.get("/api/v1/things/a", headers=both), accepted, age=0)
    assert_refused(await harness.get("/api/v1/things/a", {**ALICE, "Last-Event-ID": "6"}), MISS)
    assert_refused(await harness.get("/api/v1/things/a", ALICE), MISS)


async def test_a_client_that_wants_no_stored_answer_gets_none(harness: Harness) -> None:
    before = await harness.get("/api/v1/things/a", ALICE)
    await harness.get("/api/v1/things/b", {**ALICE, "Cache-Control": "no-store"})
    assert len(harness.reads.store) == 1  # b was not kept
    harness.breaker.is_open = True
    assert_refused(await harness.get("/api/v1/things/a", {**ALICE, "Cache-Control": "no-cache"}))
    assert_refused(await harness.get("/api/v1/things/b", ALICE), MISS)
    assert_replayed(await harness.get("/api/v1/things/a", ALICE), before, age=0)


async def test_the_etag_is_kept_and_other_headers_are_not(harness: Harness) -> None:
    before = await harness.get("/api/v1/tagged", ALICE)
    assert before.headers["x-other"] == "dropped"
    harness.breaker.is_open = True
    during = await harness.get("/api/v1/tagged", ALICE)
    assert_replayed(during, before, age=0)
    assert during.headers["etag"] == '"v1"'
    assert "x-other" not in during.headers


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/v1/missing", ALICE),  # not a 200
        ("/api/v1/events", ALICE),  # an event stream
        ("/api/v1/events", {**ALICE, "Accept": "text/event-stream"}),
        ("/api/v1/private", ALICE),  # Cache-Control: no-store
        ("/api/v1/revalidate/no-cache", ALICE),  # never served stale
        ("/api/v1/revalidate/private, must-revalidate", ALICE),
        ("/api/v1/revalidate/No-Store", ALICE),
        ("/api/v1/cookie", ALICE),  # sets a cookie
        ("/api/v1/encoded", ALICE),  # content-coded
        ("/api/v1/text", ALICE),  # not JSON
        ("/api/v1/ops/deliveries", ALICE),  # operators' views
        ("/api/v1/long-poll", ALICE),  # held open on purpose
        ("/elsewhere", ALICE),  # outside the API
        ("/api/v1/things/a", {}),  # anonymous
        ("/api/v1/big?size=70000", ALICE),  # over max_body_bytes (65,536 by default)
        ("/api/v1/chunked?chunks=40&size=2000", ALICE),  # over it across chunks
    ],
)
async def test_what_is_never_kept(harness: Harness, path: str, headers: dict[str, str]) -> None:
    await harness.get(path, headers)
    assert len(harness.reads.store) == 0
    harness.breaker.is_open = True
    during = await harness.get(path, headers)
    assert during.status_code == 503
    assert "age" not in during.headers


async def test_a_private_answer_is_kept_for_its_credential(harness: Harness) -> None:
    before = await harness.get("/api/v1/revalidate/private, max-age=0", ALICE)
    harness.breaker.is_open = True
    assert_replayed(await harness.get("/api/v1/revalidate/private, max-age=0", ALICE), before, 0)


async def test_a_write_is_neither_kept_nor_answered_from_memory(harness: Harness) -> None:
    await harness.client.post("/api/v1/things/a", headers=ALICE)
    await harness.get("/api/v1/things/a", ALICE)
    assert len(harness.reads.store) == 1
    harness.breaker.is_open = True
    assert_refused(await harness.client.post("/api/v1/things/a", headers=ALICE))
    assert_refused(await harness.client.patch("/api/v1/things/a", headers=ALICE))
    assert_refused(await harness.client.delete("/api/v1/things/a", headers=ALICE))


async def test_a_body_in_chunks_is_kept_whole_up_to_the_limit(harness: Harness) -> None:
    before = await harness.get("/api/v1/chunked?chunks=5&size=100", ALICE)
    assert before.content.count(b"\n") == 5
    harness.breaker.is_open = True
    assert_replayed(await harness.get("/api/v1/chunked?chunks=5&size=100", ALICE), before, age=0)


async def test_the_size_limit_is_the_setting(make_harness: Callable[..., Harness]) -> None:
    harness = make_harness(max_body_bytes=1000)
    small = await harness.get("/api/v1/big?size=900", ALICE)  # a little under 1,000 bytes
    await harness.get("/api/v1/big?size=1000", ALICE)  # a little over
    harness.breaker.is_open = True
    assert_replayed(await harness.get("/api/v1/big?size=900", ALICE), small, age=0)
    assert (await harness.get("/api/v1/big?size=1000", ALICE)).status_code == 503


async def test_max_age_is_honoured_and_an_old_answer_is_dropped(
    make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness(max_age_seconds=60)
    before = await harness.get("/api/v1/things/a", ALICE)
    harness.breaker.is_open = True
    harness.clock.now += 60
    assert_replayed(await harness.get("/api/v1/things/a", ALICE), before, age=60)
    harness.clock.now += 0.5
    stale = "renum; fwd=stale; detail=database-unavailable"
    assert_refused(await harness.get("/api/v1/things/a", ALICE), stale)
    assert len(harness.reads.store) == 0  # too old: it never will be served again
    assert_refused(await harness.get("/api/v1/things/a", ALICE), MISS)


async def test_the_least_recently_used_answer_goes_first(
    make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness(max_entries=2)
    a = await harness.get("/api/v1/things/a", ALICE)
    await harness.get("/api/v1/things/b", ALICE)
    a = await harness.get("/api/v1/things/a", ALICE)  # read again: now the most recent
    c = await harness.get("/api/v1/things/c", ALICE)  # b goes
    assert len(harness.reads.store) == 2
    harness.breaker.is_open = True
    assert_replayed(await harness.get("/api/v1/things/a", ALICE), a, age=0)
    assert_replayed(await harness.get("/api/v1/things/c", ALICE), c, age=0)
    assert (await harness.get("/api/v1/things/b", ALICE)).status_code == 503


async def test_a_hit_during_the_outage_counts_as_a_use(
    make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness(max_entries=2)
    a = await harness.get("/api/v1/things/a", ALICE)
    await harness.get("/api/v1/things/b", ALICE)
    harness.breaker.is_open = True
    assert_replayed(await harness.get("/api/v1/things/a", ALICE), a, age=0)  # a: most recent
    harness.breaker.is_open = False
    await harness.get("/api/v1/things/c", ALICE)  # b goes, not a
    harness.breaker.is_open = True
    assert_replayed(await harness.get("/api/v1/things/a", ALICE), a, age=0)
    assert (await harness.get("/api/v1/things/b", ALICE)).status_code == 503


async def test_after_the_outage_answers_are_fresh_and_kept_again(harness: Harness) -> None:
    first = await harness.get("/api/v1/things/a", ALICE)
    harness.breaker.is_open = True
    assert_replayed(await harness.get("/api/v1/things/a", ALICE), first, age=0)
    harness.breaker.is_open = False
    harness.clock.now += 30
    fresh = await harness.get("/api/v1/things/a", ALICE)
    assert fresh.status_code == 200
    assert "cache-status" not in fresh.headers
    assert "age" not in fresh.headers
    assert fresh.json()["call"] != first.json()["call"]  # the app answered
    harness.breaker.is_open = True
    harness.clock.now += 2
    assert_replayed(await harness.get("/api/v1/things/a", ALICE), fresh, age=2)


async def test_switched_off_everything_passes_through(make_harness: Callable[..., Harness]) -> None:
    harness = make_harness(enabled=False)
    await harness.get("/api/v1/things/a", ALICE)
    assert len(harness.reads.store) == 0
    harness.breaker.is_open = True
    assert_refused(await harness.get("/api/v1/things/a", ALICE))


async def test_the_settings_are_read_live(harness: Harness, make_settings: MakeSettings) -> None:
    before = await harness.get("/api/v1/things/a", ALICE)
    harness.breaker.is_open = True
    # A reload replaces the settings object: switched off, nothing is replayed...
    harness.app.state.settings = make_settings(database_manager={"last_known": {"enabled": False}})
    assert_refused(await harness.get("/api/v1/things/a", ALICE))
    # ... and back on, with a shorter maximum age, the kept answer is too old.
    harness.app.state.settings = make_settings(
        database_manager={"last_known": {"max_age_seconds": 5}}
    )
    harness.clock.now += 4
    assert_replayed(await harness.get("/api/v1/things/a", ALICE), before, age=4)
    harness.clock.now += 2
    assert (await harness.get("/api/v1/things/a", ALICE)).status_code == 503


async def test_two_credentials_in_one_request_are_neither_kept_nor_served(
    harness: Harness,
) -> None:
    headers = [("Authorization", ALICE["Authorization"]), ("Authorization", BOB["Authorization"])]
    await harness.client.get("/api/v1/things/a", headers=headers)
    assert len(harness.reads.store) == 0
    await harness.get("/api/v1/things/a", ALICE)
    harness.breaker.is_open = True
    assert_refused(await harness.client.get("/api/v1/things/a", headers=headers))


async def test_without_a_database_yet_the_breaker_counts_as_closed(harness: Harness) -> None:
    del harness.app.state.database  # before the lifespan: no breaker to ask
    answer = await harness.get("/api/v1/things/a", ALICE)
    assert answer.status_code == 200
    assert "cache-status" not in answer.headers
    assert len(harness.reads.store) == 1  # kept, as while closed


async def test_a_lifespan_scope_passes_straight_through() -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    reads = LastKnownReads(inner, state=object())
    await reads({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await reads({"type": "websocket", "path": "/api/v1/x"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]


def middleware_chain(app: FastAPI) -> list[object]:
    """The app's middleware classes, outermost first (those of a scoped layer in its place)."""
    chain: list[object] = []
    for entry in app.user_middleware:
        if entry.cls is ScopedLayers:
            chain += [layer.cls for layer in reversed(entry.kwargs["layers"])]
        else:
            chain.append(entry.cls)
    return chain


async def test_the_database_manager_installs_it_inside_the_base_middleware(
    make_settings: MakeSettings,
) -> None:
    chain = middleware_chain(create_app(make_settings()))
    assert LastKnownReads in chain
    assert chain.index(RequestContextMiddleware) < chain.index(LastKnownReads)
    off = make_settings(database_manager={"enabled": False})
    assert LastKnownReads not in middleware_chain(create_app(off))


async def test_on_the_real_app_a_read_is_replayed_while_the_breaker_is_open(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(
        bootstrap_admin_email="root@example.com",
        bootstrap_admin_password="root-password-1",
        providers={"openai_base_url": "http://127.0.0.1:9/v1"},  # no lookup off the machine
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:

            async def token() -> str:
                answer = await client.post(
                    f"{API_PREFIX}/auth/token",
                    data={"username": "root@example.com", "password": "root-password-1"},
                )
                return str(answer.json()["access_token"])

            mine = {"Authorization": f"Bearer {await token()}"}
            other = {"Authorization": f"Bearer {await token()}"}
            me = await client.get(f"{API_PREFIX}/users/me", headers=mine)
            assert me.status_code == 200
            breaker = app.state.database.breaker
            breaker.open("a test")
            try:
                during = await client.get(f"{API_PREFIX}/users/me", headers=mine)
                assert_replayed(during, me, age=0)
                # A token that no longer verifies (here: the signing key changed) gets nothing.
                codec = app.state.codec
                other_key = SecretStr("another-signing-key-" + "k" * 40)
                app.state.codec = TokenCodec(settings.model_copy(update={"secret_key": other_key}))
                expired = await client.get(f"{API_PREFIX}/users/me", headers=mine)
                assert expired.status_code == 401  # the application's own answer to it
                assert expired.headers["cache-status"] == MISS
                app.state.codec = codec
                # The same user, another credential: the database would be needed.
                refused = await client.get(f"{API_PREFIX}/users/me", headers=other)
                assert_refused(refused, MISS)
                assert refused.headers["retry-after"]
            finally:
                breaker.close()
            again = await client.get(f"{API_PREFIX}/users/me", headers=other)
            assert again.status_code == 200
            assert "cache-status" not in again.headers
            exposition = app.state.metrics.exposition().decode()
            for outcome, count in {"stored": 2, "served": 1, "missed": 2}.items():
                line = f'renum_database_last_known_reads_total{{outcome="{outcome}"}} {count}.0'
                assert line in exposition.splitlines()


API = "/api/v1"


async def test_an_answer_that_is_not_kept_forgets_the_one_kept_before(harness: Harness) -> None:
    assert (await harness.get(f"{API}/flaky", ALICE)).status_code == 200
    harness.app.state.gone = True
    assert (await harness.get(f"{API}/flaky", ALICE)).status_code == 404
    harness.breaker.is_open = True
    assert_refused(await harness.get(f"{API}/flaky", ALICE), MISS)


async def test_a_change_or_a_refusal_forgets_every_answer_of_that_credential(
    harness: Harness,
) -> None:
    alice = await harness.get(f"{API}/things/a", ALICE)
    bob = await harness.get(f"{API}/things/a", BOB)
    assert (await harness.client.post(f"{API}/things/a", headers=ALICE)).status_code == 200
    harness.breaker.is_open = True
    assert_refused(await harness.get(f"{API}/things/a", ALICE), MISS)  # it changed things
    assert_replayed(await harness.get(f"{API}/things/a", BOB), bob, age=0)  # Bob's stay
    harness.breaker.is_open = False
    alice = await harness.get(f"{API}/things/a", ALICE)
    assert (await harness.get(f"{API}/forbidden", ALICE)).status_code == 403
    harness.breaker.is_open = True
    assert_refused(await harness.get(f"{API}/things/a", ALICE), MISS)  # it lost access
    assert alice.status_code == 200


async def test_the_order_of_a_repeated_parameter_s_values_counts(harness: Harness) -> None:
    repeated = await harness.get(f"{API}/things/a?x=1&x=2", ALICE)
    named = await harness.get(f"{API}/things/a?b=2&a=1", ALICE)
    harness.breaker.is_open = True
    assert_refused(await harness.get(f"{API}/things/a?x=2&x=1", ALICE), MISS)
    assert_replayed(await harness.get(f"{API}/things/a?x=1&x=2", ALICE), repeated, age=0)
    assert_replayed(await harness.get(f"{API}/things/a?a=1&b=2", ALICE), named, age=0)
    # A name written encoded is the same name: its values keep their order too.
    assert_refused(await harness.get(f"{API}/things/a?%61=1&b=2&a=9", ALICE), MISS)
