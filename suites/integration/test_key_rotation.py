"""Key rotation under load (issue 17): a backend whose users' provider keys were sealed with an
old key is restarted with a new key first; while executions keep calling the provider with
those keys, `renum keys rotate` (one value per batch) is killed after its first batch and run
again to the end. No execution fails, the provider always receives the right key, `renum keys
status` then says the old key seals nothing, and a backend given the new key alone still opens
every value."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading

import pytest
import teams_support as ts

from qa.client import ApiClient
from qa.factories import tenant_with_owner
from qa.fake_openai import FakeOpenAI
from qa.launcher import REPO_ROOT, LaunchedBackend

# A long scenario: run by `nox -s drills`, not the default run (qa.plugin's DRILL).
pytestmark = pytest.mark.drill

KEYS = 4
SPARE_KEYS = 30


def key_setting(**keys: bytes) -> str:
    return ",".join(f"{k}:{base64.b64encode(v).decode()}" for k, v in keys.items())


def renum(backend: LaunchedBackend, *args: str) -> subprocess.Popen[str]:
    """`renum ARGS` on the backend's database and keys (as an operator runs it beside it)."""
    return subprocess.Popen(  # noqa: S603 - this interpreter, our own module
        [sys.executable, "-m", "app", *args],
        cwd=REPO_ROOT, env=backend.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def test_keys_rotate_while_executions_run_and_an_interrupted_rotation_resumes(
    fake_openai: FakeOpenAI,
) -> None:
    old, new = os.urandom(32), os.urandom(32)
    backend = LaunchedBackend.start(
        "sqlite", extra_env={"RENUM_ENCRYPTION_KEYS": key_setting(k0=old)}
    )
    try:
        tenant, owner = tenant_with_owner(
            backend.base_url, backend.admin_email, backend.admin_password
        )
        secrets = [ts.new_secret() for _ in range(KEYS)]
        teams = []
        for secret in secrets:
            key = ts.create_key(owner, secret)
            agent = ts.model_agent(owner, fake_openai.base_url, provider_key_id=key["id"])
            teams.append(ts.create_team(owner, [agent]))
        for _ in range(SPARE_KEYS):  # enough that the first rotation is killed with work left
            ts.create_key(owner, ts.new_secret())
        owner.close()

        def log_in() -> ApiClient:
            return ApiClient(backend.base_url).login(tenant.owner.email, tenant.owner.password)

        # The new key first, the old one after it: values under either open.
        backend.kill()
        backend.respawn({"RENUM_ENCRYPTION_KEYS": key_setting(k1=new, k0=old)})
        statuses: list[str] = []
        stop = threading.Event()
        failures: list[BaseException] = []

        def keep_running() -> None:
            client = log_in()
            try:
                n = 0
                while not stop.is_set():
                    statuses.append(ts.run_to_end(client, teams[n % KEYS], f"load {n}")["status"])
                    n += 1
            except BaseException as exc:  # reported by the test, not lost in the thread
                failures.append(exc)
            finally:
                client.close()

        load = threading.Thread(target=keep_running, daemon=True)
        load.start()

        interrupted = renum(backend, "keys", "rotate", "--batch-size", "1")
        assert interrupted.stderr is not None
        line = interrupted.stderr.readline()  # its first batch is committed
        assert "sealed again" in line, line
        interrupted.send_signal(signal.SIGKILL)
        interrupted.wait()
        halfway = renum(backend, "keys", "status", "--json")
        report = json.loads(halfway.communicate(timeout=60)[0])
        assert halfway.returncode == 1  # a rotation is pending
        assert report["values"]["provider keys"]["k1"] >= 1

        resumed = renum(backend, "keys", "rotate", "--batch-size", "1", "--json")
        out, _ = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, out
        assert json.loads(out)["unopened"] == {}
        ran_during_the_rotation = len(statuses)
        stop.set()
        load.join(timeout=60)
        assert not failures, failures
        assert ran_during_the_rotation >= 1
        assert set(statuses) == {"completed"}
        sent = {r.headers["authorization"] for r in fake_openai.completions}
        assert sent <= {f"Bearer {secret}" for secret in secrets}

        done = renum(backend, "keys", "status", "--json")
        final = json.loads(done.communicate(timeout=60)[0])
        assert done.returncode == 0
        assert (final["pending"], final["retirable"]) == (0, ["k0"])

        # The old key removed: every stored key still opens.
        backend.kill()
        backend.respawn({"RENUM_ENCRYPTION_KEYS": key_setting(k1=new)})
        client = log_in()
        try:
            for team in teams:
                assert ts.run_to_end(client, team, "after")["status"] == "completed"
        finally:
            client.close()
    finally:
        backend.stop()
