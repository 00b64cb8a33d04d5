"""The OpenAI-compatible provider against the fake server, over real HTTP on loopback.

Covers replies and usage, each failure kind, retries with backoff and Retry-After (the sleep
is injected, so no test waits for a backoff), per-attempt timeouts, the API key's handling,
the generic failure messages (a status without the provider's body; one "unreachable" for a
closed, a silent and a non-HTTP port of a tenant's URL; the egress guard's refusal) and the
pure backoff arithmetic.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from structlog.testing import capture_logs

from app.core.egress import EgressGuard, guarded_client
from app.services.providers import (
    ChatMessage,
    ModelProvider,
    ModelRequest,
    OpenAICompatibleProvider,
    ProviderAuthError,
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    RetryPolicy,
)
from app.services.providers.base import backoff_delay, parse_retry_after, retry_delay
from qa.fake_openai import Fail, FakeOpenAI, Hang, Held, Reply
from qa.polling import wait_until_async

pytestmark = pytest.mark.anyio

KEY = "sk-unit-test-0123456789abcdef"
FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.01)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOpenAI) -> FakeOpenAI:
    server.reset()
    return server


class Sleeps:
    """An injected ``sleep`` that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_request(
    text: str = "hello world",
    *,
    retry: RetryPolicy = FAST,
    timeout_s: float = 5.0,
    **kwargs: object,
) -> ModelRequest:
    return ModelRequest(
        model="gpt-4o-mini",
        messages=(ChatMessage("system", "be brief"), ChatMessage("user", text)),
        retry=retry,
        timeout_s=timeout_s,
        **kwargs,  # type: ignore[arg-type]
    )


def provider_for(
    fake: FakeOpenAI, key: str | None = KEY, sleeps: Sleeps | None = None, rng: float = 0.5
) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(fake.base_url, key, sleep=sleeps or Sleeps(), rng=lambda: rng)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# -- replies ----------------------------------------------------------------------------------


async def test_normal_reply_carries_content_usage_and_sends_the_request(fake: FakeOpenAI) -> None:
    async with provider_for(fake) as provider:
        started = time.perf_counter()
        response = await provider.complete(make_request(temperature=0.2, max_tokens=50))
        around = time.perf_counter() - started
    assert response.content == "echo: hello world"
    assert (response.input_tokens, response.output_tokens) == (4, 3)  # words in, words out
    assert response.model == "gpt-4o-mini"
    assert response.attempts == 1
    assert response.finish_reason == "stop"
    assert 0 < response.duration_s <= around  # the call's own time, inside the time around it
    [sent] = fake.requests
    assert sent.method == "POST"
    assert sent.path == "/v1/chat/completions"
    assert sent.json == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello world"},
        ],
        "stream": False,
        "temperature": 0.2,
        "max_tokens": 50,
    }
    assert sent.headers["content-type"] == "application/json"


async def test_usage_comes_from_the_response(fake: FakeOpenAI) -> None:
    fake.script(Reply("forty-two", input_tokens=1234, output_tokens=56, finish_reason="length"))
    async with provider_for(fake) as provider:
        response = await provider.complete(make_request())
    assert response.content == "forty-two"
    assert (response.input_tokens, response.output_tokens) == (1234, 56)
    assert response.finish_reason == "length"


async def test_optional_parameters_are_left_out_when_unset(fake: FakeOpenAI) -> None:
    async with provider_for(fake) as provider:
        await provider.complete(make_request())
    assert set(fake.requests[0].json) == {"model", "messages", "stream"}


async def test_provider_satisfies_the_protocol(fake: FakeOpenAI) -> None:
    provider = provider_for(fake)
    assert isinstance(provider, ModelProvider)
    assert provider.name == "openai"
    await provider.aclose()
    await provider.aclose()  # idempotent


async def test_a_shared_client_is_used_and_left_open(fake: FakeOpenAI) -> None:
    async with httpx.AsyncClient() as client:
        async with OpenAICompatibleProvider(fake.base_url + "/", KEY, client=client) as provider:
            await provider.complete(make_request())
        assert not client.is_closed
        assert fake.requests[0].path == "/v1/chat/completions"  # trailing slash trimmed


