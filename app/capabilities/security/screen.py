"""The throttling on the API's requests, with no middleware of its own: hooks the base calls
where it already decides, so that a request pays for the screening only where there is
something to screen.

- ``get_principal`` (every authenticated operation) asks ``source`` first: a client whose
  address is throttled gets 429 (one dict lookup while none is); then ``principal`` takes a
  token from the caller's rate limit buckets (in memory) and leaves the ``RateLimit``
  headers for the answer (``ANSWER_HEADERS``, which the base middleware adds).
- The login (``AuthService.login``) asks ``before`` (the login's throttlings, one read of the
  shared counters) and tells ``after`` how it went (the failures counted, or a success that
  makes the source a known context); the refresh and logout routes ask ``source``.
- The error handler tells ``refused`` of each problem it answers: a 401 to a request that
  presented a credential (a token in its body, for the refresh and the logout) and a 404 on a
  route with an id in its path are counted before the answer goes out, so the next request
  already meets the throttling.

The client's address is the peer's, or read from ``X-Forwarded-For`` when the peer is a
trusted proxy (``app.core.client_address``); which peers are trusted is remembered. A request
whose address comes out as a trusted proxy's own (it sent no usable header) is never counted
nor throttled by address: that would throttle everyone behind the proxy. Credentials this
server issued that merely ended (``CredentialEnded``: expired, revoked, ended by a password
change) are a client to log in again, not a guess, and are not counted either."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.types import Scope

from app.capabilities.security.throttle import THROTTLED, Guard, RateLimiter, Refusal
from app.core.client_address import Network, client_address, is_trusted_peer
from app.core.errors import CredentialEnded, ProblemError, TooManyRequests
from app.core.request_context import current_scope
from app.services.principal import Principal

AUTHORIZATION = b"authorization"
LOGIN_CHECK = "renum.login_check"  # what the counters said before the login
IPV6_PREFIX = 64
MAX_EMAIL = 320
MAX_PEERS = 10_000  # peers whose trust is remembered (forgotten all at once past it)
# How a failed login's reason (``AuthService``) is counted: an unknown account apart.
UNKNOWN_ACCOUNT = "unknown_user"


def _refuse(refusal: Refusal) -> TooManyRequests:
    return TooManyRequests(THROTTLED, retry_after=refusal.retry_after)


class Screen:
    """The hooks of one app, on its ``guard`` (detectors) and ``limiter`` (rate limits)."""

    def __init__(
        self,
        guard: Guard,
        limiter: RateLimiter | None,
        *,
        token_paths: Sequence[str],
        trusted_proxies: Sequence[Network],
    ) -> None:
        self.guard = guard
        self.limiter = limiter
        self.token_paths = frozenset(token_paths)
        self.trusted = tuple(trusted_proxies)
        self._peers: dict[str, bool] = {}  # peer -> whether it is a trusted proxy

    def address(self, scope: Scope) -> str:
        """The client's address of ``scope``."""
        client = scope.get("client")
        if not client:
            return client_address(scope)  # no peer: unknown
        peer = str(client[0])
        return client_address(scope, self.trusted) if self._trusted(peer) else peer

    def _source(self, scope: Scope) -> str | None:
        """What to count and throttle the client as (``source_of``): None for a trusted
        proxy's own address."""
        address = self.address(scope)
        return None if self._trusted(address) else source_of(address)

    def _trusted(self, peer: str) -> bool:
        trusted = self._peers.get(peer)
        if trusted is None:  # an address not seen yet: a proxy whose header we believe?
            if len(self._peers) >= MAX_PEERS:
                self._peers.clear()
            trusted = bool(self.trusted) and is_trusted_peer(peer, self.trusted)
            self._peers[peer] = trusted
        return trusted

    # -- the base's hooks ------------------------------------------------------------------

    def source(self, scope: Scope) -> None:
        """429 while the client's address is throttled (nothing to do while none is)."""
        if self.guard.source_blocks:
            source = self._source(scope)
            refusal = None if source is None else self.guard.source_refusal(source)
            if refusal is not None:
                raise _refuse(refusal)

    def principal(self, scope: Scope, principal: Principal) -> None:
        """The caller's rate limits (429 once a bucket is empty)."""
        if self.limiter is not None:
            self.limiter.screen(scope, principal)

    async def refused(self, scope: Scope, problem: ProblemError) -> None:
        """Count a 401 to a presented credential that this server never issued (a guess),
        and a 404 on a route with an id."""
        if problem.status == 401 and not isinstance(problem, CredentialEnded):
            if scope.get("path") in self.token_paths or any(
                name == AUTHORIZATION for name, _ in scope.get("headers", ())
            ):
                await self.invalid_credential(scope)
        elif problem.status == 404 and scope.get("path_params"):
            await self.not_found(scope)

    async def invalid_credential(self, scope: Scope) -> None:
        source = self._source(scope)
        if source is not None:
            await self.guard.invalid_credential(source)

    async def not_found(self, scope: Scope) -> None:
        source = self._source(scope)
        if source is not None:
            await self.guard.id_not_found(source)

    # -- the login (``app.services.auth.LoginGuard``) --------------------------------------

    async def before(self, email: str) -> None:
        """429 while logins to ``email`` from this client are throttled."""
        scope = current_scope()
        source = None if scope is None else self._source(scope)
        if scope is None or source is None:
            return
        if self.guard.source_blocks:
            refusal = self.guard.source_refusal(source)
            if refusal is not None:
                raise _refuse(refusal)
        check = await self.guard.login_check(_normal(email), source)
        scope[LOGIN_CHECK] = check  # for ``after``: what needs no writing again
        if check.refusal is not None:
            raise _refuse(check.refusal)

    async def after(self, email: str, failure: str | None) -> None:
        """Count a failed login (``failure``: why) or a success."""
        scope = current_scope()
        source = None if scope is None else self._source(scope)
        if scope is None or source is None:
            return
        email = _normal(email)
        if failure is None:
            await self.guard.login_succeeded(email, source, scope.get(LOGIN_CHECK))
        else:
            kind = "unknown-account" if failure == UNKNOWN_ACCOUNT else "wrong-password"
            await self.guard.login_failed(email, source, kind)


def source_of(address: str) -> str:
    """The source an address counts as: itself, or for IPv6 its /64 (one subscriber's
    network: its privacy addresses change daily, and whoever holds one has 2^64 of them)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network((ip, IPV6_PREFIX), strict=False))
    return address


def _normal(email: str) -> str:
    """An email as accounts are looked up."""
    return email.strip().lower()[:MAX_EMAIL]
