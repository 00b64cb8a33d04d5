"""Shared fixtures of the regression snapshots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RENUM_* variable and no .env file: snapshots see only the code's defaults."""
    for name in list(os.environ):
        if name.startswith("RENUM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
