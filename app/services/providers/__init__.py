"""Model providers: one interface for every model call, and the providers behind it.

- :mod:`.base`: requests, responses, the retry policy and the error types.
- :mod:`.openai`: the OpenAI-compatible Chat Completions client (OpenAI, vLLM, Ollama, LiteLLM).
- :mod:`.builtin`: local tool agents (``echo``, ``template``, ``wait``) that need no
  network.
- :mod:`.prices`: the versioned price table that turns token counts into cost.
"""

from app.services.providers.base import (
    ChatMessage,
    ModelProvider,
    ModelRequest,
    ModelResponse,
    ProviderAuthError,
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    RetryPolicy,
)
from app.services.providers.builtin import (
    BUILTIN_KINDS,
    BuiltinAgentError,
    BuiltinResult,
    run_builtin,
    validate_builtin,
)
from app.services.providers.openai import OpenAICompatibleProvider
from app.services.providers.prices import ModelPrice, PriceTable

__all__ = [
    "BUILTIN_KINDS",
    "BuiltinAgentError",
    "BuiltinResult",
    "ChatMessage",
    "ModelPrice",
    "ModelProvider",
    "ModelRequest",
    "ModelResponse",
    "OpenAICompatibleProvider",
    "PriceTable",
    "ProviderAuthError",
    "ProviderBadResponse",
    "ProviderError",
    "ProviderRateLimited",
    "ProviderTimeout",
    "ProviderUnavailable",
    "RetryPolicy",
    "run_builtin",
    "validate_builtin",
]
