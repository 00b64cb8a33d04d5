"""The overhead budget: Renum with every improvement switched on against a bare FastAPI app.

The issue's rule: a small JSON route served by Renum's app, every capability on, answers at
least 90% of the requests per second the same route gets from a bare FastAPI app. Both run as
real Uvicorn processes on the same core (the load generator, wrk, on the other), both are
loaded in alternating rounds over keep-alive HTTP connections, so whatever else the machine
does slows both alike; the figure is the median over rounds of the per-round ratio Renum/bare.
Never an assertion on wall time.

Renum runs as deployed: in production, logging every request (its access log, at INFO); the
bare app logs none.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from overhead_apps import ROUTE

from qa.launcher import free_port
from qa.polling import wait_until

TARGET_RATIO = 0.90
ROUNDS = 7
SECONDS_PER_ROUND = 2
CONNECTIONS = 32
HERE = Path(__file__).parent
SERVER_CORE, LOAD_CORE = 0, 1


@contextlib.contextmanager
def serve(factory: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "RENUM_ENVIRONMENT": "production",
        "RENUM_SECRET_KEY": "overhead-bench-secret-key-0123456789abcdefghijk",
        "RENUM_ENCRYPTION_KEYS": f"k1:{base64.b64encode(secrets.token_bytes(32)).decode()}",
        "RENUM_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path / 'renum.db'}",
        "RENUM_PROVIDERS__OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "RENUM_LOG_LEVEL": "INFO",
    }
    log = (tmp_path / f"{factory}.log").open("wb")
    if factory == "renum":  # in production the schema is migrated before the server starts
        subprocess.run(
            [sys.executable, "-m", "app", "db", "upgrade"], env=env, stdout=log,
            stderr=subprocess.STDOUT, check=True,
        )  # fmt: skip
    process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
        [
            sys.executable, "-m", "uvicorn", f"overhead_apps:{factory}", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
            "--log-level", "warning",
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    os.sched_setaffinity(process.pid, {SERVER_CORE})
    url = f"http://127.0.0.1:{port}{ROUTE}"
    try:
        wait_until(lambda: _answers(url), timeout=60, what=f"{factory} to serve {ROUTE}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def wrk_rate(url: str) -> float:
    """Requests per second of one wrk round on ``url``; fails on any error or non-2xx."""
    wrk = shutil.which("wrk")
    assert wrk, "wrk is missing: the performance session installs Debian's wrk package"
    output = subprocess.run(  # noqa: S603 - the wrk found on PATH, fixed arguments
        [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{SECONDS_PER_ROUND}s", url],
        capture_output=True, text=True, check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {LOAD_CORE}),
    ).stdout  # fmt: skip
    assert "Non-2xx" not in output, output
    assert "Socket errors" not in output, output
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    assert found, output
    return float(found.group(1))


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[str, str]]:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("the overhead benchmark needs two cores: one for the servers, one for wrk")
    with serve("bare", tmp_path) as bare, serve("renum", tmp_path) as renum:
        yield bare, renum


class OverBudget(AssertionError):
    """Renum served less than the budget's share of the bare app's rate."""


@pytest.mark.xfail(
    raises=OverBudget,  # a server that fails to start, or wrk failing, is an error still
    strict=True,
    reason="issue 16: the overhead budget is not met yet (the ratio is printed and recorded); "
    "strict, so the run fails once it is met and this mark must go",
)
def test_renum_serves_at_least_ninety_percent_of_bare(
    servers: tuple[str, str], record_property: Callable[[str, object], None]
) -> None:
    bare, renum = servers
    wrk_rate(bare), wrk_rate(renum)  # warm-up round, not counted
    rates: dict[str, list[float]] = {"bare": [], "renum": []}
    for _ in range(ROUNDS):
        rates["bare"].append(wrk_rate(bare))
        rates["renum"].append(wrk_rate(renum))
    ratio = statistics.median(r / b for r, b in zip(rates["renum"], rates["bare"], strict=True))
    bare_rps, renum_rps = statistics.median(rates["bare"]), statistics.median(rates["renum"])
    record_property("overhead_bare_rps", round(bare_rps))
    record_property("overhead_renum_rps", round(renum_rps))
    record_property("overhead_ratio", round(ratio, 3))
    print(f"\nbare {bare_rps:.0f} req/s, Renum {renum_rps:.0f} req/s, ratio {ratio:.3f}")
    if ratio < TARGET_RATIO:
        raise OverBudget(f"Renum served {ratio:.1%} of the bare app's rate")
