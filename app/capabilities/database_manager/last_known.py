"""Reads answered from their last known state while the database is away (RFC 9211's
``Cache-Status``, RFC 9111's ``Age``).

``LastKnownReads`` is a pure ASGI middleware of the database manager, inside the base request
middleware (request ids and the access log still apply). While the circuit breaker is closed it
remembers the successful answers of ``GET`` requests under ``/api/v1/`` made with an
``Authorization`` header: status, the headers that describe the body (``Content-Type``,
``ETag``, ...), the body and the moment it was stored. While the breaker is open, a ``GET`` the
same credential made before (same path, same query parameters in any order of their names, a
repeated name's values in the same order, same ``Accept``) is answered from that memory
without reaching the application (with its ``ETag``, if it had one), marked::

    Age: <whole seconds since it was stored>
    Cache-Status: renum; hit; ttl=-<the same>; detail=database-unavailable
    Cache-Control: no-store

(a hit with a negative remaining lifetime: served stale; no ``Warning``, which RFC 9111
retired; ``Date`` is the server's, the time of serving). Every other request goes on to the
application, which refuses it with the usual 503; a ``GET`` that could have been kept gets
``Cache-Status: renum; fwd=miss`` (nothing kept) or ``fwd=stale`` (kept, but older than
``max_age_seconds``) with ``detail=database-unavailable`` on its answer.

Tenant isolation: the key is two hashes (BLAKE2b-256, after a random salt of this process):
of the whole ``Authorization`` value, so an answer is only ever served to the credential it was
made for (the credential itself is never kept), and of what was asked (64 bytes a key, whatever
the request's size). A request without a credential, or with more than one, is neither kept nor
served. A JWT must still verify (signature, expiry) to be replayed to.

A kept answer is forgotten as soon as it may be wrong: when the same read later gets an answer
that is not kept (a 404 once the thing is gone, a 403, one too large), and every answer of a
credential when it is refused (401, 403) or changes anything (any other method answered 2xx:
its reads may show the state before). An API key revoked while the database is away, or by
another process, can still read its kept answers during an outage, for at most
``max_age_seconds``: checking it needs the database.

Not kept: answers other than 200, bodies that are not JSON or are encoded, answers whose
``Cache-Control`` forbids it (``no-store``) or forbids serving them stale (``no-cache``,
``must-revalidate``), answers that set cookies, bodies over ``max_body_bytes``, event streams
and long-polls (requests held open, ``app.core.middleware.hold_open``), and the operations
routes under ``/api/v1/ops/``. A request sent with ``Cache-Control: no-cache`` (or
``no-store``) is neither kept nor replayed: its client would rather have the 503. No ``GET`` of
the API returns a secret (keys are listed masked; secrets are shown only in the answers of the
``POST`` that creates them).

The memory is per process, in memory, least recently used first out beyond ``max_entries``.
The outcomes are counted on ``renum_database_last_known_reads_total{outcome}`` (``stored``,
``served``, ``missed``). Settings (``database_manager.last_known``) are read from the live
settings on each request: ``enabled: false`` passes everything through. Per request with the
breaker closed: a few comparisons, and for a kept ``GET`` one pass over the request headers,
one hash and a list of the body's chunks (never more than ``max_body_bytes``); nothing is
buffered on the way to the client.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import unquote_to_bytes

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import LastKnownSettings
from app.core.middleware import HELD_OPEN
from app.core.security import API_KEY_PREFIX, TokenError

API_PREFIX = "/api/v1/"
# Routes never kept: operators' views, which must be current or nothing.
NEVER_KEPT = ("/api/v1/ops/",)
CACHE_NAME = b"renum"
DETAIL = b"detail=database-unavailable"
# The response headers kept with an answer (they describe its body); the rest are not replayed.
KEPT_HEADERS = frozenset({b"content-type", b"etag", b"last-modified", b"link", b"content-language"})
# An answer with one of these is not kept: a coded body, a cookie to set.
REFUSING_HEADERS = frozenset({b"content-encoding", b"set-cookie"})

COUNTED_METRIC = "renum_database_last_known_reads"
# stored: answers kept; served: answers replayed during an outage; missed: reads during an
# outage that could have been replayed and were not (nothing kept, or kept too long ago).
OUTCOMES = ("stored", "served", "missed")

# Cache-Control directives that forbid keeping (no-store) or serving stale (RFC 9111 §4.2.4).
_FORBIDS_STALE = re.compile(rb"no-store|no-cache|must-revalidate", re.IGNORECASE)

# (the credential's hash, the hash of what was asked): 64 bytes, whatever the request's size
Key = tuple[bytes, bytes]
# (credential, path, query string, Accept, Last-Event-ID): what a key is made from
Request = tuple[bytes, str, bytes, bytes, bytes]
# The answers that end what a credential's kept answers may show: refused (it lost its access)
# or a change it made succeeded (a kept read may show the state before it).
_ENDS_CREDENTIAL = frozenset({401, 403})


class Answer(NamedTuple):
    """One kept answer: what is replayed, and when it was stored."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    stored_at: float  # the store's clock (monotonic): the Age is measured on it
    stored_wall: float  # seconds since the epoch, for people reading it


