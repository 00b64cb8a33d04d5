"""The docs session's fixtures: the generator for this backend and the examples' report.

Every page's examples run against one launched backend (``backend`` from ``qa.plugin``), in
page order, each page twice in a row (see ``test_examples_run``); the counts (run, passed,
failed, marked not run) are printed at the end of the session and written to
``reports/docs/examples.txt``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.capabilities.docs.generator import DocumentationGenerator
from app.main import reference_docs
from qa.examples import Report

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_REPORT = REPO_ROOT / "reports" / "docs" / "examples.txt"
_report = Report()


@pytest.fixture(scope="session")
def generator() -> DocumentationGenerator:
    return reference_docs()


@pytest.fixture(scope="session")
def examples_report() -> Report:
    """Collects every page's outcomes for the session's summary."""
    return _report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _report.outcomes and not _report.not_run:
        return
    EXAMPLES_REPORT.parent.mkdir(parents=True, exist_ok=True)
    EXAMPLES_REPORT.write_text(_report.details(), encoding="utf-8")
    terminalreporter.write_sep("-", "docs examples")
    terminalreporter.write_line(_report.summary())
    for block in _report.not_run:
        terminalreporter.write_line(f"not run: {block.where}: {block.title}")
    terminalreporter.write_line(f"details: {EXAMPLES_REPORT}")
