"""Renum's Locust scenarios: users that behave like the backend's real callers.

- ``ApiUser`` (most of the traffic): logs in once, creates builtin agents (``echo``,
  ``template``) and, when a model endpoint is given, an ``openai`` agent against it (the
  harness starts ``qa.fake_openai`` on loopback), makes teams of them, then runs executions
  (waiting with ``?wait=``, polling, or streaming the events), lists executions and reads usage.
- ``OperatorUser``: health probes, ``/metrics`` scrapes and the dependency report.
- ``ProbeBurstUser``: anonymous traffic in bursts (load balancers, uptime checkers, scanners).

``RenumUser`` holds what users of the API share (logging in with the next account of the pool,
calls named by route template, agents, teams, executions followed to their end); a profile
may bring users of its own built on it (``load/profiles/throughput.py``).

Requests are named by route template (``GET /api/v1/executions/{execution_id}``), never by raw
id, so Locust's statistics and the thresholds in ``load/thresholds.toml`` group them by route.
A profile file from ``load/profiles/`` gives the load shape:
``locust -f load/locustfile.py,load/profiles/release.py``; ``python -m qa.load`` runs both.

Configuration (environment of the master, or of a standalone run): ``RENUM_LOAD_ACCOUNTS_FILE``
(JSON list of ``{email, password}``, written by the harness; each user takes the next account)
or ``RENUM_LOAD_EMAIL`` / ``RENUM_LOAD_PASSWORD`` (one account); workers get the accounts from
the master. ``RENUM_LOAD_MODEL_BASE_URL``: an OpenAI-compatible endpoint the backend can
reach (without it no model agent is made).
"""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
import zlib
from typing import Any
from urllib.parse import urlencode

import brotli
from locust import FastHttpUser, between, constant, events, task
from locust.runners import MasterRunner, WorkerRunner

API = "/api/v1"
TERMINAL = {"completed", "failed", "cancelled", "timed_out"}
RUN = "/api/v1/teams/{team_id}/executions"
_next_account = itertools.count()
STREAM_LIMIT_SECONDS = 30
ACCOUNTS_MESSAGE = "renum_accounts"


class Decoder:
    """Decodes a stream sent compressed, as a browser's ``EventSource`` does: Locust's client
    asks for gzip, deflate or br and hands the raw bytes over."""

    def __init__(self, coding: str | None) -> None:
        self.coding = (coding or "identity").strip().lower()
        if self.coding == "br":
            self.brotli = brotli.Decompressor()
        elif self.coding in ("gzip", "deflate"):
            self.zlib = zlib.decompressobj(16 + zlib.MAX_WBITS if self.coding == "gzip" else 0)

    def text(self, chunk: bytes | str) -> str:
        raw = chunk.encode() if isinstance(chunk, str) else chunk
        if self.coding == "br":
            raw = self.brotli.process(raw)
        elif self.coding in ("gzip", "deflate"):
            raw = self.zlib.decompress(raw)
        return raw.decode(errors="replace")


def accounts() -> list[dict[str, str]]:
    path = os.environ.get("RENUM_LOAD_ACCOUNTS_FILE")
    if path:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    email, password = os.environ.get("RENUM_LOAD_EMAIL"), os.environ.get("RENUM_LOAD_PASSWORD")
    if not email or not password:
        raise RuntimeError(
            "set RENUM_LOAD_ACCOUNTS_FILE, or RENUM_LOAD_EMAIL and RENUM_LOAD_PASSWORD"
        )
    return [{"email": email, "password": password}]


@events.init.add_listener
def share_accounts(environment: Any, **_: Any) -> None:
    """The master (or a standalone run) reads the accounts and fails at start-up when none is
    configured; in distributed mode it sends them to every worker (Locust's custom messages,
    delivered before the spawn order), so workers on other machines need no credentials."""
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        environment.renum_accounts = []

        def receive(msg: Any, **_: Any) -> None:
            environment.renum_accounts = msg.data

        runner.register_message(ACCOUNTS_MESSAGE, receive)
        return
    environment.renum_accounts = accounts()
    if isinstance(runner, MasterRunner):

        @events.test_start.add_listener
        def send(**_: Any) -> None:
            runner.send_message(ACCOUNTS_MESSAGE, environment.renum_accounts)