class AnswerStore:
    """The last answers, least recently used first; bounded by the ``limit`` given to ``put``.
    Indexed by credential, so that all of one credential's answers can go at once."""

    def __init__(self) -> None:
        self._answers: OrderedDict[Key, Answer] = OrderedDict()
        self._by_credential: dict[bytes, set[Key]] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def put(self, key: Key, answer: Answer, limit: int) -> None:
        answers = self._answers
        answers[key] = answer
        answers.move_to_end(key)
        self._by_credential.setdefault(key[0], set()).add(key)
        while len(answers) > limit:
            self.drop(next(iter(answers)))

    def get(self, key: Key) -> Answer | None:
        answer = self._answers.get(key)
        if answer is not None:
            self._answers.move_to_end(key)
        return answer

    def keys(self) -> list[Key]:
        return list(self._answers)

    def drop(self, key: Key) -> None:
        if self._answers.pop(key, None) is None:
            return
        keys = self._by_credential[key[0]]
        keys.discard(key)
        if not keys:
            del self._by_credential[key[0]]

    def drop_credential(self, credential: bytes) -> None:
        """Forget every answer kept for this credential (its hash)."""
        for key in self._by_credential.pop(credential, set()):
            self._answers.pop(key, None)


def _storable_headers(headers: Any) -> tuple[tuple[bytes, bytes], ...] | None:
    """The headers to keep with a 200 answer, or None when the answer must not be kept."""
    kept: list[tuple[bytes, bytes]] = []
    json_body = False
    for name, value in headers:
        name = name.lower()
        if name in KEPT_HEADERS:
            kept.append((name, value))
            if name == b"content-type":
                media = value.split(b";", 1)[0].strip().lower()
                json_body = media == b"application/json" or media.endswith(b"+json")
        elif (
            name in REFUSING_HEADERS
            or (name == b"cache-control" and _FORBIDS_STALE.search(value) is not None)
            or (name == b"vary" and b"*" in value)
        ):
            return None
    return tuple(kept) if json_body else None


def _credential(scope: Scope) -> bytes | None:
    """The request's single ``Authorization`` value (None: none, or several)."""
    found: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if found is not None:
                return None
            found = value
    return found or None


def _parameter_name(pair: bytes) -> bytes:
    """A query parameter's name as the application reads it (percent-decoded, ``+`` a space)."""
    return unquote_to_bytes(pair.split(b"=", 1)[0].replace(b"+", b" "))


