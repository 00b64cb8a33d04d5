"""The ``openai`` provider: the OpenAI-compatible Chat Completions API over httpx.

Speaks ``POST {base_url}/chat/completions`` as OpenAI, vLLM, Ollama, LiteLLM and most gateways
do; takes token usage from the response; retries rate limits, timeouts and outages with
exponential backoff and full jitter, honouring ``Retry-After``; bounds every attempt by the
request's timeout; and turns each failure into one of the :mod:`base` error types.

Error messages reach tenants, so they say only which class of failure happened: refused by the
egress policy, provider unreachable (every transport failure; for a tenant's base URL timeouts
too, so a closed, a silent and a non-HTTP port look alike), or the provider's HTTP status,
never its body. What operators need (exception, text, host, the provider's own message) goes
to the log.

Never logged and never put into an error message: the API key and the prompt or reply text.
Logged per attempt: provider, model, attempt, HTTP status, duration.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.core.egress import EgressRefused
from app.core.logging import get_logger
from app.services.providers.base import (
    ModelRequest,
    ModelResponse,
    ProviderAuthError,
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    parse_retry_after,
    retry_delay,
)

log = get_logger(__name__)

USER_AGENT = "renum-provider/1"
PROBE_TIMEOUT_S = 10.0
_DETAIL_LIMIT = 200  # characters of a provider's own error message kept in the log
# The largest answer read from a provider (decoded): a bigger one fails the call unread.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
UNREACHABLE = "provider unreachable"
_REDACTED = "[redacted]"

Sleep = Callable[[float], Awaitable[Any]]


class OpenAICompatibleProvider:
    """A client for one OpenAI-compatible endpoint (``base_url`` ends before ``/chat``).

    Pass a shared ``httpx.AsyncClient`` to pool connections across providers; without one the
    provider opens its own (unguarded: for operator-configured URLs only) on first use and
    :meth:`aclose` closes it. A tenant's base URL takes the egress guard's client and
    ``tenant_url=True``, which makes a timeout read like any other transport failure (a
    call-time refusal by the egress guard always does, so a tenant cannot probe which
    internal names exist).
    An answer larger than ``max_response_bytes`` (decoded) fails the call without being read
    further. ``sleep`` and ``rng`` exist so tests can observe the backoff; production code
    leaves them alone.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        client: httpx.AsyncClient | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        *,
        tenant_url: bool = False,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tenant_url = tenant_url
        self.max_response_bytes = max_response_bytes
        self._api_key = api_key or None
        self._client = client
        self._owns_client = client is None
        self._sleep = sleep
        self._rng = rng

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return f"OpenAICompatibleProvider(base_url={self.base_url!r}, api_key={key})"

    async def __aenter__(self) -> OpenAICompatibleProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this provider opened it."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(verify=_tls_context())
        return self._client

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _redact(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, _REDACTED)
        return text

    # -- the call ---------------------------------------------------------------------------

    async def complete(self, request: ModelRequest) -> ModelResponse:
        """One chat completion, retried per ``request.retry`` on retryable failures.

        Raises the last :class:`ProviderError` (its ``attempts`` says how many tries were made)
        once a failure is not retryable or the attempts are used up. Cancellation propagates
        at once, also from inside a backoff pause.
        """
        policy = request.retry
        body = _request_body(request)
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                payload = await self._attempt(request, body, attempt)
                return _parse_completion(
                    payload, request, attempt=attempt, duration_s=time.perf_counter() - started
                )
            except ProviderError as error:
                error.attempts = attempt
                if not error.retryable or attempt >= policy.max_attempts:
                    raise
                delay = retry_delay(policy, attempt, self._rng, error.retry_after)
                log.warning(
                    "provider.retry",
                    provider=self.name,
                    model=request.model,
                    attempt=attempt,
                    kind=error.kind,
                    status=error.status,
                    delay_s=round(delay, 3),
                )
                await self._sleep(delay)

    async def _attempt(self, request: ModelRequest, body: Mapping[str, Any], attempt: int) -> Any:
        started = time.perf_counter()
        status: int | None = None
        try:
            response = await self._send(
                "POST",
                "/chat/completions",
                request.timeout_s,
                json=body,
            )
            status = response.status_code
            return self._payload_or_raise(response)
        finally:
            log.info(
                "provider.attempt",
                provider=self.name,
                model=request.model,
                attempt=attempt,
                status=status,
                duration_s=round(time.perf_counter() - started, 4),
            )

    async def probe(self, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        """``GET {base_url}/models``: reachable and accepting our key, without spending tokens."""
        response = await self._send("GET", "/models", timeout_s)
        self._payload_or_raise(response)

    async def _send(
        self, method: str, path: str, timeout_s: float, json: Any = None
    ) -> httpx.Response:
        """One HTTP exchange, bounded as a whole by ``timeout_s``; transport failures mapped."""
        client = self._http()
        request = client.build_request(
            method,
            f"{self.base_url}{path}",
            json=json,
            headers=self._headers(),
            timeout=httpx.Timeout(timeout_s),
        )
        try:
            async with asyncio.timeout(timeout_s):
                return await self._bounded(await client.send(request, stream=True))
        except EgressRefused as refused:
            # The same reason as an unreachable host: no oracle of which internal names exist.
            self._log_failure(refused, detail=refused.detail)
            raise ProviderUnavailable(UNREACHABLE) from None
        except TimeoutError as exc:
            self._log_failure(exc)
            raise self._timeout(timeout_s) from None
        except httpx.HTTPError as exc:
            self._log_failure(exc)
            raise self._transport_error(exc, timeout_s) from None

    async def _bounded(self, streamed: httpx.Response) -> httpx.Response:
        """The streamed response read into memory, at most ``max_response_bytes`` of it
        (decoded, so a compressed bomb stops too); larger answers fail unread."""
        body = bytearray()
        try:
            async for chunk in streamed.aiter_bytes():
                body += chunk
                if len(body) > self.max_response_bytes:
                    self._log_failure(None, status=streamed.status_code, detail="too large")
                    raise ProviderBadResponse(
                        f"provider answered with more than {self.max_response_bytes} bytes",
                        status=streamed.status_code,
                    )
        finally:
            await streamed.aclose()
        headers = [
            (name, value)
            for name, value in streamed.headers.multi_items()
            if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        return httpx.Response(
            streamed.status_code, headers=headers, content=bytes(body), request=streamed.request
        )

    # -- mapping failures -------------------------------------------------------------------

    def _payload_or_raise(self, response: httpx.Response) -> Any:
        """The response's JSON on 2xx; otherwise the matching ProviderError."""
        status = response.status_code
        if 200 <= status < 300:
            try:
                return response.json()
            except ValueError:
                self._log_failure(None, status=status, detail=_content_type(response))
                raise ProviderBadResponse(
                    f"provider answered HTTP {status} with a body that is not JSON",
                    status=status,
                ) from None
        self._log_failure(None, status=status, detail=self._redact(_error_detail(response)))
        if status in (401, 403):
            raise ProviderAuthError(
                f"provider refused the credentials (HTTP {status})", status=status
            )
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if status == 429:
            raise ProviderRateLimited(
                "provider rate limit reached (HTTP 429)", status=status, retry_after=retry_after
            )
        if status == 408:
            raise ProviderTimeout(
                "provider timed out the request (HTTP 408)",
                status=status,
                retry_after=retry_after,
            )
        if status >= 500:
            raise ProviderUnavailable(
                f"provider unavailable (HTTP {status})", status=status, retry_after=retry_after
            )
        if 300 <= status < 400:
            raise ProviderBadResponse(
                f"provider redirected the request (HTTP {status}); redirects are not followed",
                status=status,
            )
        raise ProviderBadResponse(f"provider rejected the request (HTTP {status})", status=status)

    def _timeout(self, timeout_s: float) -> ProviderError:
        if self.tenant_url:
            return ProviderUnavailable(UNREACHABLE)
        return ProviderTimeout(f"no answer from the provider within {timeout_s:g} s")

    def _transport_error(self, exc: httpx.HTTPError, timeout_s: float) -> ProviderError:
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
            return ProviderUnavailable("the provider's base URL is not usable", retryable=False)
        if isinstance(exc, httpx.TimeoutException):
            return self._timeout(timeout_s)
        return ProviderUnavailable(UNREACHABLE)

    def _log_failure(
        self, exc: BaseException | None, *, status: int | None = None, detail: str = ""
    ) -> None:
        """What operators need to tell failures apart; tenants see only the generic message."""
        log.warning(
            "provider.failure",
            provider=self.name,
            host=self._host(),
            status=status,
            error_type=type(exc).__name__ if exc is not None else None,
            error=self._redact(str(exc)) if exc is not None else None,
            detail=detail or None,
        )

    def _host(self) -> str:
        try:
            parts = urlsplit(self.base_url)
            return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
        except ValueError:
            return "unparsable"


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context (httpx's default: certifi, or SSL_CERT_FILE/SSL_CERT_DIR) for
    every provider-owned client; building one costs about 50 ms."""
    return httpx.create_ssl_context()


def _request_body(request: ModelRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "stream": False,
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    return body


def _content_type(response: httpx.Response) -> str:
    return f"content-type {response.headers.get('content-type', 'unknown')}"


def _error_detail(response: httpx.Response) -> str:
    """The provider's own error message from a JSON error body, shortened; '' otherwise."""
    try:
        payload = response.json()
    except ValueError:
        return ""
    message: Any = None
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        if message is None:
            message = payload.get("message") or payload.get("detail")
    if not isinstance(message, str):
        return ""
    text = " ".join(message.split())
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"


def _token_count(usage: Mapping[str, Any], key: str) -> int:
    value = usage.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProviderBadResponse(f"provider response has no valid usage.{key}")
    return value


def _parse_completion(
    payload: Any, request: ModelRequest, *, attempt: int, duration_s: float
) -> ModelResponse:
    if not isinstance(payload, dict):
        raise ProviderBadResponse("provider response is not a JSON object")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ProviderBadResponse("provider response has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise ProviderBadResponse("provider response's first choice has no message")
    content = message.get("content")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ProviderBadResponse("provider response's message content is not text")
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        raise ProviderBadResponse("provider response has no usage")
    model = payload.get("model")
    finish_reason = choices[0].get("finish_reason")
    return ModelResponse(
        content=content,
        input_tokens=_token_count(usage, "prompt_tokens"),
        output_tokens=_token_count(usage, "completion_tokens"),
        model=model if isinstance(model, str) and model else request.model,
        attempts=attempt,
        duration_s=duration_s,
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
    )
