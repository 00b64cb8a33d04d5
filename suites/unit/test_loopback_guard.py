"""The launched backend's loopback guard: what counts as loopback, and a guarded process
refusing and recording connections and lookups elsewhere (refused before any packet leaves:
the audit hook runs before the system call)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qa.loopback_guard import LOG_ENV, is_loopback_host, read_violations, violation

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "host",
    [None, "127.0.0.1", "127.9.8.7", "::1", "[::1]", "::ffff:127.0.0.1", "localhost",
     "LOCALHOST", "api.localhost", b"127.0.0.1", "::1%lo"],
)  # fmt: skip
def test_loopback_hosts(host: object) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    ["10.0.0.1", "192.168.1.1", "8.8.8.8", "::", "0.0.0.0",  # noqa: S104
     "example.com", "localhost.evil",
     "::ffff:10.0.0.1", "2130706433", 42],
)  # fmt: skip
def test_other_hosts(host: object) -> None:
    assert not is_loopback_host(host)


def test_violations_name_the_destination() -> None:
    assert violation("socket.connect", (None, ("10.1.2.3", 80))) == "connect to 10.1.2.3 port 80"
    assert violation("socket.connect", (None, ("127.0.0.1", 80))) is None
    assert violation("socket.connect", (None, "/run/postgresql/.s.PGSQL.5432")) is None
    assert violation("socket.getaddrinfo", ("example.com", 443, 0, 0, 0)) == (
        "name lookup of 'example.com' (port 443)"
    )
    assert violation("socket.sendto", (None, ("1.1.1.1", 53))) == "datagram to 1.1.1.1 port 53"
    assert violation("open", ("/etc/passwd", "r", 0)) is None


def test_read_violations_of_a_missing_file(tmp_path: Path) -> None:
    assert read_violations(str(tmp_path / "none.jsonl")) == []


def test_a_guarded_process_is_refused_and_recorded(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    (tmp_path / "reach_out.py").write_text(
        textwrap.dedent(
            f"""
            import socket, sys
            for target in [("10.255.255.1", 9), ("example.invalid", 80)]:
                try:
                    socket.create_connection(target, timeout=1)
                except PermissionError as error:
                    print("refused:", error)
            socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
            print("loopback ok", sys.argv[1:])
            """
        )
    )
    log = tmp_path / "violations.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "qa.loopback_guard", "reach_out", "--flag"],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": f"{tmp_path}:{REPO_ROOT}", LOG_ENV: str(log), "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    listener.close()
    assert result.stdout.count("refused: qa.loopback_guard refused") == 2
    assert "loopback ok ['--flag']" in result.stdout
    assert read_violations(str(log)) == [
        "name lookup of '10.255.255.1' (port 9)",
        "name lookup of 'example.invalid' (port 80)",
    ]


def test_the_guard_needs_its_log_and_a_module(tmp_path: Path) -> None:
    for argv, env in ((["uvicorn"], {}), ([], {LOG_ENV: str(tmp_path / "log")})):
        result = subprocess.run(  # noqa: S603 - the test's own interpreter and arguments
            [sys.executable, "-m", "qa.loopback_guard", *argv],
            cwd=REPO_ROOT,
            env={"PATH": "/usr/bin", **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        assert "qa.loopback_guard" in result.stderr
