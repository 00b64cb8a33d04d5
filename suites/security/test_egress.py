"""The egress guard and the platform key over HTTP, against launched backends.

Loopback listeners stand in for what a tenant must not reach or probe: an HTTP server that
records every request, a TCP port that answers garbage (an SSH banner), a silent port and a
closed one. Through the suite's backend (no allowlist, the canary platform key) every literal
form of a loopback address and every URL trick is refused when the agent is saved, a name that
resolves to loopback is refused when called, and no agent off the platform URL can exist
without its own key. A private backend whose operator allowed some of the listeners shows that
failures there read alike (no port scanning through step errors), that a provider's error body
never reaches the tenant, and that a redirect from an allowed place is not followed. No
listener ever sees the canary platform key.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from security_support import CANARY_PLATFORM_KEY

from qa.client import API, ApiClient
from qa.factories import create_tenant, expect
from qa.launcher import LaunchedBackend
from qa.polling import wait_until

AGENTS = f"{API}/agents"
SECRET_BODY = "internal: db-primary.corp at 10.0.0.7 is down"
UNREACHABLE = "unavailable: provider unreachable"
# A call-time refusal reads as an unreachable host: names cannot be probed through errors.
REFUSED = UNREACHABLE


# -- loopback listeners -----------------------------------------------------------------------


@dataclass
class Listener:
    """A loopback server and what reached it (raw bytes or parsed requests)."""

    kind: str
    server: socketserver.BaseServer | None = None
    port: int = 0
    connections: int = 0
    received: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, data: bytes) -> None:
        with self.lock:
            self.connections += 1
            self.received.append(data)

    @property
    def seen(self) -> bytes:
        with self.lock:
            return b"\n".join(self.received)


def _http(listener: Listener, status: int, headers: dict[str, str], body: bytes) -> Listener:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            payload = self.rfile.read(length) if length else b""
            listener.record(
                bytes(str(self.requestline), "latin-1") + b"\n" + bytes(self.headers) + payload
            )
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    listener.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    return listener


def _tcp(listener: Listener, banner: bytes | None) -> Listener:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock: socket.socket = self.request
            sock.settimeout(30)
            if banner is not None:
                sock.sendall(banner)
                listener.record(b"")
                return
            chunks = []
            try:
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except OSError:
                pass
            listener.record(b"".join(chunks))

    listener.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    return listener


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Listeners:
    """Two sets: ``refused`` ones nobody allowed; ``allowed`` ones a private backend allows."""

    refused: dict[str, Listener]
    allowed: dict[str, Listener]
    closed_refused: int
    closed_allowed: int

    def all(self) -> list[Listener]:
        return [*self.refused.values(), *self.allowed.values()]

    def connections(self) -> dict[str, int]:
        """Connections so far per listener (tests compare before and after: the listeners
        serve every database flavour's run of the module)."""
        counts = {f"refused {k}": v.connections for k, v in self.refused.items()}
        counts.update({f"allowed {k}": v.connections for k, v in self.allowed.items()})
        return counts


@pytest.fixture(scope="module")
def listeners() -> Iterator[Listeners]:
    refused = {
        "http": _http(Listener("http"), 200, {}, b"{}"),
        "garbage": _tcp(Listener("garbage"), b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"),
    }
    target = f"http://127.0.0.1:{_port_of(refused['http'])}/v1/chat/completions"
    error = b'{"error": {"message": "' + SECRET_BODY.encode() + b'"}}'
    allowed = {
        "http": _http(Listener("http"), 500, {"Content-Type": "application/json"}, error),
        "garbage": _tcp(Listener("garbage"), b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"),
        "silent": _tcp(Listener("silent"), None),
        "redirect": _http(Listener("redirect"), 302, {"Location": target}, b""),
    }
    threads = []
    for listener in [*refused.values(), *allowed.values()]:
        assert listener.server is not None
        listener.port = _port_of(listener)
        thread = threading.Thread(target=listener.server.serve_forever, daemon=True)
        thread.start()
        threads.append(thread)
    yield Listeners(refused, allowed, closed_port(), closed_port())
    for listener in [*refused.values(), *allowed.values()]:
        assert listener.server is not None
        listener.server.shutdown()
        listener.server.server_close()


def _port_of(listener: Listener) -> int:
    assert listener.server is not None
    return int(listener.server.server_address[1])  # type: ignore[index]


def assert_no_canary(listeners: Listeners) -> None:
    for listener in listeners.all():
        assert CANARY_PLATFORM_KEY.encode() not in listener.seen, listener.kind


# -- API helpers ------------------------------------------------------------------------------


def create_key(client: ApiClient) -> str:
    body = {"name": f"key-{uuid.uuid4().hex[:8]}", "key": f"sk-tenant-{uuid.uuid4().hex}"}
    return str(expect(client.post(f"{API}/provider-keys", json=body), 201)["id"])


def agent_body(base_url: str | None, key_id: str | None, **fields: Any) -> dict[str, Any]:
    return {
        "name": f"agent-{uuid.uuid4().hex[:8]}",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "base_url": base_url,
        "provider_key_id": key_id,
        "timeout_seconds": 2,
        "retry": {"max_attempts": 1},
        **fields,
    }


def pointers(problem: dict[str, Any]) -> set[str]:
    return {error["pointer"] for error in problem.get("errors") or []}


def refused_at(client: ApiClient, body: dict[str, Any]) -> set[str]:
    response = client.post(AGENTS, json=body)
    assert response.status_code == 422, (body["base_url"], response.text)
    return pointers(response.json())


def step_error(client: ApiClient, base_url: str, key_id: str) -> str:
    """Save an agent on ``base_url``, run it once, and return its step's error."""
    agent = expect(client.post(AGENTS, json=agent_body(base_url, key_id)), 201)
    body = {"name": f"team-{uuid.uuid4().hex[:8]}", "agent_ids": [agent["id"]]}
    team = expect(client.post(f"{API}/teams", json=body), 201)
    execution = expect(
        client.post(
            f"{API}/teams/{team['id']}/executions", params={"wait": 10}, json={"prompt": "hi"}
        ),
        202,
    )
    assert execution["status"] == "failed", execution
    events = client.get(f"{API}/executions/{execution['id']}/events")
    for text in (str(execution), events.text):
        assert SECRET_BODY not in text
        assert CANARY_PLATFORM_KEY not in text
    [step] = execution["steps"]
    return str(step["error"])


# -- the suite's backend: no allowlist --------------------------------------------------------


def test_loopback_literals_and_url_tricks_are_refused_when_saved(
    member_client: ApiClient, listeners: Listeners
) -> None:
    port = listeners.refused["http"].port
    key = create_key(member_client)
    before = listeners.connections()
    urls = [
        f"http://127.0.0.1:{port}/v1",
        f"http://[::1]:{port}/v1",
        f"http://[::ffff:127.0.0.1]:{port}/v1",
        f"http://[::ffff:7f00:1]:{port}/v1",
        f"http://2130706433:{port}/v1",
        f"http://0177.0.0.1:{port}/v1",
        f"http://0x7f.1:{port}/v1",
        f"http://127.1:{port}/v1",
        f"http://0.0.0.0:{port}/v1",
        f"http://[::]:{port}/v1",
        f"http://localhost:{port}/v1",  # a name, but not on an allowed port
        "http://127.0.0.1/v1",
        "http://169.254.169.254/latest/meta-data",
        "http://[fd00::1]/v1",
        "http://100.64.0.1/v1",
        f"http://api.openai.com@127.0.0.1:{port}/v1",
        f"http://127.0.0.1:{port}#@api.openai.com/v1",
        f"http://api.openai.com/v1?next=http://127.0.0.1:{port}/",
        "http://user:secret@localhost/v1",
    ]
    for url in urls:
        assert refused_at(member_client, agent_body(url, key)) == {"/body/base_url"}, url
    assert listeners.connections() == before
    assert_no_canary(listeners)


def test_no_agent_off_the_platform_url_exists_without_its_own_key(
    member_client: ApiClient,
) -> None:
    for url in ("http://localhost/v1", "https://api.example.com/v1"):
        assert refused_at(member_client, agent_body(url, None)) == {"/body/provider_key_id"}
    key = create_key(member_client)
    agent = expect(member_client.post(AGENTS, json=agent_body("http://localhost/v1", key)), 201)
    dropped = member_client.patch(f"{AGENTS}/{agent['id']}", json={"provider_key_id": None})
    assert dropped.status_code == 422, dropped.text
    assert pointers(dropped.json()) == {"/body/provider_key_id"}


def test_names_resolving_to_loopback_are_refused_when_called(
    member_client: ApiClient, listeners: Listeners
) -> None:
    key = create_key(member_client)
    errors = {
        url: step_error(member_client, url, key)
        for url in ("http://localhost/v1", "https://localhost/v1", "http://LocalHost/v1")
    }
    assert set(errors.values()) == {REFUSED}, errors
    assert_no_canary(listeners)


# -- a private backend whose operator allowed some listeners ----------------------------------


@dataclass
class Private:
    backend: LaunchedBackend
    member: ApiClient
    key: str


@pytest.fixture(scope="module")
def private(
    request: pytest.FixtureRequest, db_flavour: str, listeners: Listeners
) -> Iterator[Private]:
    """A backend with the refused listeners' ports allowed (so names on them pass the static
    check) and the allowed listeners' addresses on the allowlist."""
    if request.config.getoption("--target"):
        pytest.skip("needs a private server with its own egress settings")
    ports = [listener.port for listener in listeners.refused.values()]
    allowed_ports = [80, 443, *ports, listeners.closed_refused]
    allowed = [listener.port for listener in listeners.allowed.values()]
    allow = [f"127.0.0.1:{port}" for port in [*allowed, listeners.closed_allowed]]
    env = {
        "RENUM_PROVIDERS__OPENAI_API_KEY": CANARY_PLATFORM_KEY,
        "RENUM_EGRESS__ALLOWED_PORTS": ",".join(map(str, allowed_ports)),
        "RENUM_EGRESS__ALLOW": ",".join(allow),
        "RENUM_AUTH__ACCESS_TOKEN_MINUTES": "120",
    }
    server = LaunchedBackend.start(db_flavour, extra_env=env)
    admin = ApiClient(server.base_url)
    member = ApiClient(server.base_url)
    try:
        admin.login(server.admin_email, server.admin_password)
        tenant = create_tenant(admin)
        member.login(tenant.member.email, tenant.member.password)
        yield Private(server, member, create_key(member))
    finally:
        member.close()
        admin.close()
        server.stop()


def test_names_on_allowed_ports_are_refused_alike_when_they_resolve_to_loopback(
    private: Private, listeners: Listeners
) -> None:
    ports = [listener.port for listener in listeners.refused.values()]
    before = listeners.connections()
    errors = {
        port: step_error(private.member, f"http://localhost:{port}/v1", private.key)
        for port in [*ports, listeners.closed_refused]
    }
    assert set(errors.values()) == {REFUSED}, errors
    assert listeners.connections() == before
    # Their literal addresses are refused already when saved.
    for port in ports:
        body = agent_body(f"http://127.0.0.1:{port}/v1", private.key)
        assert refused_at(private.member, body) == {"/body/base_url"}
    assert_no_canary(listeners)


def test_closed_silent_and_non_http_ports_look_alike(
    private: Private, listeners: Listeners
) -> None:
    ports = {
        "closed": listeners.closed_allowed,
        "garbage": listeners.allowed["garbage"].port,
        "silent": listeners.allowed["silent"].port,
    }
    errors = {
        kind: step_error(private.member, f"http://127.0.0.1:{port}/v1", private.key)
        for kind, port in ports.items()
    }
    assert errors == dict.fromkeys(ports, UNREACHABLE)
    assert listeners.allowed["garbage"].connections >= 1
    assert listeners.allowed["silent"].connections >= 1
    assert_no_canary(listeners)


def test_a_provider_error_shows_its_status_never_its_body(
    private: Private, listeners: Listeners
) -> None:
    http = listeners.allowed["http"]
    error = step_error(private.member, f"http://127.0.0.1:{http.port}/v1", private.key)
    assert error == "unavailable: provider unavailable (HTTP 500)"
    assert b"bearer sk-tenant-" in http.seen.lower()  # the tenant's own key went there
    assert_no_canary(listeners)
    # Operators find the provider's own message in the server's log; no key is there.
    log = wait_for_log(private.backend, SECRET_BODY)
    assert "provider.failure" in log
    assert CANARY_PLATFORM_KEY not in log
    assert "sk-tenant-" not in log


def wait_for_log(backend: LaunchedBackend, text: str, timeout: float = 10.0) -> str:
    """The server's log once ``text`` is in it (lines land a moment after the response)."""

    def logged() -> str | None:
        log = backend.log_text()
        return log if text in log else None

    return wait_until(
        logged,
        timeout=timeout,
        what=f"{text!r} in the server's log",
        interval=0.05,
    )


def test_a_redirect_from_an_allowed_place_is_not_followed(
    private: Private, listeners: Listeners
) -> None:
    redirect = listeners.allowed["redirect"]
    before = listeners.connections()
    error = step_error(private.member, f"http://127.0.0.1:{redirect.port}/v1", private.key)
    assert error == (
        "bad_response: provider redirected the request (HTTP 302); redirects are not followed"
    )
    after = listeners.connections()
    assert after["allowed redirect"] == before["allowed redirect"] + 1
    assert after["refused http"] == before["refused http"]  # where it pointed
    assert_no_canary(listeners)


def test_an_allowed_destination_still_needs_the_tenants_own_key(
    private: Private, listeners: Listeners
) -> None:
    url = f"http://127.0.0.1:{listeners.allowed['http'].port}/v1"
    assert refused_at(private.member, agent_body(url, None)) == {"/body/provider_key_id"}
    assert_no_canary(listeners)
