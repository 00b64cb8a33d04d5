"""Fixtures of the security suite: a backend launched as a deployment would run it.

The suite's ``backend`` replaces the plugin's: no egress allowlist (tenant URLs meet the guard
exactly as in production), the platform base URL on the harness's shared fake OpenAI server
(the operator's trusted destination) and the canary platform key, which no tenant URL may
ever receive. ``-- --deep`` (the ``deep`` fixture) lets tests explore longer than the
default run's budget. Everything else (clients per role, tenants, ``fake_openai``) comes from
``qa.plugin`` unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from security_support import CANARY_PLATFORM_KEY

from qa.launcher import Backend, LaunchedBackend, remote_backend
from qa.plugin import SENDS_BURSTS

SECURITY_ENV = {
    "RENUM_EGRESS__ALLOW": "",
    "RENUM_PROVIDERS__OPENAI_API_KEY": CANARY_PLATFORM_KEY,
    "RENUM_AUTH__ACCESS_TOKEN_MINUTES": "120",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("renum security").addoption(
        "--deep",
        action="store_true",
        default=False,
        help="Explore longer (more hostile inputs, bigger bursts) than the default run.",
    )


@pytest.fixture(scope="session")
def deep(request: pytest.FixtureRequest) -> bool:
    """Whether the run asked to explore longer (``nox -s security -- --deep``)."""
    return bool(request.config.getoption("--deep"))


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest, db_flavour: str) -> Iterator[Backend]:
    """The backend under attack, launched on ``db_flavour`` with ``SECURITY_ENV``."""
    target = request.config.getoption("--target")
    if target:
        yield remote_backend(target)
        return
    launched = LaunchedBackend.start(db_flavour, extra_env=SECURITY_ENV)
    try:
        yield launched
    finally:
        launched.stop()


@pytest.fixture(scope="session")
def canary_platform_key() -> str:
    return CANARY_PLATFORM_KEY


def pytest_configure(config: pytest.Config) -> None:
    # The shared backend takes hostile values on every operation from one address (forged
    # tokens, unknown ids): its throttling thresholds are raised. The throttling is tested on
    # backends of its own, launched with low ones (test_security_throttle.py).
    config.stash[SENDS_BURSTS] = True
