"""The egress guard: the one gate for outbound HTTP made on a tenant's behalf.

A tenant names URLs (an agent's ``base_url`` today; webhooks and alert channels later). Calls
to them must not reach this host, its private network or a cloud metadata service. Two checks:

* **Static**, when a URL is saved (:meth:`EgressGuard.check_url`): http or https only; no
  userinfo, query or fragment; an allowed port; and a host that is an IP literal in any form a
  resolver accepts (dotted quad, bracketed IPv6 with IPv4-mapped, IPv4-compatible, NAT64, 6to4
  or Teredo addresses inside, and the decimal, octal, hex and short forms ``inet_aton``
  accepts) must be publicly routable, unless an operator's allow entry covers it.
* **At call time**, in every connection (:class:`GuardedBackend`, an httpcore network
  backend): the host is resolved, only the allowed addresses are kept (none left: refused),
  the connection is made to a vetted address, and the peer actually connected to is checked
  again, so DNS rebinding cannot slip past. TLS still verifies the hostname (httpcore passes
  it as SNI). The guarded client follows no redirects and reads no proxy from the
  environment.

Destinations the operator configured (the platform base URL; later alert channels) are
trusted: :meth:`EgressGuard.is_trusted` says so, and :class:`EgressClients` hands out the
trusted client for them and the guarded one for everything else.

A refusal raises :class:`EgressRefused`: its ``detail`` is for operators (it may name resolved
addresses); ``str()`` is the generic message a tenant may see.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

import httpcore
import httpx
import structlog

if TYPE_CHECKING:  # config.py imports this module to validate its allow entries
    from app.core.config import EgressSettings, Settings

log = structlog.stdlib.get_logger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# ``resolver(host, port)``: the addresses a name resolves to, as text.
Resolver = Callable[[str, int], Awaitable[list[str]]]

DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# What inet_aton may read as an IPv4 address: dot-separated decimal, octal or hex parts.
_LEGACY_IPV4 = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*", re.IGNORECASE)
_DNS_NAME = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*")
_ALLOW_FORMAT = "write host:port, cidr:port, [v6]:port or [v6cidr]:port"


class EgressRefused(Exception):
    """An outbound call (or a URL to call later) refused by the egress policy.

    ``detail`` tells operators why; ``str()`` is the generic message for tenants. Details of the
    static check only restate the URL itself, so they may be shown to whoever wrote the URL.
    """

    TENANT_MESSAGE = "the destination is not allowed by the egress policy"

    def __init__(self, detail: str) -> None:
        super().__init__(self.TENANT_MESSAGE)
        self.detail = detail


# -- addresses --------------------------------------------------------------------------------


def ip_literal(host: str) -> IPAddress | None:
    """The address a URL host names literally, in any form a resolver accepts; None for a name.

    Raises :class:`EgressRefused` for a host that looks numeric but is no address (``1.2.3.999``):
    a resolver might read it some other way.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]  # "127.0.0.1." is 127.0.0.1 to a URL parser
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if not _LEGACY_IPV4.fullmatch(text):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        raise EgressRefused(f"host {host!r} looks like an IP address but is not one") from None


def normalise(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, IPv4-compatible, NAT64
    64:ff9b::/96); any other address unchanged."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    value = int(address)
    if value >> 32 == 0 and value > 1:  # IPv4-compatible ::a.b.c.d (not :: or ::1)
        return ipaddress.IPv4Address(value)
    if address in _NAT64:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return address


def _routable(address: IPAddress) -> bool:
    site_local = isinstance(address, ipaddress.IPv6Address) and address.is_site_local
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or site_local
    )


def is_public(address: IPAddress) -> bool:
    """Whether an address is globally routable, and so is every IPv4 address inside it.

    Refused: loopback, private, shared (100.64/10), link-local (169.254.169.254, the metadata
    service, included), unique-local (fc00::/7), site-local, multicast, unspecified, reserved,
    documentation and other special-purpose ranges, in every IPv6 form that carries one.
    """
    address = normalise(address)
    if not _routable(address):
        return False
    if isinstance(address, ipaddress.IPv6Address):
        inside = [address.sixtofour, *(address.teredo or ())]
        return all(_routable(v4) for v4 in inside if v4 is not None)
    return True


