"""The test-time limit bites (pytest-timeout, configured in pyproject.toml): a hung test fails
instead of holding the run, its stack printed first (faulthandler). On its own, pytest stops;
under pytest-xdist the worker running it is replaced, the failure names the test, and the other
tests still run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HUNG = """\
import time


def test_hangs():
    time.sleep(600)


def test_passes():
    assert True
"""


def pytest_on_a_hung_test(tmp_path: Path, *args: str) -> tuple[int, str]:
    (tmp_path / "test_hung.py").write_text(HUNG)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVERAGE_", "PYTEST_"))}
    done = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [
            sys.executable, "-m", "pytest", "test_hung.py", "-c", str(ROOT / "pyproject.toml"),
            "--rootdir", str(tmp_path), "-p", "no:cacheprovider", "--timeout=2",
            "-o", "faulthandler_timeout=1", *args,
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def test_a_hung_test_fails_with_its_stack(tmp_path: Path) -> None:
    code, output = pytest_on_a_hung_test(tmp_path)
    assert code == 1, output
    assert "+ Timeout +" in output
    assert "time.sleep(600)" in output  # the hung test's stack


def test_under_xdist_the_other_tests_still_run(tmp_path: Path) -> None:
    code, output = pytest_on_a_hung_test(tmp_path, "-n", "2")
    assert code == 1, output
    assert 'test_hung.py", line 5 in test_hangs' in output  # faulthandler's stack, first
    assert "crashed while running 'test_hung.py::test_hangs'" in output
    assert "1 failed, 1 passed" in output
