"""The ``throughput`` profile: executions of a 3-agent builtin team back to back, 8 users
without pauses for a minute; the figure is the rate of ``EXECUTION end to end (throughput)``,
executions the backend completed per second through HTTP. Its own service levels are in
``load/throughput.toml``.

Run with ``python -m qa.load --profile throughput`` (``locust -f
load/locustfile.py,load/profiles/throughput.py ThroughputUser``: only its own user runs)."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # load/, for shapes

from locust import constant, task
from locustfile import TERMINAL, RenumUser
from shapes import ProfileShape


class ThroughputShape(ProfileShape):
    profile_name = "throughput"


class ThroughputUser(RenumUser):
    """Logs in, makes a sequential team of three builtin agents, then runs it again and again,
    each time holding the request open until the execution ends (``?wait=``)."""

    wait_time = constant(0)

    def on_start(self) -> None:
        super().on_start()
        agents = [self.create_agent({"provider": "builtin", "model": "echo"}) for _ in range(3)]
        self.teams["three"] = self.create_team(agents, "sequential")

    @task
    def run_to_the_end(self) -> None:
        started = time.perf_counter()
        execution = self.start_execution("three", wait=10)
        if execution and execution["status"] not in TERMINAL:
            execution = self.poll(execution["id"])
        self.finished(execution, "throughput", started)