async def test_concurrent_calls_on_one_provider(fake: FakeOpenAI) -> None:
    release = threading.Event()
    fake.script(*(Held(release) for _ in range(10)))
    async with provider_for(fake) as provider:
        calls = asyncio.gather(*(provider.complete(make_request(f"call {i}")) for i in range(10)))
        # Side by side, not one after another: all ten wait on the server at once.
        await wait_until_async(lambda: fake.in_flight == 10, what="ten calls in flight")
        release.set()
        responses = await calls
    assert sorted(r.content for r in responses) == sorted(f"echo: call {i}" for i in range(10))
    assert fake.peak_in_flight == 10


# -- retries ----------------------------------------------------------------------------------


async def test_rate_limit_with_retry_after_then_success(fake: FakeOpenAI) -> None:
    fake.script(Fail(429, retry_after=7))
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.5, max_backoff_s=8.0)
    async with provider_for(fake, sleeps=sleeps) as provider:
        response = await provider.complete(make_request(retry=policy))
    assert sleeps.delays == [7.0]
    assert response.attempts == 2
    assert response.content == "echo: hello world"
    assert len(fake.requests) == 2


async def test_retry_after_as_http_date(fake: FakeOpenAI) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    fake.script(Fail(429, retry_after=format_datetime(when, usegmt=True)))
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=2, max_backoff_s=10.0)
    async with provider_for(fake, sleeps=sleeps) as provider:
        await provider.complete(make_request(retry=policy))
    [delay] = sleeps.delays
    assert 27 <= delay <= 30


async def test_retry_after_is_capped(fake: FakeOpenAI) -> None:
    fake.script(Fail(429, retry_after=3600))
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=2, max_backoff_s=2.0)
    async with provider_for(fake, sleeps=sleeps) as provider:
        await provider.complete(make_request(retry=policy))
    assert sleeps.delays == [8.0]  # max_backoff_s * 4


async def test_server_errors_are_retried_with_backoff(fake: FakeOpenAI) -> None:
    fake.script(Fail(500), Fail(502))
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.2, max_backoff_s=8.0)
    async with provider_for(fake, sleeps=sleeps, rng=0.5) as provider:
        response = await provider.complete(make_request(retry=policy))
    assert response.attempts == 3
    assert sleeps.delays == pytest.approx([0.1, 0.2])  # 0.5 * 0.2 * 2**0, 0.5 * 0.2 * 2**1
    assert len(fake.requests) == 3


async def test_exhausted_retries_raise_the_last_error_with_the_attempts(fake: FakeOpenAI) -> None:
    fake.script(Fail(500), Fail(503), Fail(429, retry_after=0), Reply("never reached"))
    sleeps = Sleeps()
    async with provider_for(fake, sleeps=sleeps) as provider:
        with pytest.raises(ProviderRateLimited) as caught:
            await provider.complete(make_request())
    error = caught.value
    assert error.attempts == 3
    assert error.status == 429
    assert error.retryable
    assert error.retry_after == 0
    assert error.to_dict() == {
        "kind": "rate_limit",
        "message": error.message,
        "status": 429,
        "retryable": True,
        "attempts": 3,
    }
    assert len(sleeps.delays) == 2
    assert fake.pending_steps == 1


async def test_a_single_attempt_policy_never_retries(fake: FakeOpenAI) -> None:
    fake.script(Fail(503))
    sleeps = Sleeps()
    async with provider_for(fake, sleeps=sleeps) as provider:
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.complete(make_request(retry=RetryPolicy(max_attempts=1)))
    assert caught.value.attempts == 1
    assert sleeps.delays == []


async def test_the_real_sleep_is_used_by_default(fake: FakeOpenAI) -> None:
    fake.script(Fail(503))
    async with OpenAICompatibleProvider(fake.base_url, None) as provider:
        response = await provider.complete(make_request())
    assert response.attempts == 2


# -- failure kinds ----------------------------------------------------------------------------


async def test_each_attempt_is_bounded_by_the_timeout(fake: FakeOpenAI) -> None:
    release = threading.Event()  # never set: only the timeout can end the call
    fake.script(Held(release))
    async with provider_for(fake) as provider:
        with pytest.raises(ProviderTimeout) as caught:
            await provider.complete(make_request(timeout_s=0.2, retry=RetryPolicy(max_attempts=1)))
    # The provider gave up on the held answer: the server saw its client leave.
    await wait_until_async(lambda: fake.abandoned, what="the abandoned call")
    assert not release.is_set()
    assert caught.value.kind == "timeout"
    assert caught.value.retryable
    assert "0.2 s" in caught.value.message


