"""The harness itself: a launched backend that tries to reach outside loopback fails the test
that launched it, naming the destination (the connection is refused before it is made)."""

from __future__ import annotations

import pytest

from qa.launcher import BackendFailed, LaunchedBackend


def test_a_backend_reaching_outside_loopback_fails_its_test() -> None:
    # Redis is optional: the backend starts, and its Redis check tries the address at once.
    backend = LaunchedBackend.start(
        "sqlite", extra_env={"RENUM_REDIS_URL": "redis://10.255.255.1:6379/0"}
    )
    try:
        assert any("10.255.255.1" in item for item in backend.network_violations())
    finally:
        with pytest.raises(BackendFailed, match=r"outside loopback.*10\.255\.255\.1"):
            backend.stop()