class RenumUser(FastHttpUser):
    """What every user of the scenarios does first (log in with the next account of the pool)
    and the plumbing they share: authenticated calls named by route template, agents, teams,
    executions followed to their end."""

    abstract = True

    def on_start(self) -> None:
        pool = self.environment.renum_accounts
        if not pool:
            raise RuntimeError("no account to log in with (none received from the master)")
        runner = self.environment.runner
        index = next(_next_account) * getattr(runner, "worker_count", 1)
        account = pool[(index + getattr(runner, "worker_index", 0)) % len(pool)]
        self.credentials = account
        self.tokens: dict[str, str] = {}
        self.teams: dict[str, dict[str, Any]] = {}
        self.login()

    # -- plumbing -------------------------------------------------------------------------

    def login(self) -> None:
        form = urlencode(
            {"username": self.credentials["email"], "password": self.credentials["password"]}
        )
        with self.client.post(
            f"{API}/auth/token",
            data=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            name="/api/v1/auth/token",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"login failed: {response.status_code}")
                raise RuntimeError(f"cannot log in as {self.credentials['email']}")
            self.tokens = response.json()

    def refresh(self) -> None:
        """Access tokens expire during long runs: rotate them as a real client does."""
        with self.client.post(
            f"{API}/auth/refresh",
            json={"refresh_token": self.tokens["refresh_token"]},
            name="/api/v1/auth/refresh",
            catch_response=True,
        ) as response:
            if response.status_code == 200:
                self.tokens = response.json()
                return
            response.success()  # an ended session: log in again, as a client would
        self.login()

    def call(
        self, method: str, path: str, name: str, expected: int = 200, **kwargs: Any
    ) -> Any | None:
        """One request; the JSON body on the expected status, else None (a failure)."""
        extra = kwargs.pop("headers", {})
        for attempt in range(2):
            headers = {"Authorization": f"Bearer {self.tokens['access_token']}", **extra}
            with self.client.request(
                method, path, name=name, headers=headers, catch_response=True, **kwargs
            ) as response:
                if response.status_code == 401 and attempt == 0:
                    response.success()  # expired token: not the server's failure
                    self.refresh()
                    continue
                if response.status_code != expected:
                    response.failure(f"{response.status_code}: {(response.text or '')[:200]}")
                    return None
                if not response.content:
                    return {}
                if "json" not in response.headers.get("content-type", ""):
                    return response.text
                return response.json()
        return None  # pragma: no cover - the loop returns on its second attempt

    def create_agent(self, body: dict[str, Any]) -> dict[str, Any]:
        body = {"name": f"load-{uuid.uuid4().hex[:10]}", **body}
        created = self.call("POST", f"{API}/agents", "/api/v1/agents", 201, json=body)
        if created is None:
            raise RuntimeError("could not create an agent")
        return created

    def create_team(self, agents: list[dict[str, Any]], strategy: str) -> dict[str, Any]:
        steps = [{"id": f"s{i}", "agent_id": a["id"]} for i, a in enumerate(agents)]
        body = {
            "name": f"load-{uuid.uuid4().hex[:10]}",
            "agent_ids": [a["id"] for a in agents],
            "workflow": {"strategy": strategy, "steps": steps},
        }
        created = self.call("POST", f"{API}/teams", "/api/v1/teams", 201, json=body)
        if created is None:
            raise RuntimeError("could not create a team")
        return created

    def start_execution(self, team: str, wait: float = 0) -> dict[str, Any] | None:
        team_id = self.teams[team]["id"]
        query = f"?wait={wait}" if wait else ""
        body = {"prompt": f"load test {uuid.uuid4().hex[:6]}", "variables": {"who": "locust"}}
        name = f"{RUN}?wait" if wait else RUN
        return self.call("POST", f"{API}/teams/{team_id}/executions{query}", name, 202, json=body)

    def finished(self, execution: dict[str, Any] | None, how: str, started: float) -> None:
        """Record the execution's end-to-end time; one that did not complete is a failure."""
        if execution is None:
            return  # the request that failed is already counted
        status = execution.get("status")
        events.request.fire(
            request_type="EXECUTION",
            name=f"end to end ({how})",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=None if status == "completed" else RuntimeError(f"execution {status}"),
            context={},
        )

    def follow(self, execution_id: str) -> str | None:
        """Read the event stream until the server closes it (after the last event); its time
        in the statistics is the whole stream's, not the first byte's."""
        started = time.perf_counter()
        deadline = time.monotonic() + STREAM_LIMIT_SECONDS
        headers = {
            "Authorization": f"Bearer {self.tokens['access_token']}",
            "Accept": "text/event-stream",
        }
        with self.client.get(
            f"{API}/executions/{execution_id}/events",
            name="/api/v1/executions/{execution_id}/events (stream)",
            headers=headers,
            stream=True,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code} instead of a stream")
                return None
            decoder = Decoder(response.headers.get("content-encoding"))
            text = ""
            for chunk in response.iter_content(4096, decode_content=False):
                text += decoder.text(chunk)
                if time.monotonic() > deadline:
                    response.failure(f"the stream was still open after {STREAM_LIMIT_SECONDS}s")
                    break
            response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
            return text

    def poll(self, execution_id: str, limit: float = 30.0) -> dict[str, Any] | None:
        deadline = time.monotonic() + limit
        while True:
            execution = self.call(
                "GET", f"{API}/executions/{execution_id}", "/api/v1/executions/{execution_id}"
            )
            if execution is None or execution["status"] in TERMINAL:
                return execution
            if time.monotonic() > deadline:
                return execution
            time.sleep(0.25)