async def test_a_timed_out_attempt_is_retried(fake: FakeOpenAI) -> None:
    fake.script(Held(threading.Event()), Reply("second time lucky"))
    async with provider_for(fake) as provider:
        response = await provider.complete(make_request(timeout_s=0.2))
    assert response.content == "second time lucky"
    assert response.attempts == 2
    await wait_until_async(lambda: len(fake.abandoned) == 1, what="the first, abandoned call")


async def test_slow_reply_within_the_timeout_succeeds(fake: FakeOpenAI) -> None:
    release = threading.Event()
    fake.script(Held(release, Reply("patience")))
    async with provider_for(fake) as provider:
        call = asyncio.ensure_future(provider.complete(make_request(timeout_s=30)))
        await wait_until_async(lambda: fake.in_flight == 1, what="the call in flight")
        held_from = time.perf_counter()
        await asyncio.sleep(0.05)  # how long is immaterial: the figures below are compared
        release.set()
        held = time.perf_counter() - held_from
        response = await call
    assert response.content == "patience"
    # The call's duration covers the time its answer was held (measured inside the call).
    assert response.duration_s >= held


async def test_http_408_is_a_retryable_timeout(fake: FakeOpenAI) -> None:
    fake.script(Fail(408), Fail(408), Fail(408))
    async with provider_for(fake) as provider:
        with pytest.raises(ProviderTimeout) as caught:
            await provider.complete(make_request())
    assert (caught.value.status, caught.value.attempts) == (408, 3)


async def test_html_body_is_a_bad_response_and_not_retried(fake: FakeOpenAI) -> None:
    fake.script(
        Fail(200, "<html><body>Welcome to the gateway</body></html>", content_type="text/html")
    )
    async with provider_for(fake) as provider:
        with pytest.raises(ProviderBadResponse) as caught:
            await provider.complete(make_request())
    error = caught.value
    assert error.kind == "bad_response"
    assert not error.retryable
    assert error.attempts == 1
    assert error.message == "provider answered HTTP 200 with a body that is not JSON"
    assert "Welcome" not in error.message
    assert len(fake.requests) == 1


async def test_html_error_page_from_a_gateway_is_unavailable(fake: FakeOpenAI) -> None:
    fake.script(Fail(502, "<html>Bad Gateway</html>", content_type="text/html"), Reply("ok"))
    async with provider_for(fake) as provider:
        response = await provider.complete(make_request())
    assert response.attempts == 2


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failures_are_not_retried(fake: FakeOpenAI, status: int) -> None:
    fake.script(Fail(status), Reply("never"))
    sleeps = Sleeps()
    async with provider_for(fake, sleeps=sleeps) as provider:
        with pytest.raises(ProviderAuthError) as caught:
            await provider.complete(make_request())
    assert caught.value.kind == "auth"
    assert caught.value.status == status
    assert caught.value.attempts == 1
    assert not caught.value.retryable
    assert sleeps.delays == []
    assert len(fake.requests) == 1


async def test_other_client_errors_are_bad_responses_with_only_the_status(
    fake: FakeOpenAI,
) -> None:
    fake.script(Fail(404, {"error": {"message": "The model `gpt-9` does not exist"}}))
    with capture_logs() as logs:
        async with provider_for(fake) as provider:
            with pytest.raises(ProviderBadResponse) as caught:
                await provider.complete(make_request())
    assert caught.value.status == 404
    assert caught.value.message == "provider rejected the request (HTTP 404)"
    [failure] = [entry for entry in logs if entry["event"] == "provider.failure"]
    assert failure["detail"] == "The model `gpt-9` does not exist"  # for operators only
    assert failure["status"] == 404
    assert failure["host"] == f"127.0.0.1:{fake.port}"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": "plain string error"}, "plain string error"),
        ({"message": "top-level message"}, "top-level message"),
        ({"detail": "fastapi style"}, "fastapi style"),
        ({"error": {"code": 1}}, None),
        (["not", "an", "object"], None),
        ({"error": {"message": "x" * 500}}, "x" * 199 + "…"),
    ],
)
async def test_error_details_are_logged_shortened_and_never_shown(
    fake: FakeOpenAI, body: object, expected: str | None
) -> None:
    text = body if isinstance(body, dict) else '["not", "an", "object"]'
    fake.script(Fail(400, text))  # type: ignore[arg-type]
    with capture_logs() as logs:
        async with provider_for(fake) as provider:
            with pytest.raises(ProviderBadResponse) as caught:
                await provider.complete(make_request())
    assert caught.value.message == "provider rejected the request (HTTP 400)"
    [failure] = [entry for entry in logs if entry["event"] == "provider.failure"]
    assert failure["detail"] == expected


