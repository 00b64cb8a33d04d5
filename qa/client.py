"""An httpx client for the Renum API that knows how to log in."""

from __future__ import annotations

from typing import Any

import httpx

API = "/api/v1"
# Idle connections are dropped before the server's keep-alive timeout (Uvicorn's: 5 s) ends
# them: a request sent on a connection the server is closing at that moment gets no answer
# ("Server disconnected without sending a response"), which no test is about.
KEEPALIVE_EXPIRY = 2.0


class ApiClient(httpx.Client):
    """``httpx.Client`` bound to one backend; ``login`` makes it send a bearer token."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", 30.0)
        kwargs.setdefault("limits", httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY))
        super().__init__(base_url=base_url, **kwargs)
        self.tokens: dict[str, Any] = {}

    def login(self, email: str, password: str) -> ApiClient:
        response = self.post(f"{API}/auth/token", data={"username": email, "password": password})
        if response.status_code != 200:
            raise AssertionError(f"login as {email} failed: {response.status_code} {response.text}")
        self.tokens = response.json()
        self.use_credential(self.tokens["access_token"])
        return self

    def use_credential(self, credential: str) -> ApiClient:
        self.headers["Authorization"] = f"Bearer {credential}"
        return self

    def anonymous(self) -> ApiClient:
        return ApiClient(str(self.base_url))
