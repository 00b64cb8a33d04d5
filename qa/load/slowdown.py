"""A deliberate, test-only slowdown: the backend with latency added to one route.

The guard against performance regressions has to be shown to bite. This module builds the
real application and wraps it in a small pure-ASGI layer that sleeps before one route, so a
load test against it measures a genuinely slower build; no production setting exists for it.
``SlowedBackend`` launches it like the launcher launches the real one (``uvicorn --factory
qa.load.slowdown:create_app``), configured by ``RENUM_QA_SLOW_ROUTE`` (``METHOD`` and a
regular expression over the path) and ``RENUM_QA_SLOW_SECONDS``.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from typing import Any

from qa.launcher import REPO_ROOT, LaunchedBackend

FACTORY = "qa.load.slowdown:create_app"
ROUTE_ENV = "RENUM_QA_SLOW_ROUTE"
SECONDS_ENV = "RENUM_QA_SLOW_SECONDS"


class SlowRoute:
    """Sleep ``seconds`` before passing matching HTTP requests on; everything else untouched."""

    def __init__(self, app: Any, method: str, path: str, seconds: float) -> None:
        self.app = app
        self.method = method.upper()
        self.path = re.compile(path)
        self.seconds = seconds

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == self.method
            and self.path.fullmatch(scope["path"])
        ):
            await asyncio.sleep(self.seconds)
        await self.app(scope, receive, send)


def create_app() -> SlowRoute:
    """The Renum application behind ``SlowRoute``, configured from the environment."""
    from app.main import create_app as create_renum

    route = os.environ.get(ROUTE_ENV, "")
    method, _, path = route.partition(" ")
    if not method or not path:
        raise RuntimeError(f"{ROUTE_ENV} must be 'METHOD PATH-REGEX', got {route!r}")
    return SlowRoute(create_renum(), method, path, float(os.environ.get(SECONDS_ENV, "0.25")))


class SlowedBackend(LaunchedBackend):
    """A launched backend serving ``create_app`` instead of the plain application."""

    def _spawn(self, port: int) -> None:
        assert self.log_path is not None
        command = [sys.executable, "-m", "uvicorn", FACTORY, "--factory"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