async def test_a_redirect_is_not_followed(fake: FakeOpenAI) -> None:
    fake.script(Fail(302, ""), Reply("never"))
    async with provider_for(fake) as provider:
        with pytest.raises(ProviderBadResponse) as caught:
            await provider.complete(make_request())
    assert caught.value.message == (
        "provider redirected the request (HTTP 302); redirects are not followed"
    )
    assert not caught.value.retryable
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('["a list"]', "not a JSON object"),
        ("{}", "no choices"),
        ('{"choices": []}', "no choices"),
        ('{"choices": [{"index": 0}]}', "has no message"),
        ('{"choices": [{"message": {"content": 42}}], "usage": {}}', "not text"),
        ('{"choices": [{"message": {"content": "hi"}}]}', "no usage"),
        (
            '{"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 1}}',
            "usage.completion_tokens",
        ),
        (
            '{"choices": [{"message": {"content": "hi"}}],'
            ' "usage": {"prompt_tokens": -1, "completion_tokens": 1}}',
            "usage.prompt_tokens",
        ),
        (
            '{"choices": [{"message": {"content": "hi"}}],'
            ' "usage": {"prompt_tokens": true, "completion_tokens": 1}}',
            "usage.prompt_tokens",
        ),
    ],
)
async def test_malformed_completions_are_bad_responses(
    fake: FakeOpenAI, body: str, problem: str
) -> None:
    fake.script(Fail(200, body))
    async with provider_for(fake) as provider:
        with pytest.raises(ProviderBadResponse) as caught:
            await provider.complete(make_request())
    assert problem in caught.value.message
    assert caught.value.attempts == 1


async def test_null_content_and_missing_model_are_tolerated(fake: FakeOpenAI) -> None:
    fake.script(
        Fail(
            200,
            '{"choices": [{"message": {"role": "assistant", "content": null}}],'
            ' "usage": {"prompt_tokens": 3, "completion_tokens": 0}}',
        )
    )
    async with provider_for(fake) as provider:
        response = await provider.complete(make_request())
    assert response.content == ""
    assert response.model == "gpt-4o-mini"  # the requested model
    assert response.finish_reason is None


async def test_connection_refused_is_unavailable_after_all_attempts() -> None:
    sleeps = Sleeps()
    async with OpenAICompatibleProvider(closed_port_url(), KEY, sleep=sleeps) as provider:
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.complete(make_request())
    assert caught.value.kind == "unavailable"
    assert caught.value.retryable
    assert caught.value.attempts == 3
    assert caught.value.status is None
    assert caught.value.message == "provider unreachable"
    assert len(sleeps.delays) == 2


async def test_an_unusable_base_url_is_not_retried() -> None:
    async with OpenAICompatibleProvider("ftp://example.invalid/v1", KEY) as provider:
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.complete(make_request())
    assert not caught.value.retryable
    assert caught.value.attempts == 1
    assert "base URL" in caught.value.message


