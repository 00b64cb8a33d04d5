"""The fake OpenAI-compatible server itself: defaults, each scripted step, keys, concurrency,
and the states tests read instead of clocks (held answers, requests in flight, abandoned)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from qa.fake_openai import DEFAULT_MODELS, Fail, FakeOpenAI, Hang, Held, Reply, Slow
from qa.polling import wait_until


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOpenAI) -> FakeOpenAI:
    server.reset()
    return server


@pytest.fixture
def http(fake: FakeOpenAI) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.base_url, timeout=5) as client:
        yield client


def chat(client: httpx.Client, text: str = "hello there", **headers: str) -> httpx.Response:
    return client.post(
        "/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "you are terse"},
                {"role": "user", "content": "first question"},
                {"role": "user", "content": text},
            ],
        },
        headers=headers,
    )


def test_default_reply_echoes_the_last_user_message(http: httpx.Client) -> None:
    response = chat(http, "how are the tides")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini"
    assert body["id"].startswith("chatcmpl-fake-")
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "echo: how are the tides"}
    assert choice["finish_reason"] == "stop"
    # words in every message: 3 + 2 + 4; words out: "echo:" + 4
    assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}


def test_script_is_consumed_in_order_then_the_default_returns(
    fake: FakeOpenAI, http: httpx.Client
) -> None:
    fake.script(Reply("one", input_tokens=10, output_tokens=20), Reply("two words"))
    assert fake.pending_steps == 2
    first, second, third = (chat(http).json() for _ in range(3))
    assert first["choices"][0]["message"]["content"] == "one"
    assert first["usage"]["prompt_tokens"] == 10
    assert first["usage"]["completion_tokens"] == 20
    assert second["choices"][0]["message"]["content"] == "two words"
    assert second["usage"]["completion_tokens"] == 2
    assert third["choices"][0]["message"]["content"] == "echo: hello there"
    assert fake.pending_steps == 0


def test_fail_steps(fake: FakeOpenAI, http: httpx.Client) -> None:
    fake.script(
        Fail(429, retry_after=2),
        Fail(500),
        Fail(
            503, {"error": {"message": "overloaded"}}, retry_after="Wed, 21 Oct 2015 07:28:00 GMT"
        ),
        Fail(200, "<html>gateway</html>", content_type="text/html"),
    )
    limited = chat(http)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    assert limited.json()["error"]["message"] == "scripted failure (HTTP 429)"
    failed = chat(http)
    assert failed.status_code == 500
    assert "retry-after" not in failed.headers
    overloaded = chat(http)
    assert overloaded.json() == {"error": {"message": "overloaded"}}
    assert overloaded.headers["retry-after"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    html = chat(http)
    assert html.status_code == 200
    assert html.headers["content-type"].startswith("text/html")
    assert html.text == "<html>gateway</html>"


def content(response: httpx.Response) -> str:
    return str(response.json()["choices"][0]["message"]["content"])


def test_hang_and_slow_answer_after_their_pause(fake: FakeOpenAI, http: httpx.Client) -> None:
    fake.script(Hang(0.05), Slow(0.05, Reply("late")), Slow(0.05, Fail(502)), Slow(0.05))
    assert content(chat(http)) == "echo: hello there"
    assert content(chat(http)) == "late"
    assert chat(http).status_code == 502
    assert content(chat(http, "default")) == "echo: default"
    assert (fake.in_flight, fake.peak_in_flight, fake.abandoned) == (0, 1, [])


def test_paused_answers_are_held_back_while_others_are_answered(
    fake: FakeOpenAI, http: httpx.Client
) -> None:
    """Each pause keeps its answer back (the request stays in flight) while the server answers
    later requests; a held answer goes when released, the others when their pause ends (here
    cut short by ``reset``, so no test waits out a pause)."""
    release = threading.Event()
    fake.script(Hang(60), Slow(60, Reply("late")), Held(release, Fail(502)))
    with ThreadPoolExecutor(max_workers=3) as pool:
        hanging = pool.submit(chat, http, "hanging")
        wait_until(lambda: fake.in_flight == 1, what="the hanging request")
        slow = pool.submit(chat, http, "slow")
        wait_until(lambda: fake.in_flight == 2, what="the slow request")
        held = pool.submit(chat, http, "held")
        wait_until(lambda: fake.in_flight == 3, what="the held request")

        assert content(chat(http, "meanwhile")) == "echo: meanwhile"
        assert [f.done() for f in (hanging, slow, held)] == [False, False, False]
        assert (fake.in_flight, fake.peak_in_flight) == (3, 4)

        release.set()
        assert held.result(timeout=10).status_code == 502
        assert fake.in_flight == 2
        assert [f.done() for f in (hanging, slow)] == [False, False]

        fake.reset()  # ends every pause: each answers as its step says after the pause
        assert content(hanging.result(timeout=10)) == "echo: hanging"
        assert content(slow.result(timeout=10)) == "late"
    assert (fake.in_flight, fake.peak_in_flight, fake.abandoned) == (0, 0, [])


def test_a_client_timeout_on_hang(fake: FakeOpenAI) -> None:
    fake.script(Hang(60))
    with httpx.Client(base_url=fake.base_url, timeout=0.2) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            chat(impatient, "given up")
        # the server keeps answering others while one handler hangs
        assert chat(impatient).status_code == 200
    # The client went away: the request is abandoned, not in flight for the rest of the hang.
    [abandoned] = wait_until(lambda: fake.abandoned, what="the abandoned request")
    assert abandoned.json["messages"][-1]["content"] == "given up"
    assert fake.in_flight == 0


def test_a_held_request_whose_client_leaves_is_abandoned(fake: FakeOpenAI) -> None:
    release = threading.Event()
    fake.script(Held(release))
    with (
        httpx.Client(base_url=fake.base_url, timeout=0.2) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        chat(impatient)
    wait_until(lambda: len(fake.abandoned) == 1, what="the abandoned request")
    assert not release.is_set()  # left without its answer being released
    assert fake.in_flight == 0


def test_requests_are_recorded(fake: FakeOpenAI, http: httpx.Client) -> None:
    chat(http, "recorded", authorization="Bearer sk-abc", x_custom="yes")
    http.get("/models")
    first, second = fake.requests
    assert (first.method, first.path) == ("POST", "/v1/chat/completions")
    assert first.headers["authorization"] == "Bearer sk-abc"
    assert first.headers["x_custom"] == "yes"
    assert first.json["messages"][-1] == {"role": "user", "content": "recorded"}
    assert first.received_at <= second.received_at
    assert (second.method, second.path, second.json) == ("GET", "/v1/models", None)
    fake.requests.clear()  # a copy: the record is unchanged
    assert len(fake.requests) == 2


def test_require_key(fake: FakeOpenAI, http: httpx.Client) -> None:
    fake.require_key("sk-right")
    fake.script(Reply("kept for the right key"))
    for headers in ({}, {"authorization": "Bearer sk-wrong"}):
        refused = chat(http, **headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert "sk-wrong" not in refused.text
    assert http.get("/models").status_code == 401
    accepted = chat(http, authorization="Bearer sk-right")
    assert accepted.json()["choices"][0]["message"]["content"] == "kept for the right key"
    fake.require_key(None)
    assert chat(http).status_code == 200


def test_models_endpoint_and_its_script(fake: FakeOpenAI, http: httpx.Client) -> None:
    listing = http.get("/models").json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == list(DEFAULT_MODELS)
    fake.script_models(Fail(503), Reply("ignored: a Reply means the list"))
    assert http.get("/models").status_code == 503
    assert http.get("/models").json() == listing
    http.post("/chat/completions", json={"model": "m", "messages": []})
    assert len(fake.requests) == 4
    assert [(r.method, r.path) for r in fake.completions] == [("POST", "/v1/chat/completions")]


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"model": "m"}', b'{"messages": "text"}', b'{"messages": ["x"]}'],
)
def test_malformed_chat_requests_get_400(http: httpx.Client, body: bytes) -> None:
    response = http.post(
        "/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "'messages' is required"


def test_no_user_message_echoes_nothing(http: httpx.Client) -> None:
    response = http.post("/chat/completions", json={"messages": [{"role": "system"}]})
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "echo: "
    assert body["model"] == "fake-echo"
    assert body["usage"]["prompt_tokens"] == 0


def test_concurrent_requests_are_answered_side_by_side(fake: FakeOpenAI) -> None:
    count = 40
    release = threading.Event()
    fake.script(*(Held(release, Reply(f"reply {i}")) for i in range(count)))

    limits = httpx.Limits(max_connections=count)
    with httpx.Client(base_url=fake.base_url, timeout=30, limits=limits) as client:

        def call(i: int) -> str:
            return content(chat(client, f"q{i}"))

        with ThreadPoolExecutor(max_workers=count) as pool:
            replies = pool.map(call, range(count))
            # All forty are being answered at once (none was answered before the others came).
            wait_until(lambda: fake.in_flight == count, what=f"{count} requests in flight")
            release.set()
            answered = list(replies)
    assert sorted(answered) == sorted(f"reply {i}" for i in range(count))  # each step used once
    assert fake.peak_in_flight == count
    assert fake.in_flight == 0
    assert len(fake.requests) == count
    assert fake.pending_steps == 0


def test_lifecycle() -> None:
    fake = FakeOpenAI()
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.base_url
    fake.stop()  # stopping a server that never started is harmless
    with fake:
        with pytest.raises(RuntimeError, match="already started"):
            fake.start()
        assert fake.base_url == f"http://127.0.0.1:{fake.port}/v1"
        fake.script(Hang(30))
        with (
            httpx.Client(base_url=fake.base_url, timeout=0.2) as client,
            pytest.raises(httpx.ReadTimeout),
        ):
            chat(client)
        port = fake.port
        # A client still waiting on a hanging answer: stopping cuts the pause short, so the
        # client gets its answer and stop() does not wait for the hang.
        fake.script(Hang(60))
        with (
            httpx.Client(base_url=fake.base_url, timeout=30) as patient,
            ThreadPoolExecutor(max_workers=1) as pool,
        ):
            waiting = pool.submit(chat, patient, "still there")
            wait_until(lambda: fake.in_flight == 1, what="the hanging request")
            fake.stop()
            assert content(waiting.result(timeout=10)) == "echo: still there"
    fake.stop()
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


def test_start_failure_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeOpenAI()
    monkeypatch.setattr("uvicorn.Server.run", lambda self, sockets=None: None)
    with pytest.raises(RuntimeError, match="did not start"):
        fake.start()
    assert fake._thread is None


def test_the_plugin_fixture_yields_a_started_server(fake_openai: FakeOpenAI) -> None:
    assert isinstance(fake_openai, FakeOpenAI)
    assert httpx.get(f"{fake_openai.base_url}/models", timeout=5).status_code == 200
