"""The throttling's middleware (pure ASGI) on the API's requests.

Per API request: the client's address (``app.core.client_address``), one dict lookup for a
throttled source, and a look at the answer's status as it starts: a 401 to a request that
presented a credential, or a 404 on a route with an id in its path, is counted (in the shared
counters) before the answer goes out, so the next request already meets the throttling; the
rate limit's headers, left by the rate limit screen, are added. The login (``POST
/api/v1/auth/token``) is screened apart: its small form is read for the email, the login's
throttlings are checked before it runs, and its failure or success is counted after.
Anything else (the probes, the pages, ``/metrics``) passes with one prefix check."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.capabilities.security.throttle import RATE_LIMIT_HEADERS, THROTTLED, Guard, Refusal
from app.core.client_address import Network, client_address, is_trusted_peer
from app.core.errors import ProblemError, TooManyRequests, problem_response
from app.core.request_context import LOGIN_OUTCOME

AUTHORIZATION = b"authorization"
MAX_EMAIL = 320
MAX_PEERS = 10_000  # peers whose trust is remembered (forgotten all at once past it)


def _has_credential(scope: Scope) -> bool:
    return any(name == AUTHORIZATION for name, _ in scope["headers"])


def _email(body: bytes) -> str | None:
    """The ``username`` of a login form, normalised as accounts are looked up."""
    try:
        fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return None
    for name, value in fields:
        if name == "username":
            email = value.strip().lower()[:MAX_EMAIL]
            return email or None
    return None


async def _refuse(refusal: Refusal, scope: Scope, receive: Receive, send: Send) -> None:
    response = problem_response(
        429,
        TooManyRequests.slug,
        TooManyRequests.title,
        THROTTLED,
        instance=scope.get("path"),
        headers={"Retry-After": str(refusal.retry_after)},
    )
    await response(scope, receive, send)


class ThrottleMiddleware:
    """Screens the requests under ``prefix`` (the API) with ``guard``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        guard: Guard,
        prefix: str,
        login_path: str,
        token_paths: Sequence[str],
        trusted_proxies: Sequence[Network],
    ) -> None:
        self.app = app
        self.guard = guard
        self.prefix = prefix
        self.login_path = login_path
        self.token_paths = frozenset(token_paths)  # take a token in the body (refresh, logout)
        self.trusted = tuple(trusted_proxies)
        self._peers: dict[str, bool] = {}  # peer -> whether it is a trusted proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        guard = self.guard
        client = scope.get("client")
        if not client:
            source = client_address(scope)  # no peer: unknown
        else:
            peer = str(client[0])
            trusted = self._peers.get(peer)
            if trusted is None:  # a peer not seen yet: a proxy whose header we believe?
                if len(self._peers) >= MAX_PEERS:
                    self._peers.clear()
                trusted = bool(self.trusted) and is_trusted_peer(peer, self.trusted)
                self._peers[peer] = trusted
            source = client_address(scope, self.trusted) if trusted else peer
        if guard.source_blocks:
            refusal = guard.source_refusal(source)
            if refusal is not None:
                await _refuse(refusal, scope, receive, send)
                return
        path = scope["path"]
        if path == self.login_path and scope["method"] == "POST":
            await self._login(scope, receive, send, source)
            return

        async def screened_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if status == 401 and (path in self.token_paths or _has_credential(scope)):
                    await guard.invalid_credential(source)
                elif status == 404 and scope.get("path_params"):
                    await guard.id_not_found(source)
                added = scope.get(RATE_LIMIT_HEADERS)
                if added is not None:
                    message["headers"] = [*message.get("headers", ()), *added]
            await send(message)

        await self.app(scope, receive, screened_send)

    async def _login(self, scope: Scope, receive: Receive, send: Send, source: str) -> None:
        """Read the login form (small; the base middleware bounds it), refuse a throttled
        login, replay the form to the route, count its outcome."""
        chunks: list[bytes] = []
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except ProblemError as exc:  # the body limit
            response = problem_response(
                exc.status, exc.slug, exc.title, exc.detail, instance=scope.get("path")
            )
            await response(scope, receive, send)
            return
        body = b"".join(chunks)
        email = _email(body)
        guard = self.guard
        if email is not None:
            refusal = await guard.login_refusal(email, source)
            if refusal is not None:
                await _refuse(refusal, scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def counted_send(message: Message) -> None:
            if message["type"] == "http.response.start" and email is not None:
                status = message["status"]
                if status == 401:
                    await guard.login_failed(email, source, scope.get(LOGIN_OUTCOME))
                elif status == 200:
                    await guard.login_succeeded(email, source)
            await send(message)

        await self.app(scope, replay, counted_send)