# -- the operator's allow entries -------------------------------------------------------------


@dataclass(frozen=True)
class AllowEntry:
    """One destination the operator allows: a DNS name or a network (an address is a /32 or
    /128), each with one port. A name is allowed whatever it resolves to."""

    port: int
    name: str | None = None
    network: IPNetwork | None = None

    def covers_name(self, host: str, port: int) -> bool:
        return self.name is not None and port == self.port and _name_key(host) == self.name

    def covers_address(self, address: IPAddress, port: int) -> bool:
        if self.network is None or port != self.port:
            return False
        address = normalise(address)
        return address.version == self.network.version and address in self.network


def parse_allow_entry(text: str) -> AllowEntry:
    """``host:port``, ``cidr:port``, ``[v6]:port`` or ``[v6cidr]:port``; ValueError otherwise."""
    entry = text.strip()

    def bad(reason: str) -> ValueError:
        return ValueError(f"egress allow entry {text!r}: {reason}; {_ALLOW_FORMAT}")

    bracketed = re.fullmatch(r"\[([^\]]+)\]:([0-9]+)", entry)
    if entry.startswith("[") and not bracketed:
        raise bad("a bracketed address needs a port after it")
    if bracketed:
        host, port_text = bracketed.groups()
    else:
        host, colon, port_text = entry.rpartition(":")
        if not colon or not host:
            raise bad("no port")
        if ":" in host:
            raise bad("an IPv6 address goes in brackets")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise bad(f"port {port_text!r} is not a number from 1 to 65535")
    port = int(port_text)
    if "/" in host:
        try:
            network = ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise bad(f"{host!r} is not a CIDR network") from None
        return AllowEntry(port, network=network)
    try:
        address = normalise(ipaddress.ip_address(host))
    except ValueError:
        if bracketed:
            raise bad(f"{host!r} is not an IPv6 address") from None
    else:
        return AllowEntry(port, network=ipaddress.ip_network(address))
    name = _name_key(host)
    if not _DNS_NAME.fullmatch(name) or _LEGACY_IPV4.fullmatch(name):
        raise bad(f"{host!r} is not a host name or an IP address")
    return AllowEntry(port, name=name)


def _name_key(host: str) -> str:
    return host.strip().lower().removesuffix(".")


# -- URLs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str  # lower case; an IP address in its canonical text
    port: int
    segments: tuple[str, ...] | None  # None when the path is ambiguous (dot segments)


