"""What the docs say about budgets is what the engine does: each way a budget runs out ends the
execution with the status and reason the troubleshooting entry and the README name."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from app.db.base import utcnow
from app.services.engine.state import budget_breach

ROOT = Path(__file__).resolve().parents[2]
STARTED = utcnow() - timedelta(seconds=10)

# Each budget used up, as the engine checks it before anything new starts.
BREACHES = {
    "max_tokens": ({"max_tokens": 100}, (60, 40, Decimal(0)), None),
    "max_cost_usd": ({"max_cost_usd": 0.5}, (1, 1, Decimal("0.5")), None),
    "max_seconds": ({"max_seconds": 5}, (0, 0, Decimal(0)), STARTED),
}


def _budget_entry() -> str:
    page = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    entry = page.split("{ #budget }", 1)[1].split("\n### ", 1)[0]
    return " ".join(entry.split())  # as read, whatever the line breaks


@pytest.mark.parametrize("budget", sorted(BREACHES))
def test_the_troubleshooting_entry_names_each_budget_s_ending(budget: str) -> None:
    limits, totals, started = BREACHES[budget]
    finish = budget_breach(limits, totals, started)
    assert finish is not None
    entry = _budget_entry()
    ending = f"`{finish.status.value}` with reason `{finish.reason}`"
    assert ending in entry, f"{budget}: the entry does not say {ending}"
    assert f"`{budget}`" in entry


def test_the_readme_says_how_each_budget_ends() -> None:
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    for limits, totals, started in BREACHES.values():
        finish = budget_breach(limits, totals, started)
        assert finish is not None
        assert f"`{finish.status.value}` with reason `{finish.reason}`" in readme
