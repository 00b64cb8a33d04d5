"""The egress guard: the address classifier over every literal form, the static URL check and
its tricks, the operator's allow entries, the platform-URL matcher, and the network backend
(stub resolvers and stub inner backends; the only real connections go to loopback listeners
started here, so nothing leaves the machine)."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx
import pytest
from pydantic import ValidationError

from app.core.config import Settings
from app.core.egress import (
    EgressClients,
    EgressGuard,
    EgressRefused,
    GuardedBackend,
    guarded_client,
    ip_literal,
    is_public,
    is_under,
    normalise,
    parse_allow_entry,
    system_resolver,
)
from suites.unit.conftest import MakeSettings

pytestmark = pytest.mark.anyio

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"


# -- the address classifier -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[::ffff:127.0.0.1]", "127.0.0.1"),
        ("[::ffff:7f00:1]", "127.0.0.1"),
        ("[::127.0.0.1]", "127.0.0.1"),  # IPv4-compatible
        ("[64:ff9b::7f00:1]", "127.0.0.1"),  # NAT64
        ("2130706433", "127.0.0.1"),  # decimal
        ("0177.0.0.1", "127.0.0.1"),  # octal
        ("0x7f.1", "127.0.0.1"),  # hex, short
        ("0x7F000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),  # short
        ("127.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),  # a trailing dot
        ("0", "0.0.0.0"),  # noqa: S104 - an address under test, not a bind
        ("[::]", "::"),
        ("017700000001", "127.0.0.1"),  # octal, one part
    ],
)
def test_every_literal_form_is_read_as_its_address(host: str, address: str) -> None:
    literal = ip_literal(host)
    assert literal is not None
    assert str(normalise(literal)) == address


@pytest.mark.parametrize("host", ["api.openai.com", "localhost", "0x.example", "v1.internal"])
def test_names_are_not_literals(host: str) -> None:
    assert ip_literal(host) is None


@pytest.mark.parametrize("host", ["1.2.3.999", "256.1", "0x1ffffffff", "1.2.3.4.5"])
def test_numeric_hosts_that_are_no_address_are_refused(host: str) -> None:
    with pytest.raises(EgressRefused) as refused:
        ip_literal(host)
    assert "looks like an IP address" in refused.value.detail


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.255.255.254",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "[64:ff9b::a00:1]",  # NAT64 of 10.0.0.1
        "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
        "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",  # Teredo
        "[::]",
        "0.0.0.0",  # noqa: S104 - an address under test, not a bind
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",  # the metadata service
        "[fe80::1]",
        "[fd00::1]",
        "[fc00::1]",
        "[fec0::1]",  # site-local
        "100.64.0.1",  # shared address space
        "224.0.0.1",
        "239.255.255.250",
        "[ff02::1]",
        "240.0.0.1",
        "255.255.255.255",
        "198.18.0.1",  # benchmarking
        "192.0.2.1",  # documentation
        "[2001:db8::1]",
        "2130706433",
        "0177.0.0.1",
        "0x7f.1",
        "127.1",
        "0xa9.0xfe.0xa9.0xfe",  # 169.254.169.254
    ],
)
def test_non_public_addresses_in_every_form(host: str) -> None:
    address = ip_literal(host)
    assert address is not None
    assert not is_public(address)


@pytest.mark.parametrize(
    "host",
    [PUBLIC_V4, f"[{PUBLIC_V6}]", "8.8.8.8", "[::ffff:8.8.8.8]", "[64:ff9b::808:808]", "134744072"],
)
def test_public_addresses_pass(host: str) -> None:
    address = ip_literal(host)
    assert address is not None
    assert is_public(address)


# -- the static check of a URL ----------------------------------------------------------------


@pytest.fixture
def guard() -> EgressGuard:
    return EgressGuard(trusted=["http://127.0.0.1:8999/v1"])


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/v1", "not publicly routable"),
        ("http://localhost./v1?x=1", "no query"),
        ("http://[::1]/", "not publicly routable"),
        ("http://[::ffff:127.0.0.1]/", "127.0.0.1 is not publicly routable"),
        ("http://[::ffff:7f00:1]/", "127.0.0.1 is not publicly routable"),
        ("http://[::]/", "not publicly routable"),
        ("http://0.0.0.0/", "not publicly routable"),
        ("http://169.254.169.254/latest/meta-data", "not publicly routable"),
        ("http://[fd00::1]/", "not publicly routable"),
        ("http://100.64.0.1/", "not publicly routable"),
        ("http://224.0.0.1/", "not publicly routable"),
        ("http://2130706433/", "127.0.0.1 is not publicly routable"),
        ("http://0177.0.0.1/", "127.0.0.1 is not publicly routable"),
        ("http://0x7f.1/", "127.0.0.1 is not publicly routable"),
        ("http://127.1/", "127.0.0.1 is not publicly routable"),
        ("http://api.openai.com@127.0.0.1/", "user information"),
        ("http://user:secret@api.openai.com/v1", "user information"),
        ("http://user@api.openai.com/v1", "user information"),
        ("http://127.0.0.1#@api.openai.com/", "no fragment"),
        ("https://api.openai.com/v1#frag", "no fragment"),
        ("https://api.openai.com/v1?", "no query"),
        ("https://api.openai.com/v1?api-version=1", "no query"),
        ("http://127.0.0.1\\@api.openai.com/", "backslashes"),
        ("http://api.openai.com /v1", "whitespace"),
        ("ftp://api.openai.com/v1", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://127.0.0.1:6379/_", "only http and https"),
        ("https://api.openai.com:8443/v1", "port 8443 is not allowed"),
        ("http://8.8.8.8:22/", "port 22 is not allowed"),
        ("http://api.openai.com:99999/", "cannot be parsed"),
        ("http://[fe80::1%25eth0]/", "no usable host"),
        ("http:///v1", "no usable host"),
        ("http://1.2.3.999/", "looks like an IP address"),
        ("http://127.0.0.1:8999/v1evil", "not publicly routable"),  # not under the trusted URL
    ],
)
def test_the_static_check_refuses(guard: EgressGuard, url: str, reason: str) -> None:
    with pytest.raises(EgressRefused) as refused:
        guard.check_url(url)
    assert reason in refused.value.detail
    assert str(refused.value) == EgressRefused.TENANT_MESSAGE


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1",
        "http://api.example.com",
        f"http://{PUBLIC_V4}/v1",
        f"https://[{PUBLIC_V6}]:443/v1",
        "http://localhost/v1",  # a name: refused when called, by its addresses
        "http://127.0.0.1:8999/v1",  # trusted: the operator's
        "http://127.0.0.1:8999/v1/",
        "http://127.0.0.1:8999/v1/deployments/x",
    ],
)
def test_the_static_check_accepts(guard: EgressGuard, url: str) -> None:
    guard.check_url(url)


# -- the operator's allow entries -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "network", "port"),
    [
        ("vllm.internal:8000", "vllm.internal", None, 8000),
        ("VLLM.Internal.:8000", "vllm.internal", None, 8000),
        ("10.0.0.0/8:11434", None, "10.0.0.0/8", 11434),
        ("10.1.2.3:80", None, "10.1.2.3/32", 80),
        ("[::1]:8000", None, "::1/128", 8000),
        ("[fd00::/8]:443", None, "fd00::/8", 443),
        ("[::ffff:10.0.0.1]:80", None, "10.0.0.1/32", 80),
    ],
)
def test_allow_entries_parse(text: str, name: str | None, network: str | None, port: int) -> None:
    entry = parse_allow_entry(text)
    assert entry.name == name
    assert entry.network == (ipaddress.ip_network(network) if network else None)
    assert entry.port == port


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("vllm.internal", "no port"),
        ("::1:8000", "in brackets"),
        ("[::1]", "needs a port"),
        ("[not-v6]:80", "not an IPv6 address"),
        ("10.0.0.0/33:80", "not a CIDR network"),
        ("host:0", "not a number from 1 to 65535"),
        ("host:65536", "not a number from 1 to 65535"),
        ("host:http", "not a number"),
        ("bad host:80", "not a host name"),
        ("1.2.3:80", "not a host name"),
        (":80", "no port"),
    ],
)
def test_bad_allow_entries_are_refused_clearly(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as refused:
        parse_allow_entry(text)
    assert "host:port, cidr:port, [v6]:port or [v6cidr]:port" in str(refused.value)


def test_a_bad_allow_entry_stops_the_settings(make_settings: MakeSettings) -> None:
    with pytest.raises(ValidationError, match=r"egress allow entry 'nohost'.*no port"):
        make_settings(egress={"allow": "ok.internal:80, nohost"})
    with pytest.raises(ValidationError, match="port 0 is not a number"):
        make_settings(egress={"allowed_ports": "443,0"})
    settings = make_settings(egress={"allow": "a.internal:8000,10.0.0.0/8:80", "allowed_ports": ""})
    assert settings.egress.allow == ["a.internal:8000", "10.0.0.0/8:80"]
    assert settings.egress.allowed_ports == []


def test_allow_entries_open_their_destination_and_port_only() -> None:
    guard = EgressGuard(
        allow=["10.0.0.0/8:11434", "vllm.internal:8000", "[::1]:8000", "127.0.0.1:9000"],
        allowed_ports=[443],
    )
    for url in (
        "http://10.1.2.3:11434/v1",
        "http://vllm.internal:8000/v1",
        "http://VLLM.internal:8000/v1",
        "http://[::1]:8000/v1",
        "http://127.0.0.1:9000/v1",
        "http://[::ffff:127.0.0.1]:9000/v1",  # the same address, mapped
        "http://other.internal:11434/v1",  # a name on a CIDR entry's port: checked when called
        "https://api.openai.com/v1",
    ):
        guard.check_url(url)
    for url, reason in (
        ("http://10.1.2.3:8000/v1", "not publicly routable"),
        ("http://11.1.2.3:11434/v1", "port 11434 is not allowed"),
        ("http://vllm.internal:8001/v1", "port 8001"),
        ("http://[::1]:9000/v1", "not publicly routable"),
        ("http://api.openai.com/v1", "port 80 is not allowed"),
        ("http://127.0.0.2:9000/v1", "not publicly routable"),
    ):
        with pytest.raises(EgressRefused) as refused:
            guard.check_url(url)
        assert re.search(reason, refused.value.detail)


# -- the platform-URL matcher -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "base", "under"),
    [
        ("https://api.openai.com/v1", "https://api.openai.com/v1", True),
        ("https://api.openai.com/v1/", "https://api.openai.com/v1", True),
        ("https://api.openai.com/v1", "https://api.openai.com/v1/", True),
        ("https://api.openai.com/v1/org/x", "https://api.openai.com/v1", True),
        ("HTTPS://API.OpenAI.com/v1", "https://api.openai.com/v1", True),
        ("https://api.openai.com:443/v1", "https://api.openai.com/v1", True),
        ("http://llm.internal:80/v1", "http://llm.internal/v1", True),
        ("https://api.openai.com./v1", "https://api.openai.com/v1", True),
        ("http://[::1]:8000/v1", "http://[0:0::1]:8000/v1", True),
        ("https://api.openai.com", "https://api.openai.com/", True),
        ("https://api.openai.com/anything", "https://api.openai.com", True),
        ("https://api.openai.com/v1evil", "https://api.openai.com/v1", False),
        ("https://api.openai.com/v", "https://api.openai.com/v1", False),
        ("https://api.openai.com/", "https://api.openai.com/v1", False),
        ("http://api.openai.com/v1", "https://api.openai.com/v1", False),
        ("https://api.openai.com:8443/v1", "https://api.openai.com/v1", False),
        ("https://api.openai.com.evil.example/v1", "https://api.openai.com/v1", False),
        ("https://evil.example/api.openai.com/v1", "https://api.openai.com/v1", False),
        ("https://api.openai.com@evil.example/v1", "https://api.openai.com/v1", False),
        ("https://user@api.openai.com/v1", "https://api.openai.com/v1", False),
        ("https://api.openai.com/v1?x=1", "https://api.openai.com/v1", False),
        ("https://api.openai.com/v1#x", "https://api.openai.com/v1", False),
        ("https://api.openai.com/v1/../admin", "https://api.openai.com/v1", False),
        ("https://api.openai.com/v1/%2e%2e/admin", "https://api.openai.com/v1", False),
        ("not a url", "https://api.openai.com/v1", False),
    ],
)
def test_is_under_compares_by_origin_and_whole_segments(url: str, base: str, under: bool) -> None:
    assert is_under(url, base) is under


def test_trust_follows_the_platform_url(make_settings: MakeSettings) -> None:
    settings = make_settings(providers={"openai_base_url": "http://127.0.0.1:8999/v1"})
    guard = EgressGuard.from_settings(settings)
    assert guard.is_trusted("http://127.0.0.1:8999/v1/")
    assert not guard.is_trusted("http://127.0.0.1:8999/v2")
    assert not guard.is_trusted("https://api.openai.com/v1")


# -- the network backend ----------------------------------------------------------------------


def resolving_to(*addresses: str) -> Callable[[str, int], Awaitable[list[str]]]:
    """A stub resolver: every name resolves to ``addresses``; the names asked are kept."""

    async def resolve(host: str, port: int) -> list[str]:
        resolve.asked.append((host, port))  # type: ignore[attr-defined]
        return list(addresses)

    resolve.asked = []  # type: ignore[attr-defined]
    return resolve


@dataclass
class RecordingBackend(httpcore.AsyncNetworkBackend):
    """An inner backend that records what it is asked to connect to and connects nowhere
    (``connect`` set: to that loopback port instead, like a rebinding or a proxy would)."""

    connect: int | None = None
    asked: list[tuple[str, int]] = field(default_factory=list)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.asked.append((host, port))
        if self.connect is None:
            raise httpcore.ConnectError("the stub connects nowhere")
        return await httpcore.AnyIOBackend().connect_tcp("127.0.0.1", self.connect)


@dataclass
class Listener:
    """A loopback TCP listener that records each connection's bytes; ``reply`` is sent to
    each request (None: read until the client closes)."""

    reply: bytes | None = None
    port: int = 0
    received: list[bytes] = field(default_factory=list)
    connections: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.reply is None:
                data = await reader.read()
            else:
                data = await reader.readuntil(b"\r\n\r\n")
                writer.write(self.reply)
                await writer.drain()
        except asyncio.IncompleteReadError as closed_early:
            data = closed_early.partial
        self.received.append(data)
        writer.close()
        self.closed.set()


@pytest.fixture
async def listen() -> AsyncIterator[Callable[..., Awaitable[Listener]]]:
    servers: list[asyncio.Server] = []

    async def start(reply: bytes | None = None) -> Listener:
        listener = Listener(reply)
        server = await asyncio.start_server(listener.handle, "127.0.0.1", 0)
        servers.append(server)
        listener.port = server.sockets[0].getsockname()[1]
        return listener

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_public_name_resolving_to_loopback_is_refused_before_connecting() -> None:
    resolver = resolving_to("127.0.0.1", "::1")
    inner = RecordingBackend()
    backend = GuardedBackend(EgressGuard(resolver=resolver), inner)
    with pytest.raises(EgressRefused) as refused:
        await backend.connect_tcp("rebind.example", 80)
    assert "resolves to 127.0.0.1, ::1, none allowed" in refused.value.detail
    assert resolver.asked == [("rebind.example", 80)]  # type: ignore[attr-defined]
    assert inner.asked == []


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "::1", "2130706433", "0177.0.0.1", "0x7f.1", "127.1", "169.254.169.254"]
)
async def test_literal_hosts_are_refused_without_a_lookup(host: str) -> None:
    resolver = resolving_to(PUBLIC_V4)
    inner = RecordingBackend()
    with pytest.raises(EgressRefused):
        await GuardedBackend(EgressGuard(resolver=resolver), inner).connect_tcp(host, 80)
    assert resolver.asked == []  # type: ignore[attr-defined]
    assert inner.asked == []


async def test_only_allowed_addresses_are_tried_in_order() -> None:
    inner = RecordingBackend()
    resolver = resolving_to("10.0.0.5", PUBLIC_V4, "::1", PUBLIC_V6, PUBLIC_V4)
    backend = GuardedBackend(EgressGuard(resolver=resolver), inner)
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("mixed.example", 443)
    assert inner.asked == [(PUBLIC_V4, 443), (PUBLIC_V6, 443)]


async def test_a_port_outside_the_allowed_ports_is_refused() -> None:
    inner = RecordingBackend()
    backend = GuardedBackend(EgressGuard(resolver=resolving_to(PUBLIC_V4)), inner)
    with pytest.raises(EgressRefused) as refused:
        await backend.connect_tcp("api.example", 6379)
    assert re.search("none allowed", refused.value.detail)
    assert inner.asked == []


async def test_the_peer_actually_connected_to_is_checked(
    listen: Callable[..., Awaitable[Listener]],
) -> None:
    listener = await listen()
    inner = RecordingBackend(connect=listener.port)  # a vetted public address lands on loopback
    backend = GuardedBackend(EgressGuard(resolver=resolving_to(PUBLIC_V4)), inner)
    with pytest.raises(EgressRefused) as refused:
        await backend.connect_tcp("public.example", 80)
    assert re.search(r"peer \('127\.0\.0\.1'", refused.value.detail)
    assert inner.asked == [(PUBLIC_V4, 80)]
    await asyncio.wait_for(listener.closed.wait(), 10)
    assert listener.received == [b""]  # connected, closed, nothing sent


async def test_names_and_addresses_the_operator_allows_connect(
    listen: Callable[..., Awaitable[Listener]],
) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    listener = await listen(ok)
    inner = RecordingBackend(connect=listener.port)
    by_address = EgressGuard(allow=[f"127.0.0.1:{listener.port}"], resolver=resolving_to())
    stream = await GuardedBackend(by_address, inner).connect_tcp("127.0.0.1", listener.port)
    await stream.aclose()
    by_name = EgressGuard(allow=[f"vllm.internal:{listener.port}"], resolver=resolving_to())
    stream = await GuardedBackend(by_name, inner).connect_tcp("vllm.internal", listener.port)
    await stream.aclose()
    assert inner.asked == [("127.0.0.1", listener.port), ("vllm.internal", listener.port)]
    assert by_name.resolver.asked == []  # type: ignore[attr-defined]


async def test_resolution_failures_are_connect_errors() -> None:
    async def fails(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    async def hangs(host: str, port: int) -> list[str]:
        await asyncio.Event().wait()
        return []

    with pytest.raises(httpcore.ConnectError, match=r"cannot resolve nowhere\.example"):
        await GuardedBackend(EgressGuard(resolver=fails)).connect_tcp("nowhere.example", 443)
    with pytest.raises(httpcore.ConnectTimeout):
        await GuardedBackend(EgressGuard(resolver=hangs)).connect_tcp("slow.example", 443, 0.01)
    with pytest.raises(EgressRefused) as refused:
        await GuardedBackend(EgressGuard(resolver=resolving_to())).connect_tcp("empty.example", 80)
    assert re.search("resolves to nothing", refused.value.detail)


async def test_unix_sockets_are_refused() -> None:
    with pytest.raises(EgressRefused) as refused:
        await GuardedBackend(EgressGuard()).connect_unix_socket("/var/run/docker.sock")
    assert re.search("Unix sockets", refused.value.detail)


async def test_the_system_resolver_answers_for_localhost() -> None:
    assert "127.0.0.1" in await system_resolver("localhost", 80) or "::1" in (
        await system_resolver("localhost", 80)
    )


# -- the guarded client -----------------------------------------------------------------------


async def test_the_guarded_client_connects_through_the_guard(
    listen: Callable[..., Awaitable[Listener]],
) -> None:
    listener = await listen(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    guard = EgressGuard(resolver=resolving_to("127.0.0.1"))
    async with guarded_client(guard) as client:
        with pytest.raises(EgressRefused):
            await client.get(f"http://localhost:{listener.port}/v1/models")
        with pytest.raises(EgressRefused):
            await client.get(f"http://127.0.0.1:{listener.port}/v1/models")
    assert listener.connections == 0

    allowed = EgressGuard(allow=[f"127.0.0.1:{listener.port}"])
    counting = RecordingBackend(connect=listener.port)
    async with guarded_client(allowed, inner=counting) as client:
        response = await client.get(f"http://127.0.0.1:{listener.port}/v1/models")
    assert response.text == "ok"
    assert counting.asked == [("127.0.0.1", listener.port)]


async def test_redirects_are_never_followed(listen: Callable[..., Awaitable[Listener]]) -> None:
    target = await listen(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    location = f"http://127.0.0.1:{target.port}/stolen"
    redirect = f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
    redirector = await listen(redirect.encode())
    guard = EgressGuard(allow=[f"127.0.0.1:{redirector.port}"])
    async with guarded_client(guard) as client:
        response = await client.get(f"http://127.0.0.1:{redirector.port}/v1/models")
        assert response.status_code == 302
        # Even a caller that asks to follow meets the guard at the next hop.
        with pytest.raises(EgressRefused):
            await client.get(f"http://127.0.0.1:{redirector.port}/v1/models", follow_redirects=True)
    assert redirector.connections == 2
    assert target.connections == 0


class TlsStub(httpcore.AsyncNetworkStream):
    """A stream from a stub backend: its peer is public; TLS records the name it is given."""

    def __init__(self) -> None:
        self.server_hostnames: list[str | None] = []

    def get_extra_info(self, info: str) -> Any:
        return (PUBLIC_V4, 443) if info == "server_addr" else None

    async def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> httpcore.AsyncNetworkStream:
        self.server_hostnames.append(server_hostname)
        raise httpcore.ConnectError("the stub speaks no TLS")

    async def aclose(self) -> None:
        pass


@dataclass
class TlsBackend(httpcore.AsyncNetworkBackend):
    stream: TlsStub = field(default_factory=TlsStub)
    asked: list[tuple[str, int]] = field(default_factory=list)

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> TlsStub:
        self.asked.append((host, port))
        return self.stream


async def test_tls_is_checked_against_the_hostname_and_env_proxies_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:1")
    inner = TlsBackend()
    guard = EgressGuard(resolver=resolving_to(PUBLIC_V4))
    async with guarded_client(guard, inner=inner) as client:
        with pytest.raises(httpx.ConnectError, match="no TLS"):
            await client.get("https://api.example.test/v1/models")
    assert inner.asked == [(PUBLIC_V4, 443)]  # the vetted address, not a proxy
    assert inner.stream.server_hostnames == ["api.example.test"]


async def test_clients_by_destination(make_settings: MakeSettings) -> None:
    settings: Settings = make_settings(providers={"openai_base_url": "http://127.0.0.1:8999/v1"})
    clients = EgressClients.build(settings)
    try:
        assert clients.for_url("http://127.0.0.1:8999/v1") is clients.trusted
        assert clients.for_url("http://127.0.0.1:8999/v1/") is clients.trusted
        assert clients.for_url("http://127.0.0.1:8999/other") is clients.guarded
        assert clients.for_url("https://api.openai.com/v1") is clients.guarded
        assert not clients.trusted.follow_redirects
        assert not clients.guarded.follow_redirects
    finally:
        await clients.aclose()
    assert clients.trusted.is_closed
    assert clients.guarded.is_closed