@pytest.mark.parametrize(
    ("exception", "expected"),
    [
        (httpx.ReadTimeout("read timed out"), ProviderTimeout),
        (httpx.RemoteProtocolError("peer closed connection"), ProviderUnavailable),
        (httpx.ReadError(""), ProviderUnavailable),
    ],
)
async def test_transport_errors_map_to_kinds(
    exception: httpx.HTTPError, expected: type[ProviderError]
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exception

    async with httpx.AsyncClient(transport=httpx.MockTransport(fail)) as client:
        provider = OpenAICompatibleProvider("http://provider.test/v1", KEY, client, sleep=Sleeps())
        with pytest.raises(expected) as caught:
            await provider.complete(make_request())
    assert caught.value.attempts == 3


async def test_cancellation_propagates_at_once(fake: FakeOpenAI) -> None:
    fake.script(Hang(5))
    async with provider_for(fake) as provider:
        task = asyncio.ensure_future(provider.complete(make_request()))
        await wait_until_async(lambda: fake.in_flight == 1, what="the call in flight")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# -- a tenant's base URL: one message per class, nothing to scan ports with -------------------


async def _serve(handler: object) -> asyncio.Server:
    return await asyncio.start_server(handler, "127.0.0.1", 0)  # type: ignore[arg-type]


async def test_closed_silent_and_non_http_ports_look_alike(fake: FakeOpenAI) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
        await writer.drain()
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; the client gives up first

    servers = [await _serve(garbage), await _serve(silent)]
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    closed = int(closed_port_url().rsplit(":", 1)[1].split("/")[0])
    fake.script(Fail(500, {"error": {"message": "internal: db at 10.0.0.7 is down"}}))
    guard = EgressGuard(allow=[f"127.0.0.1:{port}" for port in [*ports, closed, fake.port]])
    errors: list[ProviderError] = []
    try:
        async with guarded_client(guard) as client:
            for port in [*ports, closed, fake.port]:
                provider = OpenAICompatibleProvider(
                    f"http://127.0.0.1:{port}/v1", KEY, client, sleep=Sleeps(), tenant_url=True
                )
                with pytest.raises(ProviderError) as caught:
                    await provider.complete(
                        make_request(timeout_s=0.3, retry=RetryPolicy(max_attempts=1))
                    )
                errors.append(caught.value)
    finally:
        for server in servers:
            server.close()
    *unreachable, http_error = [error.to_dict() for error in errors]
    expected = {
        "kind": "unavailable",
        "message": "provider unreachable",
        "status": None,
        "retryable": True,
        "attempts": 1,
    }
    assert unreachable == [expected, expected, expected]
    assert http_error == {**expected, "message": "provider unavailable (HTTP 500)", "status": 500}


async def test_a_refused_destination_is_one_generic_error_and_logged_for_operators() -> None:
    async with guarded_client(EgressGuard()) as client:
        provider = OpenAICompatibleProvider(
            "http://localhost:8000/v1", KEY, client, sleep=Sleeps(), tenant_url=True
        )
        with capture_logs() as logs, pytest.raises(ProviderUnavailable) as caught:
            await provider.complete(make_request())
    # Exactly what an unreachable host gives: no oracle of which internal names exist.
    assert caught.value.to_dict() == {
        "kind": "unavailable",
        "message": "provider unreachable",
        "status": None,
        "retryable": True,
        "attempts": 3,
    }
    failures = [entry for entry in logs if entry["event"] == "provider.failure"]
    assert len(failures) == 3  # one per attempt, each with the operator's detail
    assert {failure["host"] for failure in failures} == {"localhost:8000"}
    assert all("none allowed" in failure["detail"] for failure in failures)
    assert KEY not in repr(logs)


async def test_a_tenant_urls_timeout_reads_like_unreachable(fake: FakeOpenAI) -> None:
    fake.script(Hang(5))
    guard = EgressGuard(allow=[f"127.0.0.1:{fake.port}"])
    async with guarded_client(guard) as client:
        provider = OpenAICompatibleProvider(fake.base_url, KEY, client, tenant_url=True)
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.complete(make_request(timeout_s=0.2, retry=RetryPolicy(max_attempts=1)))
    assert caught.value.message == "provider unreachable"
    assert caught.value.retryable


# -- the API key ------------------------------------------------------------------------------


async def test_the_key_is_sent_as_a_bearer_token(fake: FakeOpenAI) -> None:
    fake.require_key(KEY)
    async with provider_for(fake) as provider:
        await provider.complete(make_request())
    assert fake.requests[0].headers["authorization"] == f"Bearer {KEY}"


async def test_no_key_means_no_authorization_header(fake: FakeOpenAI) -> None:
    async with provider_for(fake, key=None) as provider:
        await provider.complete(make_request())
    assert "authorization" not in fake.requests[0].headers


async def test_a_wrong_key_is_refused(fake: FakeOpenAI) -> None:
    fake.require_key("sk-the-right-one")
    async with provider_for(fake) as provider:
        with pytest.raises(ProviderAuthError) as caught:
            await provider.complete(make_request())
    assert caught.value.message == "provider refused the credentials (HTTP 401)"


async def test_the_key_never_appears_in_errors_reprs_or_logs(fake: FakeOpenAI) -> None:
    secret_prompt = "my very private prompt"
    fake.script(
        Fail(500, {"error": {"message": f"upstream said: bad key {KEY}"}}),
        Fail(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}),
    )
    with capture_logs() as logs:
        async with provider_for(fake) as provider:
            with pytest.raises(ProviderAuthError) as caught:
                await provider.complete(make_request(secret_prompt))
    assert KEY not in caught.value.message
    assert KEY not in str(caught.value)
    assert KEY not in repr(provider)
    assert logs, "attempts are logged"
    logged = repr(logs)
    assert KEY not in logged
    assert "[redacted]" in logged  # the provider's own message, in the log, without the key
    assert secret_prompt not in logged
    assert {entry["event"] for entry in logs} == {
        "provider.attempt",
        "provider.retry",
        "provider.failure",
    }
    assert {entry["model"] for entry in logs if entry["event"] != "provider.failure"} == {
        "gpt-4o-mini"
    }


