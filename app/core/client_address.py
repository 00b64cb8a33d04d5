"""The client's address of a request: the peer's, or, behind the proxies the operator trusts,
the one their ``X-Forwarded-For`` names.

``X-Forwarded-For`` is believed only when the direct peer is a trusted proxy: any client can
send the header, so from anyone else it is ignored. Each proxy appends the address it received
the request from, so the header is read right to left, skipping trusted hops; the first
address that is not a trusted proxy is the client (whatever the client wrote further left is
its own claim, never believed). A malformed entry where the walk stops ends it: the last
trusted hop is the client then (the one that passed the malformed value on)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from starlette.types import Scope

Network = IPv4Network | IPv6Network

FORWARDED_FOR = b"x-forwarded-for"
UNKNOWN = "unknown"


def _parse(value: str) -> IPv4Address | IPv6Address | None:
    """An address as a proxy may write it: ``1.2.3.4``, ``2001:db8::1``, ``[2001:db8::1]``
    (with a port or not: ``1.2.3.4:5678``, ``[2001:db8::1]:443``); None when malformed."""
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port (an IPv6 address has several colons)
        text = text.split(":", 1)[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:1.2.3.4 is 1.2.3.4
    return address


def _trusted(address: IPv4Address | IPv6Address, networks: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


@functools.lru_cache(maxsize=4096)
def is_trusted_peer(peer: str, networks: tuple[Network, ...]) -> bool:
    """Whether the peer ``peer`` is one of the trusted proxies; remembered, so that a request
    from a peer seen before pays a lookup, not a parse (a caller on the request path may keep
    its own answers per peer, cheaper still)."""
    address = _parse(peer)
    return address is not None and _trusted(address, networks)


def client_address(scope: Scope, trusted_proxies: tuple[Network, ...] = ()) -> str:
    """The client's address of an HTTP or WebSocket request (``UNKNOWN`` when the server gave
    no peer, as an in-process test client may), honouring ``X-Forwarded-For`` only from a peer
    in ``trusted_proxies``."""
    client = scope.get("client")
    peer_text = client[0] if client else None
    if not peer_text:
        return UNKNOWN
    if not trusted_proxies or not is_trusted_peer(str(peer_text), trusted_proxies):
        return str(peer_text)
    peer = _parse(str(peer_text))
    if peer is None:  # not reached: a trusted peer parsed
        return str(peer_text)
    hops: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == FORWARDED_FOR:
            hops.extend(value.decode("latin-1").split(","))  # several headers are one list
    client_ip = peer
    for hop in reversed(hops):
        address = _parse(hop)
        if address is None:
            break  # malformed: the last trusted hop passed it on, and is the client we know
        client_ip = address
        if not _trusted(address, trusted_proxies):
            break
    return str(client_ip)
