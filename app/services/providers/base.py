"""The model-provider interface: requests, responses, retry policy and the error taxonomy.

Every provider (the OpenAI-compatible HTTP client, and whatever comes later) speaks these
types, so the execution engine handles retries, timeouts, rate limits and cost in one way.
Errors carry a stable ``kind`` string (``auth``, ``rate_limit``, ``timeout``, ``unavailable``,
``bad_response``, ``bad_request``) that the engine records on a failed step, and a
``retryable`` flag that the retry loop obeys. Their messages are what a tenant sees: generic
per class (an HTTP status, never the provider's body text; one "unreachable" for every
transport failure and every call-time refusal by the egress guard), so they cannot be used to
scan ports or probe internal names behind a base URL.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import ClassVar, Protocol, runtime_checkable

ROLES = ("system", "user", "assistant")

# A Retry-After header may ask for at most this many times the policy's maximum backoff.
RETRY_AFTER_CAP_FACTOR = 4


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed call is retried.

    ``max_attempts`` counts every try, the first one included. Between tries the delay is
    exponential with full jitter (see :func:`backoff_delay`); a ``Retry-After`` from the
    provider replaces the computed delay, capped at ``max_backoff_s * 4``.
    """

    max_attempts: int = 3
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff durations must not be negative")


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class ModelRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    temperature: float | None = None
    max_tokens: int | None = None
    timeout_s: float = 60.0  # per attempt
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class ModelResponse:
    content: str
    input_tokens: int
    output_tokens: int
    model: str  # the model the provider says answered (may carry a date suffix)
    attempts: int  # tries it took, the successful one included
    duration_s: float  # wall time of the whole call: every attempt and every backoff
    finish_reason: str | None = None


class ProviderError(Exception):
    """A model call failed. ``message`` never contains a credential or prompt content."""

    kind: ClassVar[str] = "provider_error"
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = self.default_retryable if retryable is None else retryable
        # Seconds the provider asked us to wait before trying again (Retry-After), if any.
        self.retry_after = retry_after
        # How many tries were made before this error was raised; set by the retry loop.
        self.attempts = 1

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready summary, for a failed step's record and its event."""
        return {
            "kind": self.kind,
            "message": self.message,
            "status": self.status,
            "retryable": self.retryable,
            "attempts": self.attempts,
        }


class ProviderAuthError(ProviderError):
    """401/403: the key is missing, wrong or lacks access. Retrying will not help."""

    kind = "auth"


class ProviderRateLimited(ProviderError):
    """429: slow down; ``retry_after`` says for how long when the provider told us."""

    kind = "rate_limit"
    default_retryable = True


class ProviderTimeout(ProviderError):
    """An attempt took longer than the request's ``timeout_s``."""

    kind = "timeout"
    default_retryable = True


class ProviderUnavailable(ProviderError):
    """5xx, or the connection was refused, reset or closed early, or (for a tenant's URL) the
    egress guard refused the address it resolved to."""

    kind = "unavailable"
    default_retryable = True


class ProviderBadResponse(ProviderError):
    """An answer we cannot use: not JSON (an HTML page), no choices or usage, or another 4xx."""

    kind = "bad_response"


@runtime_checkable
class ModelProvider(Protocol):
    name: str

    async def complete(self, request: ModelRequest) -> ModelResponse: ...

    async def probe(self) -> None:
        """Check reachability without spending tokens; raise a ProviderError if unreachable."""
        ...


def backoff_delay(policy: RetryPolicy, failed_attempt: int, rng: Callable[[], float]) -> float:
    """The pause after try number ``failed_attempt`` (1-based): exponential with full jitter.

    ``rng()`` returns a float in [0, 1); the delay is ``rng() * min(max_backoff_s,
    initial_backoff_s * 2 ** (failed_attempt - 1))``.
    """
    ceiling = min(policy.max_backoff_s, policy.initial_backoff_s * 2 ** (failed_attempt - 1))
    return float(rng() * ceiling)


def retry_delay(
    policy: RetryPolicy,
    failed_attempt: int,
    rng: Callable[[], float],
    retry_after: float | None = None,
) -> float:
    """The pause before the next try: the provider's Retry-After if given (capped), else backoff."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), policy.max_backoff_s * RETRY_AFTER_CAP_FACTOR)
    return backoff_delay(policy, failed_attempt, rng)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max((when - now).total_seconds(), 0.0)
