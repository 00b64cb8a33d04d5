"""qa/fault_proxy.py against a local echo server: pass through, latency, hang, refuse, cut."""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from qa import fault_proxy
from qa.fault_proxy import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    # A short poll: shutdown() waits for the next one (half a second by default, per test).
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo_port: int) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo_port) as running:
        yield running


def connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=timeout)


def roundtrip(sock: socket.socket, payload: bytes = b"ping") -> bytes:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def closed(sock: socket.socket) -> bool:
    """The peer closed or reset the connection."""
    try:
        sock.sendall(b"z")
        return sock.recv(10) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_passes_bytes_through_both_ways_and_counts_them(proxy: FaultProxy) -> None:
    assert proxy.port != 0
    with connect(proxy) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
        assert roundtrip(sock, b"again") == b"again"
    assert proxy.connections_accepted == 1
    assert proxy.bytes_up == 10
    assert proxy.bytes_down == 10


def test_latency_delays_each_direction(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk waits the latency before it is passed on, in each direction: the proxy's
    pauses are recorded (and still taken), not timed."""
    pauses: list[float] = []

    async def recorded_sleep(delay: float) -> None:
        pauses.append(delay)
        await asyncio.sleep(delay)

    recording = SimpleNamespace(**{**vars(asyncio), "sleep": recorded_sleep})
    monkeypatch.setattr(fault_proxy, "asyncio", recording)
    proxy.add_latency(0.05)
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
    assert pauses == [0.05, 0.05]  # once up, once down
    proxy.pass_through()
    assert proxy.latency == 0.0
    with pytest.raises(ValueError, match="negative"):
        proxy.add_latency(-1)


def test_hang_accepts_but_never_answers_until_passing_again(proxy: FaultProxy) -> None:
    with connect(proxy, timeout=0.3) as live:
        assert roundtrip(live) == b"ping"
        proxy.hang()
        with connect(proxy, timeout=0.3) as fresh:  # TCP is accepted...
            fresh.sendall(b"x")
            with pytest.raises(TimeoutError):  # ...but nothing comes back
                fresh.recv(10)
            live.sendall(b"y")
            with pytest.raises(TimeoutError):  # live connections stall too
                live.recv(10)
            proxy.pass_through()
            fresh.settimeout(2)
            live.settimeout(2)
            assert fresh.recv(10) == b"x"
            assert live.recv(10) == b"y"


def test_refuse_stops_listening_and_pass_through_listens_on_the_same_port(
    proxy: FaultProxy,
) -> None:
    port = proxy.port
    live = connect(proxy)
    assert roundtrip(live) == b"ping"
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    assert closed(live)  # the live connection was reset with the listener
    live.close()
    proxy.pass_through()
    assert proxy.port == port
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"


def test_cut_resets_live_connections_and_keeps_accepting(proxy: FaultProxy) -> None:
    first = connect(proxy)
    second = connect(proxy)
    assert roundtrip(first) == b"ping"
    assert roundtrip(second) == b"ping"
    assert proxy.live_connections == 2
    proxy.cut()
    for sock in (first, second):
        assert closed(sock)
        sock.close()
    assert proxy.live_connections == 0
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"


def test_unreachable_upstream_closes_the_client() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with FaultProxy("127.0.0.1", closed_port) as proxy, connect(proxy) as sock:
        assert closed(sock)


def test_stop_is_idempotent(echo_port: int) -> None:
    proxy = FaultProxy("127.0.0.1", echo_port).start()
    proxy.stop()
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=1)