class LastKnownReads:
    """Keeps the answers of authenticated API reads while the database answers; replays them,
    marked stale, while the circuit breaker is open.

    ``state`` is the application's state (``app.state``): its ``settings`` (replaced on a
    reload) and its ``database`` (whose ``breaker`` the database manager attaches). ``clock``
    measures the answers' age (tests step it). ``counter``, when given, counts the
    ``OUTCOMES`` by its ``outcome`` label (``counts`` holds this middleware's own)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        state: Any,
        clock: Callable[[], float] = time.monotonic,
        counter: Counter | None = None,
    ) -> None:
        self.app = app
        self.state = state
        self.clock = clock
        self.counter = counter
        self.store = AnswerStore()
        self._salt = secrets.token_bytes(32)  # per process: hashes are never comparable
        self.counts = dict.fromkeys(OUTCOMES, 0)

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        if self.counter is not None:
            self.counter.labels(outcome).inc()

    def _breaker_open(self) -> bool:
        database = getattr(self.state, "database", None)
        breaker = getattr(database, "breaker", None)
        return breaker is not None and bool(breaker.is_open)

    @staticmethod
    def _request(scope: Scope) -> Request | None:
        """What the key is made of: the request's credential, path, query, ``Accept`` and
        ``Last-Event-ID``; None when it is not one to keep or replay (no credential, or several;
        an event stream; ``Cache-Control: no-cache`` or ``no-store``). Read before the app
        runs: routing may change the scope."""
        credential: bytes | None = None
        accept = b""
        last_event_id = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                if credential is not None:
                    return None  # two credentials: which one the app reads is not ours to guess
                credential = value
            elif name == b"accept":
                accept = value if not accept else accept + b"," + value
            elif name == b"last-event-id":
                last_event_id = value
            elif name == b"cache-control" and _FORBIDS_STALE.search(value) is not None:
                return None  # the client wants the database's answer or none
        if not credential or b"text/event-stream" in accept:
            return None
        return credential, scope["path"], scope.get("query_string", b""), accept, last_event_id

    def _credential_key(self, credential: bytes) -> bytes:
        return hashlib.blake2b(self._salt + credential, digest_size=32).digest()

    def _key(self, request: Request) -> Key:
        """The key: the credential's hash and the hash of what was asked (with this process's
        salt). Query parameters count in any order of their names; the order of a repeated
        name's values stays (the application reads the last one)."""
        credential, path, query, accept, last_event_id = request
        if b"&" in query:
            pairs = sorted(query.split(b"&"), key=_parameter_name)
            query = b"&".join(pairs)
        asked = hashlib.blake2b(self._salt, digest_size=32)
        for part in (path.encode("utf-8", "surrogateescape"), query, accept, last_event_id):
            asked.update(len(part).to_bytes(8, "big"))
            asked.update(part)
        return (self._credential_key(credential), asked.digest())

    def _still_valid(self, credential: bytes) -> bool:
        """Whether a replay may go to this credential: a JWT must still verify (signature and
        expiry need no database); an API key cannot be checked without one."""
        scheme, _, token = credential.partition(b" ")
        if scheme.lower() != b"bearer" or token.startswith(API_KEY_PREFIX.encode()):
            return True
        codec = getattr(self.state, "codec", None)
        if codec is None:
            return True
        try:
            codec.decode(token.decode("latin-1"), "access")
        except TokenError:
            return False
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith(API_PREFIX)
            or scope["path"].startswith(NEVER_KEPT)
        ):
            await self.app(scope, receive, send)
            return
        settings: LastKnownSettings = self.state.settings.database_manager.last_known
        if scope["method"] != "GET":
            await self._watch_changes(scope, receive, send)
            return
        request = self._request(scope) if settings.enabled else None
        if request is None:
            await self.app(scope, receive, send)
        elif self._breaker_open():
            if self._still_valid(request[0]):
                await self._during_outage(self._key(request), settings, scope, receive, send)
            else:
                await self._during_outage(None, settings, scope, receive, send)
        else:
            await self._remember(request, settings, scope, receive, send)

    async def _watch_changes(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Any other method: when it changed something (2xx) or was refused for its
        credential (401, 403), the credential's kept answers go (they may show the state
        before the change, or what it may no longer read)."""
        credential = _credential(scope)
        if credential is None or not len(self.store):
            await self.app(scope, receive, send)
            return

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if 200 <= status < 300 or status in _ENDS_CREDENTIAL:
                    self.store.drop_credential(self._credential_key(credential))
            await send(message)

        await self.app(scope, receive, watched)

    async def _remember(
        self,
        request: Request,
        settings: LastKnownSettings,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Pass the request on; keep its answer if it is one to keep. Chunks go to the client
        as they come: only a list of references is kept, up to ``max_body_bytes``. The key is
        worked out only for an answer that is kept."""
        limit = settings.max_body_bytes
        headers: tuple[tuple[bytes, bytes], ...] | None = None
        chunks: list[bytes] = []
        size = 0

        async def remember(message: Message) -> None:
            nonlocal headers, size
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                if status == 200 and not scope.get(HELD_OPEN):
                    headers = _storable_headers(message.get("headers", ()))
                if status in _ENDS_CREDENTIAL:
                    self.store.drop_credential(self._credential_key(request[0]))
                elif headers is None:
                    self.store.drop(self._key(request))  # the answer kept before is outdated
            await send(message)
            if headers is not None and kind == "http.response.body":
                chunk: bytes = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    headers = None  # too large: stop collecting, forget the older answer
                    chunks.clear()
                    self.store.drop(self._key(request))
                elif message.get("more_body", False):
                    chunks.append(chunk)
                else:
                    body = b"".join(chunks) + chunk if chunks else chunk
                    answer = Answer(200, headers, body, self.clock(), time.time())
                    self.store.put(self._key(request), answer, settings.max_entries)
                    self._count("stored")
                    headers = None

        await self.app(scope, receive, remember)

    async def _during_outage(
        self,
        key: Key | None,
        settings: LastKnownSettings,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Replay the answer kept under ``key`` (None: the credential no longer verifies)."""
        answer = None if key is None else self.store.get(key)
        if answer is not None and key is not None:
            age = self.clock() - answer.stored_at
            if age <= settings.max_age_seconds:
                self._count("served")
                await self._replay(answer, max(0, int(age)), send)
                return
            self.store.drop(key)  # too old to serve: its memory goes now
        self._count("missed")
        status = b"fwd=stale" if answer is not None else b"fwd=miss"
        cache_status = (b"cache-status", b"%s; %s; %s" % (CACHE_NAME, status, DETAIL))

        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), cache_status]
            await send(message)

        await self.app(scope, receive, marked)

    @staticmethod
    async def _replay(answer: Answer, age: int, send: Send) -> None:
        headers = [
            *answer.headers,
            (b"content-length", str(len(answer.body)).encode("latin-1")),
            (b"age", str(age).encode("latin-1")),
            (b"cache-status", b"%s; hit; ttl=%d; %s" % (CACHE_NAME, -age, DETAIL)),
            (b"cache-control", b"no-store"),  # a stale answer: no cache keeps it further
        ]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body, "more_body": False})
