"""Constants the security suite shares: the canary platform key its backend is launched with."""

from __future__ import annotations

# The platform key of the security suite's backend. It may only ever reach the operator's
# platform URL (the shared fake OpenAI server); a tenant URL that sees it is a leak.
CANARY_PLATFORM_KEY = "sk-canary-platform-6b1f0c9e2d4a48f7a1c3e5d7f9b2a4c6"
