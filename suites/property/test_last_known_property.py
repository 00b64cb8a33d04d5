"""Properties of the last-known reads (``app.capabilities.database_manager.last_known``) over
any sequence of requests, from several credentials, to several paths, with the circuit breaker
opening and closing and time passing in between:

- isolation: an answer replayed from memory always carries the body of an answer made for the
  same credential (and path) while the database answered; never another credential's, however
  alike the credentials (case, spaces, prefixes), however small the memory or short the age;
- exactness: with room for everything and no age limit, a read is replayed if and only if the
  same credential read the same path while the breaker was closed, and then with the last such
  answer; every other read during the outage reaches the app (and its 503).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from app.capabilities.database_manager.last_known import LastKnownReads
from app.core.config import LastKnownSettings

# Alike on purpose: a key that lost case, spacing or a suffix would mix them up.
CREDENTIALS = [
    "Bearer alice",
    "Bearer Alice",
    "bearer alice",
    "Bearer alice ",
    "Bearer alice2",
    "Bearer bob",
    "Bearer rk_live_0123456789abcdef",
    "",  # an empty header: anonymous
    None,  # no header
]
PATHS = [
    ("/api/v1/agents", b""),
    ("/api/v1/agents", b"limit=5&offset=0"),
    ("/api/v1/agents", b"offset=0&limit=5"),  # the same query, another order
    ("/api/v1/agents/1", b""),
    ("/api/v1/teams", b""),
    ("/api/v1/ops/deliveries", b""),  # never kept
]


@dataclass(frozen=True)
class Read:
    credential: int
    path: int
    breaker_open: bool
    seconds_later: float


@st.composite
def sequences(draw: st.DrawFn) -> list[Read]:
    """Reads among a few credentials and paths of this example (so that reads repeat, and
    outages find answers kept for them and for the credentials alike them)."""
    credentials = draw(st.lists(st.integers(0, len(CREDENTIALS) - 1), min_size=1, max_size=3))
    paths = draw(st.lists(st.integers(0, len(PATHS) - 1), min_size=1, max_size=2))
    read = st.builds(
        Read,
        credential=st.sampled_from(credentials),
        path=st.sampled_from(paths),
        breaker_open=st.booleans(),
        seconds_later=st.sampled_from([0.0, 0.4, 1.0, 7.5, 30.0]),
    )
    return draw(st.lists(read, min_size=8, max_size=40))


class Backend:
    """A raw ASGI app like the API: each answer names who asked, for which path, and a serial
    number; while the breaker is open it refuses with 503."""

    def __init__(self) -> None:
        self.breaker = SimpleNamespace(is_open=False)
        self.serial = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.breaker.is_open:
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        self.serial += 1
        headers = dict(scope["headers"])
        body = json.dumps(
            {
                "caller": headers.get(b"authorization", b"").decode(),
                "path": scope["path"],
                "query": sorted(scope["query_string"].decode().split("&")),
                "serial": self.serial,
            }
        ).encode()
        start = {"type": "http.response.start", "status": 200}
        await send({**start, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    @property
    def replayed(self) -> bool:
        return b"hit" in self.headers.get(b"cache-status", b"")


async def request(app: Any, read: Read) -> Answer:
    path, query = PATHS[read.path]
    credential = CREDENTIALS[read.credential]
    headers = [] if credential is None else [(b"authorization", credential.encode())]
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": query,
        "headers": headers,
    }
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start, body = messages
    return Answer(start["status"], dict(start["headers"]), body["body"])


def run(sequence: list[Read], settings: LastKnownSettings) -> list[tuple[Read, Answer]]:
    backend = Backend()
    clock = Clock()
    state = SimpleNamespace(
        settings=SimpleNamespace(database_manager=SimpleNamespace(last_known=settings)),
        database=SimpleNamespace(breaker=backend.breaker),
    )
    middleware = LastKnownReads(backend, state=state, clock=clock)

    async def go() -> list[tuple[Read, Answer]]:
        answers = []
        for read in sequence:
            clock.now += read.seconds_later
            backend.breaker.is_open = read.breaker_open
            answers.append((read, await request(middleware, read)))
        return answers

    return asyncio.run(go())


def same_read(path: int) -> tuple[str, tuple[bytes, ...]]:
    """Paths that are one read: the same path, the same query in any order."""
    name, query = PATHS[path]
    return name, tuple(sorted(query.split(b"&")))


@given(
    sequence=sequences(),
    max_entries=st.integers(1, 6),
    max_age=st.sampled_from([1.0, 10.0, 60.0]),
)
@example(
    sequence=[Read(0, 0, False, 0.0), Read(1, 0, True, 0.0), Read(2, 0, True, 0.0)],
    max_entries=1,
    max_age=60.0,
)
def test_a_replayed_answer_is_always_the_same_credentials_own(
    sequence: list[Read], max_entries: int, max_age: float
) -> None:
    settings = LastKnownSettings(max_entries=max_entries, max_age_seconds=max_age)
    # Every body each credential was given while the database answered, per read.
    given_to: dict[tuple[str | None, tuple[str, tuple[bytes, ...]]], set[bytes]] = {}
    for read, answer in run(sequence, settings):
        credential = CREDENTIALS[read.credential]
        key = (credential, same_read(read.path))
        if answer.replayed:
            assert read.breaker_open
            assert json.loads(answer.body)["caller"] == credential
            assert answer.body in given_to.get(key, set())
            assert int(answer.headers[b"age"]) <= max_age
        elif answer.status == 200:
            assert not read.breaker_open
            given_to.setdefault(key, set()).add(answer.body)


@given(sequence=sequences())
def test_with_room_for_everything_a_read_is_replayed_exactly_when_it_was_made_before(
    sequence: list[Read],
) -> None:
    settings = LastKnownSettings(max_entries=1000, max_age_seconds=86_400)
    last: dict[tuple[str, tuple[str, tuple[bytes, ...]]], tuple[bytes, float]] = {}
    now = 0.0
    for read, answer in run(sequence, settings):
        now += read.seconds_later
        credential = CREDENTIALS[read.credential]
        kept = bool(credential) and not PATHS[read.path][0].startswith("/api/v1/ops/")
        key = (credential or "", same_read(read.path))
        if not read.breaker_open:
            assert answer.status == 200
            assert not answer.replayed
            if kept:
                last[key] = (answer.body, now)
        elif kept and key in last:
            body, stored = last[key]
            assert answer.replayed
            assert answer.status == 200
            assert answer.body == body
            assert answer.headers[b"age"] == str(int(now - stored)).encode()
        else:
            assert answer.status == 503  # reached the app
            assert not answer.replayed
