"""Keep a launched backend on loopback: ``python -m qa.loopback_guard MODULE ARGS...``.

Runs ``python -m MODULE ARGS...`` (the launcher runs uvicorn this way) after installing an
audit hook that refuses every TCP/UDP connection and every name lookup outside 127.0.0.0/8 and
::1 (``localhost`` names and Unix sockets are fine). Each refusal is raised in the process as
a ``PermissionError`` and appended, with its destination, to the JSON-lines file named by
``RENUM_QA_NETWORK_LOG``; the launcher reads that file when it stops the backend and fails
the test that started it. So no test reaches the outside unnoticed, whatever the backend's own
egress guard does.
"""

from __future__ import annotations

import ipaddress
import json
import os
import runpy
import sys
import threading
import time
from typing import Any

LOG_ENV = "RENUM_QA_NETWORK_LOG"
_LOCAL_NAMES = ("localhost", "localhost.", "ip6-localhost", "ip6-loopback")
_write_lock = threading.Lock()


def is_loopback_host(host: object) -> bool:
    """A loopback address or a ``localhost`` name; an IPv6 literal may carry a zone."""
    if host is None:
        return True  # getaddrinfo(None, port): the wildcard for a bind, never a lookup
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip("[]").split("%", 1)[0].lower()
    if name in _LOCAL_NAMES or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def violation(event: str, args: tuple[Any, ...]) -> str | None:
    """The refused destination of an audit event, or None when it stays on loopback."""
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and not is_loopback_host(address[0]):
            return f"connect to {address[0]} port {address[1]}"
    elif event == "socket.getaddrinfo":
        host, port = args[0], args[1]
        if not is_loopback_host(host):
            return f"name lookup of {host!r} (port {port})"
    elif event == "socket.sendto":
        address = args[1]
        if isinstance(address, tuple) and not is_loopback_host(address[0]):
            return f"datagram to {address[0]} port {address[1]}"
    return None


def _record(path: str, destination: str, event: str) -> None:
    line = json.dumps({"event": event, "destination": destination, "time": time.time()})
    with _write_lock, open(path, "a", encoding="utf-8") as log:
        log.write(line + "\n")


def install(path: str) -> None:
    """Refuse and record every non-loopback connection or lookup from now on."""

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if not event.startswith("socket."):
            return
        destination = violation(event, args)
        if destination is not None:
            _record(path, destination, event)
            raise PermissionError(f"qa.loopback_guard refused a {destination}")

    sys.addaudithook(hook)


def read_violations(path: str) -> list[str]:
    """The destinations recorded in ``path`` so far (none when it does not exist)."""
    try:
        with open(path, encoding="utf-8") as log:
            return [json.loads(line)["destination"] for line in log if line.strip()]
    except FileNotFoundError:
        return []


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m qa.loopback_guard MODULE [ARGS...]")
    path = os.environ.get(LOG_ENV)
    if not path:
        raise SystemExit(f"qa.loopback_guard needs {LOG_ENV}: the file to record refusals in")
    install(path)
    sys.argv = argv
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
