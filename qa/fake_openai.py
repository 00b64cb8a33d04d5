"""A fake OpenAI-compatible server on loopback, scriptable per test.

It is a real HTTP server (uvicorn in a background thread), so the real provider client runs
over TCP exactly as against OpenAI, vLLM or Ollama. Unit, integration, contract and load tests
share it::

    with FakeOpenAI() as fake:
        fake.script(Fail(429, retry_after=1), Reply("hello", input_tokens=3, output_tokens=1))
        ...  # point the code under test at fake.base_url
        assert fake.requests[0].headers["authorization"] == "Bearer sk-test"

Endpoints: ``POST /v1/chat/completions`` and ``GET /v1/models``. Each chat request consumes
the next scripted step; with the script empty it answers ``echo: <last user message>`` with
usage counted in words. ``script_models`` does the same for ``/v1/models`` (default: the model
list). ``require_key`` makes both endpoints answer 401 to any other bearer key. Everything is
guarded by one lock, so tests may script and read from any thread while the server answers
many requests at once.

Tests observe states rather than time: ``Held`` keeps an answer back until the test releases
it, ``in_flight`` and ``peak_in_flight`` count the chat requests being answered now and at
most at once, and ``abandoned`` lists those whose client went away before its answer (a
timeout, a cancel). A pause (``Hang``, ``Slow``, ``Held``) ends early when its client goes
away, when ``reset`` is called or when the server stops.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DEFAULT_MODELS = ("gpt-4o-mini", "fake-echo")
_STOP_POLL_S = 0.05


@dataclass(frozen=True)
class Reply:
    """A normal completion. Token counts default to word counts of the prompt and content."""

    content: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Fail:
    """Any status with any body: 429 with Retry-After, 5xx, 401, an HTML page, even a 200.

    ``body`` may be a dict (sent as JSON) or text; the default is an OpenAI-style error
    object. ``retry_after`` (seconds, or an HTTP-date string) sets the Retry-After header.
    """

    status: int
    body: str | dict[str, Any] | None = None
    retry_after: float | str | None = None
    content_type: str = "application/json"


@dataclass(frozen=True)
class Hang:
    """Wait ``seconds`` before answering normally: long enough for the client to time out."""

    seconds: float


@dataclass(frozen=True)
class Slow:
    """Wait ``seconds``, then send ``reply`` (the default echo reply when None)."""

    seconds: float
    reply: Reply | Fail | None = None


@dataclass(frozen=True)
class Held:
    """Keep the answer back until the test sets ``release`` (a ``threading.Event``), then
    send ``reply`` (the default echo reply when None). While held, the request counts in
    ``in_flight``: a test can see that a call is under way, and that something happened
    (a timeout, a cancel, a fail-fast) while the answer had not come."""

    release: threading.Event
    reply: Reply | Fail | None = None


Step = Reply | Fail | Hang | Slow | Held


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    json: Any  # the parsed body, or None when there was none or it was not JSON
    received_at: float = field(default_factory=time.time)


def _words(text: str) -> int:
    return len(text.split())


def _error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "fake_error", "code": code or str(status)}}


class FakeOpenAI:
    """The server. ``start()``/``stop()`` (or ``with``) run it on a free port of 127.0.0.1."""

    def __init__(self, host: str = "127.0.0.1", models: tuple[str, ...] = DEFAULT_MODELS):
        self.host = host
        self.models = models
        self._lock = threading.Lock()
        self._chat_steps: deque[Step] = deque()
        self._model_steps: deque[Step] = deque()
        self._requests: list[RecordedRequest] = []
        self._required_key: str | None = None
        self._stopping = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._completions = 0
        # Chat requests being answered now (by the id of their record, which the list of
        # requests keeps alive), the most at once and the ones whose client left first, all
        # since the last reset (its generation); each request's generation, to end its pause
        # when a reset comes.
        self._generation = 0
        self._tickets: dict[int, int] = {}
        self._in_flight: set[int] = set()
        self._peak_in_flight = 0
        self._abandoned: list[RecordedRequest] = []
        self.port: int | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._list_models, methods=["GET"]),
            ]
        )

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeOpenAI is not started")
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout: float = 10.0) -> FakeOpenAI:
        if self._thread is not None:
            raise RuntimeError("FakeOpenAI is already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            backlog=4096,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="fake-openai", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("FakeOpenAI did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving; hanging handlers are cut short. Safe to call twice."""
        if self._thread is None:
            return
        self._stopping.set()
        assert self._server is not None
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():  # pragma: no cover - only if a handler ignores stopping
            self._server.force_exit = True
            self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
        self._thread = self._server = self._socket = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- scripting --------------------------------------------------------------------------

    def script(self, *steps: Step) -> None:
        """Queue answers for the next chat completion requests, one step per request."""
        with self._lock:
            self._chat_steps.extend(steps)

    def script_models(self, *steps: Step) -> None:
        """Queue answers for the next ``GET /v1/models`` requests (a Reply means the list)."""
        with self._lock:
            self._model_steps.extend(steps)

    def require_key(self, key: str | None) -> None:
        """Answer 401 unless ``Authorization: Bearer <key>``; None accepts anything again."""
        with self._lock:
            self._required_key = key

    def reset(self) -> None:
        """Forget the script, the recorded requests, the counts and the required key; a
        request still paused (hanging, slow or held) is answered at once."""
        with self._lock:
            self._chat_steps.clear()
            self._model_steps.clear()
            self._requests.clear()
            self._required_key = None
            self._generation += 1
            self._tickets.clear()
            self._in_flight.clear()
            self._peak_in_flight = 0
            self._abandoned.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def completions(self) -> list[RecordedRequest]:
        """The chat completion requests received so far (the model calls), in arrival order;
        a running backend's health checks may also list the models meanwhile."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def pending_steps(self) -> int:
        """Chat steps scripted but not yet consumed."""
        with self._lock:
            return len(self._chat_steps)

    @property
    def in_flight(self) -> int:
        """Chat requests received and not yet answered (nor abandoned by their client)."""
        with self._lock:
            return len(self._in_flight)

    @property
    def peak_in_flight(self) -> int:
        """The most chat requests that were being answered at once since the last reset."""
        with self._lock:
            return self._peak_in_flight

    @property
    def abandoned(self) -> list[RecordedRequest]:
        """Chat requests whose client went away (a timeout, a cancel) before the answer
        was sent, in the order they were given up; noticed while their answer was paused."""
        with self._lock:
            return list(self._abandoned)

    # -- handlers ---------------------------------------------------------------------------

    async def _record(self, request: Request) -> tuple[RecordedRequest, str | None, Step | None]:
        """Record the request and take its step; a chat request counts in flight from here
        until ``_release`` (same lock: whoever sees it recorded sees it in flight)."""
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            json=body,
        )
        is_chat = request.url.path.endswith("/chat/completions")
        with self._lock:
            self._requests.append(recorded)
            if is_chat:
                self._tickets[id(recorded)] = self._generation
                self._in_flight.add(id(recorded))
                self._peak_in_flight = max(self._peak_in_flight, len(self._in_flight))
            required = self._required_key
            authorized = required is None or recorded.headers.get("authorization") == (
                f"Bearer {required}"
            )
            if not authorized:
                return recorded, "unauthorized", None
            queue = self._chat_steps if is_chat else self._model_steps
            step = queue.popleft() if queue else None
        return recorded, None, step

    def _interrupted(self, generation: int) -> bool:
        with self._lock:
            return self._stopping.is_set() or generation != self._generation

    async def _pause(
        self,
        request: Request,
        generation: int,
        seconds: float | None = None,
        release: threading.Event | None = None,
    ) -> bool:
        """Wait ``seconds`` or until ``release`` is set; False when the client went away
        meanwhile. Ends early when the server stops or the fake is reset."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self._interrupted(generation):
            if await request.is_disconnected():
                return False
            if release is not None and release.is_set():
                return True
            left = _STOP_POLL_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, _STOP_POLL_S))
        return True

    async def _play(
        self,
        request: Request,
        generation: int,
        step: Step | None,
        normal: Callable[[Reply | None], Response],
    ) -> Response | None:
        """The step's answer, or None when the client went away before it."""
        while isinstance(step, Hang | Slow | Held):
            if isinstance(step, Held):
                waited = await self._pause(request, generation, release=step.release)
            else:
                waited = await self._pause(request, generation, seconds=step.seconds)
            if not waited:
                return None
            step = None if isinstance(step, Hang) else step.reply
        if isinstance(step, Fail):
            return _fail_response(step)
        return normal(step)

    def _release(self, recorded: RecordedRequest, abandoned: bool) -> None:
        """The chat request is answered, or given up by its client: no longer in flight."""
        with self._lock:
            if self._tickets.pop(id(recorded), None) != self._generation:
                return  # recorded before a reset: counted in nothing any more
            self._in_flight.discard(id(recorded))
            if abandoned:
                self._abandoned.append(recorded)

    async def _chat(self, request: Request) -> Response:
        recorded, problem, step = await self._record(request)
        answer = None
        try:
            answer = await self._answer_chat(request, recorded, problem, step)
        finally:
            self._release(recorded, abandoned=answer is None)
        return answer or _GONE

    async def _answer_chat(
        self, request: Request, recorded: RecordedRequest, problem: str | None, step: Step | None
    ) -> Response | None:
        with self._lock:
            generation = self._tickets.get(id(recorded), -1)
        if problem:
            return JSONResponse(
                _error_body(401, "Incorrect API key provided.", "invalid_api_key"), 401
            )
        body = recorded.json
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return JSONResponse(_error_body(400, "'messages' is required", "invalid_request"), 400)
        model = body.get("model") or "fake-echo"

        def completion(reply: Reply | None) -> Response:
            texts = [str(m.get("content") or "") for m in messages]
            users = [str(m.get("content") or "") for m in messages if m.get("role") == "user"]
            if reply is None:
                reply = Reply(f"echo: {users[-1] if users else ''}")
            prompt_tokens = (
                reply.input_tokens
                if reply.input_tokens is not None
                else sum(_words(t) for t in texts)
            )
            completion_tokens = (
                reply.output_tokens if reply.output_tokens is not None else _words(reply.content)
            )
            with self._lock:
                self._completions += 1
                number = self._completions
            return JSONResponse(
                {
                    "id": f"chatcmpl-fake-{number}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply.content},
                            "finish_reason": reply.finish_reason,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                }
            )

        return await self._play(request, generation, step, completion)

    async def _list_models(self, request: Request) -> Response:
        with self._lock:
            generation = self._generation
        _recorded, problem, step = await self._record(request)
        if problem:
            return JSONResponse(
                _error_body(401, "Incorrect API key provided.", "invalid_api_key"), 401
            )

        def listing(_reply: Reply | None) -> Response:
            return JSONResponse(
                {
                    "object": "list",
                    "data": [
                        {"id": name, "object": "model", "created": 0, "owned_by": "fake"}
                        for name in self.models
                    ],
                }
            )

        return await self._play(request, generation, step, listing) or _GONE


# The "answer" to a client that went away before it: nobody reads it.
_GONE = Response(status_code=499)


def _fail_response(step: Fail) -> Response:
    body = step.body
    if body is None:
        body = _error_body(step.status, f"scripted failure (HTTP {step.status})")
    content = json.dumps(body) if isinstance(body, dict) else body
    headers = {} if step.retry_after is None else {"Retry-After": str(step.retry_after)}
    return Response(content, status_code=step.status, headers=headers, media_type=step.content_type)


_shared_lock = threading.Lock()
_shared: FakeOpenAI | None = None


def shared_fake() -> FakeOpenAI:
    """The harness process's one fake server, started on first use and stopped at exit.

    Every launched backend uses it as its platform base URL (the operator's trusted
    destination), so no backend ever resolves a public provider host; the ``fake_openai``
    fixture hands it out, reset, to each test."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = FakeOpenAI().start()
            atexit.register(_shared.stop)
        return _shared