class ApiUser(RenumUser):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        super().on_start()
        echo = self.create_agent({"provider": "builtin", "model": "echo"})
        template = self.create_agent(
            {
                "provider": "builtin",
                "model": "template",
                "parameters": {"template": "{{ input | upper }}{{ remember('seen', input) }}"},
            }
        )
        self.teams["builtin"] = self.create_team([echo, template], "sequential")
        model_url = os.environ.get("RENUM_LOAD_MODEL_BASE_URL")
        if model_url:
            model = self.create_agent(
                {
                    "provider": "openai",
                    "model": "gpt-4o-mini",
                    "base_url": model_url,
                    "timeout_seconds": 10,
                    "retry": {"max_attempts": 2, "initial_backoff_seconds": 0.1},
                }
            )
            self.teams["model"] = self.create_team([echo, model], "pipeline")

    # -- behaviour --------------------------------------------------------------------------

    @task(4)
    def run_and_wait(self) -> None:
        """Start a builtin team and let the server hold the answer until it ends."""
        started = time.perf_counter()
        execution = self.start_execution("builtin", wait=10)
        if execution and execution["status"] not in TERMINAL:
            execution = self.poll(execution["id"])
        self.finished(execution, "wait", started)

    @task(2)
    def run_and_poll(self) -> None:
        """Start a team and poll its state, as simple clients do."""
        started = time.perf_counter()
        execution = self.start_execution("model" if "model" in self.teams else "builtin")
        if execution is not None:
            self.finished(self.poll(execution["id"]), "poll", started)

    @task(2)
    def run_and_stream(self) -> None:
        """Start a team and follow its Server-Sent Events to the end."""
        started = time.perf_counter()
        execution = self.start_execution("model" if "model" in self.teams else "builtin")
        if execution is None:
            return
        stream = self.follow(execution["id"])
        if stream is not None:
            ended = "completed" if "event: execution_completed" in stream else "not completed"
            self.finished({"status": ended}, "stream", started)

    @task(2)
    def list_executions(self) -> None:
        page = self.call("GET", f"{API}/executions?limit=20", "/api/v1/executions")
        if page and page["items"]:
            first = page["items"][0]["id"]
            self.call(
                "GET",
                f"{API}/executions/{first}/steps",
                "/api/v1/executions/{execution_id}/steps",
            )
            self.call(
                "GET",
                f"{API}/executions/{first}/events",
                "/api/v1/executions/{execution_id}/events",
            )

    @task(1)
    def read_usage(self) -> None:
        for group_by in ("agent", "model"):
            self.call("GET", f"{API}/usage?group_by={group_by}", "/api/v1/usage")

    @task(1)
    def browse(self) -> None:
        self.call("GET", f"{API}/agents?limit=50", "/api/v1/agents")
        team_id = self.teams["builtin"]["id"]
        self.call("GET", f"{API}/teams/{team_id}", "/api/v1/teams/{team_id}")


class OperatorUser(FastHttpUser):
    """Someone (or something) watching the backend: probes, scrapes, the dependency report."""

    fixed_count = 1
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        """A look at everything once, then the weighted mix."""
        self.probes()
        self.scrape()
        self.dependencies()

    @task(3)
    def probes(self) -> None:
        self.client.get("/health/live", name="/health/live")
        self.client.get("/health/ready", name="/health/ready")

    @task(2)
    def scrape(self) -> None:
        with self.client.get("/metrics", name="/metrics", catch_response=True) as response:
            if response.status_code == 200 and "process_cpu_seconds_total" not in response.text:
                response.failure("no process metrics in /metrics")

    @task(1)
    def dependencies(self) -> None:
        self.client.get("/health/dependencies", name="/health/dependencies")


class ProbeBurstUser(FastHttpUser):
    """Anonymous probe traffic arriving in bursts: ten quick requests, then a pause."""

    fixed_count = 1
    wait_time = constant(5.0)

    @task
    def burst(self) -> None:
        for _ in range(3):
            self.client.get("/livez", name="/livez")
            self.client.get("/readyz", name="/readyz")
            self.client.get("/health/live", name="/health/live")
        with self.client.get(
            f"{API}/users/me", name="/api/v1/users/me (anonymous)", catch_response=True
        ) as response:
            if response.status_code == 401:
                response.success()  # the expected answer to an anonymous caller
            else:
                response.failure(f"an anonymous caller got {response.status_code}")
