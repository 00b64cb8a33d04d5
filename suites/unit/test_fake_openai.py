"""The fake OpenAI-compatible server itself: defaults, each scripted step, keys, concurrency."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from qa.fake_openai import DEFAULT_MODELS, Fail, FakeOpenAI, Hang, Reply, Slow


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


def test_hang_and_slow_delay_the_answer(fake: FakeOpenAI, http: httpx.Client) -> None:
    fake.script(Hang(0.2), Slow(0.1, Reply("late")), Slow(0.1, Fail(502)), Slow(0.05))
    started = time.perf_counter()
    assert chat(http).json()["choices"][0]["message"]["content"] == "echo: hello there"
    assert time.perf_counter() - started >= 0.2
    assert chat(http).json()["choices"][0]["message"]["content"] == "late"
    assert chat(http).status_code == 502
    assert chat(http, "default").json()["choices"][0]["message"]["content"] == "echo: default"


def test_a_client_timeout_on_hang(fake: FakeOpenAI) -> None:
    fake.script(Hang(5))
    with httpx.Client(base_url=fake.base_url, timeout=0.2) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            chat(impatient)
        # the server keeps answering others while one handler hangs
        assert chat(impatient).status_code == 200


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
    fake.script(*(Slow(0.2, Reply(f"reply {i}")) for i in range(count)))

    limits = httpx.Limits(max_connections=count)
    with httpx.Client(base_url=fake.base_url, timeout=5, limits=limits) as client:

        def call(i: int) -> str:
            return chat(client, f"q{i}").json()["choices"][0]["message"]["content"]

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=count) as pool:
            replies = list(pool.map(call, range(count)))
        elapsed = time.perf_counter() - started
    assert sorted(replies) == sorted(f"reply {i}" for i in range(count))  # each step used once
    assert elapsed < 2.0  # 40 x 0.2 s one after another would take 8 s
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
        started = time.perf_counter()
    assert time.perf_counter() - started < 3  # the hanging handler did not hold up stop()
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
