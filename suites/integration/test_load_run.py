"""The load harness: runs that cannot start say why. Its runs for real (a short run that
reports everything, master and workers against a deployment reached over HTTP, the baseline
comparison catching a deliberately slowed build) are drills: suites/drills/test_load_drills.py;
the load_smoke session runs the smoke profile itself in the default run."""

from __future__ import annotations

from pathlib import Path

import pytest

from qa import launcher
from qa.load import runner


def test_a_run_that_cannot_start_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.json"
    code = runner.main(["--compare", str(missing), "--reports", str(tmp_path)])
    assert code == 2
    assert "load test could not run: cannot read the baseline" in capsys.readouterr().err


def test_a_target_that_refuses_the_admin_says_so(
    tmp_path: Path,
    launch_backend: runner.Launch,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    deployment = launch_backend()
    monkeypatch.setenv(launcher.TARGET_EMAIL_ENV, deployment.admin_email)
    monkeypatch.setenv(launcher.TARGET_PASSWORD_ENV, "not-the-password")
    reports = ["--reports", str(tmp_path)]
    assert runner.main(["--target", deployment.base_url, "--profile", "smoke", *reports]) == 2
    assert f"login as {deployment.admin_email} failed: 401" in capsys.readouterr().err
    monkeypatch.setenv(launcher.TARGET_PASSWORD_ENV, deployment.admin_password)
    unreachable = f"http://127.0.0.1:{launcher.free_port()}"
    assert runner.main(["--target", unreachable, "--profile", "smoke", *reports]) == 2
    assert "load test could not run" in capsys.readouterr().err