# -- probe ------------------------------------------------------------------------------------


async def test_probe_lists_models_without_spending_tokens(fake: FakeOpenAI) -> None:
    fake.script(Reply("for the chat endpoint only"))
    async with provider_for(fake) as provider:
        await provider.probe()
    [sent] = fake.requests
    assert (sent.method, sent.path) == ("GET", "/v1/models")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert fake.pending_steps == 1


async def test_probe_with_a_wrong_key_is_an_auth_error(fake: FakeOpenAI) -> None:
    fake.require_key("sk-other")
    async with provider_for(fake) as provider:
        with pytest.raises(ProviderAuthError):
            await provider.probe()


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (Fail(503), ProviderUnavailable),
        (Fail(200, "<html></html>", content_type="text/html"), ProviderBadResponse),
        (Hang(5), ProviderTimeout),
    ],
)
async def test_probe_failures(fake: FakeOpenAI, step: Fail | Hang, expected: type) -> None:
    fake.script_models(step)
    async with provider_for(fake) as provider:
        with pytest.raises(expected):
            await provider.probe(timeout_s=0.2)


async def test_probe_of_a_closed_port_is_unavailable() -> None:
    async with OpenAICompatibleProvider(closed_port_url(), None) as provider:
        with pytest.raises(ProviderUnavailable):
            await provider.probe()


# -- backoff arithmetic -----------------------------------------------------------------------


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff_s=0.5, max_backoff_s=8.0)
    ceilings = [backoff_delay(policy, attempt, lambda: 1.0) for attempt in range(1, 8)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert [backoff_delay(policy, n, lambda: 0.25) for n in (1, 3, 6)] == [0.125, 0.5, 2.0]
    assert backoff_delay(policy, 4, lambda: 0.0) == 0.0


def test_retry_after_overrides_backoff_within_the_cap() -> None:
    policy = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=8.0)
    assert retry_delay(policy, 1, lambda: 1.0) == 0.5
    assert retry_delay(policy, 1, lambda: 1.0, retry_after=3.0) == 3.0
    assert retry_delay(policy, 1, lambda: 1.0, retry_after=100.0) == 32.0
    assert retry_delay(policy, 1, lambda: 1.0, retry_after=0.0) == 0.0


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after("Sun, 01 Nov 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Sun, 01 Nov 2026 11:00:00 GMT", now) == 0.0  # in the past
    assert parse_retry_after("Sun, 01 Nov 2026 12:00:10 -0000", now) == 10.0  # naive
    for unusable in (None, "", "-5", "nan", "inf", "soon", "Mon, 99 Foo 2026"):
        assert parse_retry_after(unusable, now) is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT") == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"initial_backoff_s": -1.0}, {"max_backoff_s": -0.1}],
)
def test_retry_policy_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_request_defaults() -> None:
    request = ModelRequest(model="m", messages=(ChatMessage("user", "hi"),))
    assert request.timeout_s == 60.0
    assert request.retry == RetryPolicy(max_attempts=3, initial_backoff_s=0.5, max_backoff_s=8.0)
    assert request.temperature is None
    assert request.max_tokens is None


async def test_an_answer_larger_than_the_limit_fails_unread(fake: FakeOpenAI) -> None:
    """A provider answering hundreds of MB took the whole process's memory; the answer is
    now read up to a limit, then the call fails."""
    fake.script(Reply("x" * 5_000), Reply("small"))
    async with OpenAICompatibleProvider(fake.base_url, KEY, max_response_bytes=2_000) as big:
        with pytest.raises(ProviderBadResponse, match="more than 2000 bytes") as caught:
            await big.complete(make_request())
        assert caught.value.retryable is False
        assert (await big.complete(make_request())).content == "small"