def _origin(url: str) -> _Origin | None:
    """Scheme, host, port and path segments of a plain http(s) URL (no userinfo, query or
    fragment); None for anything else."""
    if _odd_characters(url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return None
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return None
    host = _name_key(parts.hostname)
    try:
        literal = ip_literal(host)
    except EgressRefused:
        return None
    if literal is not None:
        host = str(literal)
    segments = tuple(s for s in parts.path.split("/") if s)
    ambiguous = any(s.strip(".") == "" or "%2e" in s.lower() for s in segments)
    return _Origin(
        parts.scheme,
        host,
        port if port is not None else DEFAULT_PORTS[parts.scheme],
        None if ambiguous else segments,
    )


def is_under(url: str, base: str) -> bool:
    """Whether ``url`` is ``base`` or below it: same scheme, host and port (default ports
    filled in, case ignored) and ``base``'s path as a prefix by whole segments (``/v1`` covers
    ``/v1/`` and ``/v1/x``, never ``/v1evil``). A URL with userinfo, a query, a fragment or dot
    segments is never under anything."""
    target, root = _origin(url), _origin(base)
    if target is None or root is None or target.segments is None or root.segments is None:
        return False
    return (target.scheme, target.host, target.port) == (root.scheme, root.host, root.port) and (
        target.segments[: len(root.segments)] == root.segments
    )


# -- the guard --------------------------------------------------------------------------------


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, from the system resolver, off the event loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class EgressGuard:
    """The egress policy: the operator's allow entries, allowed ports and trusted base URLs."""

    def __init__(
        self,
        allow: Iterable[str] = (),
        allowed_ports: Iterable[int] = (80, 443),
        trusted: Iterable[str] = (),
        resolver: Resolver = system_resolver,
    ) -> None:
        self.entries = [parse_allow_entry(entry) for entry in allow]
        self.allowed_ports = frozenset(allowed_ports)
        self.trusted = [url.rstrip("/") for url in trusted]
        self.resolver = resolver

    @classmethod
    def from_settings(cls, settings: Settings, resolver: Resolver = system_resolver) -> EgressGuard:
        """The guard of a process: ``settings.egress``, trusting the platform base URL."""
        egress: EgressSettings = settings.egress
        return cls(
            egress.allow,
            egress.allowed_ports,
            trusted=[settings.providers.openai_base_url],
            resolver=resolver,
        )

    def is_trusted(self, url: str) -> bool:
        """Whether ``url`` is at (or below) a destination the operator configured."""
        return any(is_under(url, base) for base in self.trusted)

    def allows(self, address: IPAddress, port: int) -> bool:
        """Whether a connection to this address and port may be made."""
        if any(entry.covers_address(address, port) for entry in self.entries):
            return True
        return port in self.allowed_ports and is_public(address)

    def _allowed_by_name(self, host: str, port: int) -> bool:
        return any(entry.covers_name(host, port) for entry in self.entries)

    def check_url(self, url: str) -> None:
        """The static check of a URL a tenant saves: raises :class:`EgressRefused` (whose
        detail restates only the URL) when no call to it could be allowed."""
        if self.is_trusted(url):
            return
        parts = _split(url)
        host, port = parts.hostname or "", _port(parts)
        if self._allowed_by_name(host, port):
            return
        address = ip_literal(host)
        if address is not None:
            if self.allows(address, port):
                return
            if not is_public(address):
                raise EgressRefused(
                    f"the address {normalise(address)} is not publicly routable (loopback, "
                    "private, link-local or reserved)"
                )
            raise EgressRefused(f"port {port} is not allowed")
        if port in self.allowed_ports or any(
            entry.network is not None and entry.port == port for entry in self.entries
        ):
            return  # a name: its addresses are checked when it is called
        raise EgressRefused(f"port {port} is not allowed")

    async def vet(self, host: str, port: int, seconds: float | None = None) -> list[IPAddress]:
        """The addresses a connection to ``host`` may use, in the resolver's order (an empty
        list: a name the operator allowed, to connect to as it is). Raises
        :class:`EgressRefused` when none is allowed, ``httpcore.ConnectError`` or
        ``httpcore.ConnectTimeout`` when the name does not resolve (within ``seconds``)."""
        if self._allowed_by_name(host, port):
            return []
        literal = ip_literal(host)
        if literal is not None:
            found = [literal]
        else:
            found = await self._resolve(host, port, seconds)
        allowed = [address for address in found if self.allows(address, port)]
        if not allowed:
            listed = ", ".join(str(a) for a in found) or "nothing"
            raise EgressRefused(f"{host} port {port}: resolves to {listed}, none allowed")
        return allowed

    async def _resolve(self, host: str, port: int, seconds: float | None) -> list[IPAddress]:
        try:
            async with asyncio.timeout(seconds):
                texts = await self.resolver(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        found: dict[IPAddress, None] = {}
        for text in texts:
            try:
                found.setdefault(ipaddress.ip_address(text.split("%", 1)[0]), None)
            except ValueError:
                continue
        return list(found)


def _split(url: str) -> SplitResult:
    """A URL's parts, refusing what a base URL must not carry."""
    if _odd_characters(url):
        raise EgressRefused("the URL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise EgressRefused("the URL cannot be parsed") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise EgressRefused("only http and https URLs are allowed")
    if "@" in parts.netloc:
        raise EgressRefused("the URL carries user information (user@host)")
    if "?" in url:
        raise EgressRefused("a base URL takes no query")
    if "#" in url:
        raise EgressRefused("a base URL takes no fragment")
    if not parts.hostname or "%" in parts.hostname:
        raise EgressRefused("the URL has no usable host")
    return parts


def _odd_characters(url: str) -> bool:
    """Whitespace, control characters or backslashes: parsers disagree about those."""
    return any(c.isspace() or ord(c) < 32 or c == "\\" for c in url)


def _port(parts: SplitResult) -> int:
    return parts.port if parts.port is not None else DEFAULT_PORTS[parts.scheme]


# -- the network backend and the clients ------------------------------------------------------


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to addresses the guard allows and
    checks the peer it got. Unix sockets are refused."""

    def __init__(
        self, guard: EgressGuard, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self.guard = guard
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            vetted = await self.guard.vet(host, port, timeout)
        except EgressRefused as refused:
            log.warning("egress.refused", host=host, port=port, detail=refused.detail)
            raise
        targets = [str(address) for address in vetted] or [host]  # [host]: allowed by name
        failure: Exception = httpcore.ConnectError(f"no address to connect to for {host}")
        for target in targets:
            try:
                stream = await self.inner.connect_tcp(
                    target,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            if vetted:
                await self._check_peer(stream, host)
            return stream
        raise failure

    async def _check_peer(self, stream: httpcore.AsyncNetworkStream, host: str) -> None:
        """Refuse a connection whose far end is not an allowed address and port (or unknown)."""
        peer = stream.get_extra_info("server_addr")
        try:
            allowed = self.guard.allows(
                ipaddress.ip_address(str(peer[0]).split("%", 1)[0]), int(peer[1])
            )
        except (TypeError, ValueError, IndexError):
            allowed = False
        if not allowed:
            await stream.aclose()
            detail = f"{host}: the connection's peer {peer!r} is refused"
            log.warning("egress.refused", host=host, detail=detail)
            raise EgressRefused(detail)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("Unix sockets are refused")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's HTTP transport with every connection opened through a :class:`GuardedBackend`
    (httpx has no public parameter for the network backend, so the pool is rebuilt with it)."""

    def __init__(
        self,
        backend: httpcore.AsyncNetworkBackend,
        *,
        ssl_context: ssl.SSLContext | None = None,
        limits: httpx.Limits = httpx.Limits(max_connections=100),
    ) -> None:
        context = ssl_context or httpx.create_ssl_context()
        super().__init__(verify=context, limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


def guarded_client(
    guard: EgressGuard,
    *,
    inner: httpcore.AsyncNetworkBackend | None = None,
    limits: httpx.Limits = httpx.Limits(max_connections=100),
) -> httpx.AsyncClient:
    """An HTTP client for tenant destinations: every connection through the guard, no
    redirects followed, nothing read from the environment (proxies, netrc)."""
    transport = GuardedTransport(GuardedBackend(guard, inner), limits=limits)
    return httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False)


@dataclass
class EgressClients:
    """A process's two HTTP clients and the guard choosing between them: the trusted client
    for destinations the operator configured, the guarded one for everything else."""

    guard: EgressGuard
    trusted: httpx.AsyncClient
    guarded: httpx.AsyncClient

    @classmethod
    def build(cls, settings: Settings, resolver: Resolver = system_resolver) -> EgressClients:
        guard = EgressGuard.from_settings(settings, resolver)
        limits = httpx.Limits(max_connections=100)
        trusted = httpx.AsyncClient(limits=limits, follow_redirects=False)
        return cls(guard, trusted, guarded_client(guard, limits=limits))

    def for_url(self, url: str) -> httpx.AsyncClient:
        return self.trusted if self.guard.is_trusted(url) else self.guarded

    async def aclose(self) -> None:
        await self.trusted.aclose()
        await self.guarded.aclose()
